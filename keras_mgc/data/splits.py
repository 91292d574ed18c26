"""Train / validation / test splits: list files, the paper's folds, k-fold, and resolution.

A split names tracks by key (see `keras_mgc.data.datasets`): ``blues/blues.00004`` for
GTZAN, the song id for Melon. List files hold one entry per line; blank lines and lines
starting with ``#`` are ignored; entries are normalised to keys by `normalise_key`, so
``genres_original/blues/blues.00004.wav`` and ``genres/blues/blues.00004.au`` are both
``blues/blues.00004``.

Shipped lists (package data, see the SOURCE.md beside them): the paper authors' 10 GTZAN
folds (`paper_folds`) and the fault-filtered GTZAN split (`fault_filtered`).

A key twice in one list, or in two parts of a split (train/valid/test), is a SplitError
naming the keys, never a warning: it would leak test tracks into training.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from keras_mgc.audio import AUDIO_EXTENSIONS
from keras_mgc.data.datasets import DatasetIndex, Track
from keras_mgc.io import write_text

__all__ = ["PARTS", "PART_ALIASES", "SplitError", "normalise_key", "parse_split_list", "read_split_list",
           "write_split_list", "read_folds", "read_split", "load_split_dir", "check_parts", "check_folds",
           "Split", "paper_folds", "fault_filtered", "cv_fold", "stratified_kfold", "ResolvedSplit",
           "resolve_split"]

#: The parts of a split, in order.
PARTS: tuple[str, ...] = ("train", "valid", "test")
#: File-name stems accepted for each part in a folder of split lists.
PART_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "valid": ("valid", "val", "validation", "dev"),
    "test": ("test", "eval", "evaluation"),
}
#: Folder names whose contents are class folders; a list entry's key starts after them.
_LAYOUT_DIRS = frozenset({"genres", "genres_original"})
_KEY_SUFFIXES = AUDIO_EXTENSIONS | {".npy"}
_FOLD_FILE = re.compile(r"^fold(\d+)\.txt$")
_SHOWN = 20  # keys named in an error message


class SplitError(ValueError):
    """A split that cannot be used: malformed lists, duplicates, overlaps, missing tracks."""


def _first(keys: Sequence[str], n: int = _SHOWN) -> str:
    """Up to `n` keys for a message, and how many more there are."""
    shown = ", ".join(keys[:n])
    return shown + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


# --------------------------------------------------------------------------- list files


def normalise_key(entry: str) -> str:
    """A list entry -> a track key: ``genres_original/blues/blues.00004.wav`` -> ``blues/blues.00004``.

    Backslashes become slashes; everything up to a ``genres``/``genres_original`` folder is
    dropped; a path into ``arena_mel`` becomes the song id (the file stem); a known audio
    or ``.npy`` extension is removed (and only such: ``blues.00004`` keeps its dot).
    """
    parts = [p for p in entry.strip().replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        raise SplitError(f"empty split entry {entry!r}")
    cut = max((i for i, p in enumerate(parts) if p in _LAYOUT_DIRS), default=-1)
    if "arena_mel" in parts:
        parts = parts[-1:]
    elif cut >= 0:
        parts = parts[cut + 1 :]
    if not parts:
        raise SplitError(f"split entry {entry!r} names a folder, not a track")
    stem, ext = os.path.splitext(parts[-1])
    if ext.lower() in _KEY_SUFFIXES:
        parts[-1] = stem
    return "/".join(parts)


def parse_split_list(text: str, source: str = "<list>") -> list[str]:
    """Keys of a split list's text, in file order; SplitError for a key listed twice."""
    keys: list[str] = []
    lines: dict[str, int] = {}
    duplicates: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key = normalise_key(line)
        if key in lines:
            duplicates.append(f"{key} (lines {lines[key]} and {number})")
            continue
        lines[key] = number
        keys.append(key)
    if duplicates:
        raise SplitError(f"{source}: {len(duplicates)} duplicate entries: {_first(duplicates)}")
    return keys


def read_split_list(path: str | os.PathLike[str]) -> list[str]:
    """Keys of a split list file (see `parse_split_list`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SplitError(f"{p}: cannot read split list ({exc})") from exc
    return parse_split_list(text, str(p))


def write_split_list(path: str | os.PathLike[str], keys: Iterable[str], comment: str | None = None) -> None:
    """Write keys one per line (after optional ``#`` comment lines), e.g. to freeze generated folds."""
    lines = [f"# {c}" for c in comment.splitlines()] if comment else []
    write_text(path, "\n".join([*lines, *keys]) + "\n")


def read_folds(directory: str | os.PathLike[str]) -> list[list[str]]:
    """``fold1.txt .. foldN.txt`` of a folder, in fold order; checked for duplicates across folds."""
    d = Path(directory)
    numbered = {int(m.group(1)): f for f in d.iterdir() if (m := _FOLD_FILE.match(f.name))} if d.is_dir() else {}
    if not numbered:
        raise SplitError(f"{d}: no fold1.txt .. foldN.txt files")
    if sorted(numbered) != list(range(1, len(numbered) + 1)):
        raise SplitError(f"{d}: fold files must be numbered 1..N without gaps, found {sorted(numbered)}")
    folds = [read_split_list(numbered[i]) for i in sorted(numbered)]
    check_folds(folds, source=str(d))
    return folds


def read_split(directory: str | os.PathLike[str]) -> Split:
    """A train/valid/test split from a folder with one list per part.

    Each part's file is ``<alias>.txt`` or ``<alias>_<anything>.txt`` (e.g.
    ``train_filtered.txt``), aliases as in PART_ALIASES; exactly one file per part.
    """
    d = Path(directory)
    names = sorted(f.name for f in d.glob("*.txt")) if d.is_dir() else []
    found: dict[str, Path] = {}
    for part, aliases in PART_ALIASES.items():
        matches = [n for n in names if re.match(rf"^({'|'.join(aliases)})(_.*)?\.txt$", n, re.IGNORECASE)]
        if len(matches) != 1:
            pattern = f"{'|'.join(aliases)}[_*].txt"
            raise SplitError(f"{d}: expected one list file for the {part} part ({pattern}), found {matches or 'none'}")
        found[part] = d / matches[0]
    return Split(**{part: read_split_list(path) for part, path in found.items()}, source=str(d))


def load_split_dir(directory: str | os.PathLike[str]) -> list[list[str]] | Split:
    """A folder of split lists: folds (``fold*.txt``) if present, else a train/valid/test split."""
    d = Path(directory)
    if not d.is_dir():
        raise SplitError(f"{d}: split folder not found")
    if any(_FOLD_FILE.match(f.name) for f in d.iterdir()):
        return read_folds(d)
    return read_split(d)


# --------------------------------------------------------------------------- checks


def _duplicates(keys: Iterable[str]) -> list[str]:
    return sorted(k for k, n in Counter(keys).items() if n > 1)


def check_parts(parts: Mapping[str, Sequence[str]], source: str = "split") -> None:
    """SplitError for a key twice within a part or in two parts, naming every such key."""
    problems = []
    for name, keys in parts.items():
        if dup := _duplicates(keys):
            problems.append(f"{len(dup)} keys listed twice in {name}: {_first(dup)}")
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if both := sorted(set(parts[a]) & set(parts[b])):
                problems.append(f"{len(both)} keys in both {a} and {b}: {_first(both)}")
    if problems:
        raise SplitError(f"{source}: " + "; ".join(problems))


def check_folds(folds: Sequence[Sequence[str]], source: str = "folds") -> None:
    """SplitError for a key twice within one fold or in two folds."""
    check_parts({f"fold{i}": keys for i, keys in enumerate(folds, start=1)}, source)


@dataclass(frozen=True)
class Split:
    """Keys of the train, validation and test parts; checked disjoint and duplicate-free."""

    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]
    source: str = field(default="split", compare=False)

    def __post_init__(self) -> None:
        for part in PARTS:
            keys = getattr(self, part)
            if isinstance(keys, str):
                raise TypeError(f"Split.{part} must be a sequence of keys, not a string")
            object.__setattr__(self, part, tuple(keys))
        check_parts(self.parts, self.source)

    @property
    def parts(self) -> dict[str, tuple[str, ...]]:
        return {part: getattr(self, part) for part in PARTS}


# --------------------------------------------------------------------------- shipped lists


def _shipped(folder: str) -> Any:
    return resources.files("keras_mgc.data").joinpath("split_lists", folder)


def paper_folds() -> list[list[str]]:
    """The paper authors' 10 GTZAN folds (100 keys each, 10 per genre), from package data."""
    base = _shipped("gtzan_paper_10fold")
    folds = [parse_split_list(base.joinpath(f"fold{i}.txt").read_text("utf-8"), f"fold{i}.txt") for i in range(1, 11)]
    check_folds(folds, "gtzan_paper_10fold")
    return folds


def fault_filtered() -> Split:
    """The fault-filtered GTZAN split (Kereliuk, Sturm and Larsen 2015): 443 / 197 / 290 keys."""
    base = _shipped("gtzan_fault_filtered")
    names = {part: f"{part}_filtered.txt" for part in PARTS}
    parts = {part: parse_split_list(base.joinpath(name).read_text("utf-8"), name) for part, name in names.items()}
    return Split(**parts, source="gtzan_fault_filtered")


# --------------------------------------------------------------------------- folds


def cv_fold(folds: Sequence[Sequence[str]], k: int) -> Split:
    """Cross-validation split k (1-based): test = fold k, valid = fold k+1 (N wraps to 1), train = the rest."""
    n = len(folds)
    if n < 3:
        raise SplitError(f"cross-validation needs at least 3 folds (test, valid, train), got {n}")
    if not 1 <= k <= n:
        raise SplitError(f"fold k={k} out of range 1..{n}")
    test, valid = k - 1, k % n
    train = [key for i, fold in enumerate(folds) if i not in (test, valid) for key in fold]
    return Split(train, folds[valid], folds[test], source=f"fold {k} of {n}")


def stratified_kfold(keys: Sequence[str], labels: Sequence[str], n_folds: int, seed: int = 3823) -> list[list[str]]:
    """Deal keys into `n_folds` folds so each class is spread evenly; deterministic for a seed.

    Within each class (classes in sorted order) the sorted keys are shuffled with
    ``numpy.random.default_rng(seed)`` and dealt round-robin, the deal continuing across
    classes; so per-class counts and fold sizes each differ by at most one, and the result
    depends only on the (key, label) pairs and the seed, not on their order. Each fold is
    returned sorted. A class with fewer tracks than folds is absent from some folds.
    """
    if len(keys) != len(labels):
        raise ValueError(f"{len(keys)} keys but {len(labels)} labels")
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    if dup := _duplicates(keys):
        raise SplitError(f"{len(dup)} keys given twice: {_first(dup)}")
    if len(keys) < n_folds:
        raise SplitError(f"{len(keys)} keys cannot fill {n_folds} folds")
    by_class: dict[str, list[str]] = {}
    for key, label in zip(keys, labels):
        by_class.setdefault(label, []).append(key)
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    start = 0
    for label in sorted(by_class):
        members = sorted(by_class[label])
        for i, j in enumerate(rng.permutation(len(members))):
            folds[(start + i) % n_folds].append(members[j])
        start = (start + len(members)) % n_folds
    return [sorted(fold) for fold in folds]


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class ResolvedSplit:
    """The tracks of each part, and the keys that the dataset lacked (with allow_missing)."""

    parts: dict[str, tuple[Track, ...]]
    missing: dict[str, tuple[str, ...]]

    @property
    def train(self) -> tuple[Track, ...]:
        return self.parts.get("train", ())

    @property
    def valid(self) -> tuple[Track, ...]:
        return self.parts.get("valid", ())

    @property
    def test(self) -> tuple[Track, ...]:
        return self.parts.get("test", ())

    @property
    def n_missing(self) -> int:
        return sum(len(keys) for keys in self.missing.values())

    def report(self) -> dict[str, Any]:
        """A JSON-ready record of part sizes, per-class counts and every missing key."""
        return {
            "parts": {
                name: {"n": len(tracks), "counts": dict(sorted(Counter(t.label for t in tracks).items()))}
                for name, tracks in self.parts.items()
            },
            "n_missing": self.n_missing,
            "missing": {name: list(keys) for name, keys in self.missing.items() if keys},
        }


def _missing_message(missing: dict[str, list[str]], index: DatasetIndex) -> str:
    """Count, per-part and per-class counts, and the first keys of missing keys; keys whose
    file was found but skipped (corrupt, duplicate, ...) come first, with the reason."""
    why = {s["key"]: s["reason"] for s in index.skipped if "key" in s}
    labels = {s["key"]: s["label"] for s in index.skipped if "key" in s and "label" in s}
    every = [key for keys in missing.values() for key in keys]
    per_part = ", ".join(f"{name} {len(keys)}" for name, keys in missing.items() if keys)
    per_class = Counter(labels.get(k, k.split("/", 1)[0] if "/" in k else "?") for k in every)
    explained = [f"{k} (skipped: {why[k]})" for k in every if k in why]
    absent = [k for k in every if k not in why]
    skipped = f" ({len(explained)} of them found but skipped as unusable)" if explained else ""
    return (
        f"{len(every)} split keys are not in the dataset at {index.root or '(tracks)'}{skipped} ({per_part}); "
        f"per class: {dict(sorted(per_class.items()))}; keys: {_first(explained + absent)}. "
        "Pass allow_missing=True (data.allow_missing) to use the tracks present and record the missing ones."
    )


def resolve_split(
    split: Split | Mapping[str, Sequence[str]] | Sequence[str],
    index: DatasetIndex,
    allow_missing: bool = False,
) -> ResolvedSplit:
    """Map a split's keys to the index's tracks, part by part, in list order.

    `split` is a Split, a mapping part -> keys, or one sequence of keys (part "keys").
    Keys absent from the index raise SplitError (count, per-part and per-class counts,
    the first 20 keys, with the reason when discovery or validation skipped the file);
    with ``allow_missing=True`` the present tracks are returned and `missing` records
    the rest, for the run's record.
    """
    if isinstance(split, Split):
        parts = split.parts
    elif isinstance(split, Mapping):
        parts = {name: tuple(keys) for name, keys in split.items()}
        check_parts(parts)
    elif isinstance(split, str):
        raise TypeError("resolve_split needs a sequence of keys, not a string")
    else:
        parts = {"keys": tuple(split)}
        check_parts(parts)
    by_key = index.by_key
    resolved = {name: tuple(by_key[k] for k in keys if k in by_key) for name, keys in parts.items()}
    missing = {name: [k for k in keys if k not in by_key] for name, keys in parts.items()}
    if any(missing.values()) and not allow_missing:
        raise SplitError(_missing_message(missing, index))
    return ResolvedSplit(resolved, {name: tuple(keys) for name, keys in missing.items()})
