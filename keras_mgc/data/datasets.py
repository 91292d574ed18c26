"""Dataset layouts on disk -> an index of labelled tracks, and file checks before training.

Layouts recognised by `discover`:

- GTZAN original: ``genres/<genre>/<genre>.NNNNN.au``; the common Kaggle copy:
  ``genres_original/<genre>/<genre>.NNNNN.wav``. `root` may be the folder holding
  ``genres/`` (or ``genres_original/``, or Kaggle's ``Data/genres_original/``) or that
  folder itself.
- Any folder-per-class tree: ``root/<class>/**/<audio file>``.

Melon Playlist (`discover_melon`): ``root/arena_mel/**/<song_id>.npy`` mel spectrograms
plus ``root/song_meta.json``; only songs with exactly one genre are kept.

A track's `key` is what split lists name: ``<class>/<path below the class folder, without
the extension>`` (so ``blues/blues.00004`` for both the .au and the .wav GTZAN copies), or
the song id for Melon. Nothing is dropped silently: every audio file or class folder left
out is in `DatasetIndex.skipped` with a reason.

This module does not import TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from keras_mgc.audio import AudioError, check_audio, find_audio_files, is_audio_file

__all__ = ["GTZAN_GENRES", "GTZAN_DIRS", "MELON_MEL_BINS", "DatasetError", "DatasetWarning", "MelonError", "Track",
           "DatasetIndex", "discover", "discover_melon", "load_melon_mel", "validate_tracks"]

#: The ten GTZAN genres, in the sorted order that is also the label order.
GTZAN_GENRES: tuple[str, ...] = (
    "blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock",
)
#: Folders that hold the GTZAN genre folders, tried in this order below `root`.
GTZAN_DIRS: tuple[str, ...] = ("genres", "genres_original", "Data/genres_original")
#: Melon mel spectrograms have this many bins (first axis of each .npy).
MELON_MEL_BINS = 48

_GTZAN_FILE = re.compile(r"^(?P<genre>[a-z]+)\.\d{5}$")


class DatasetError(ValueError):
    """A dataset that cannot be used as given (bad root, metadata, or too many bad files)."""


class DatasetWarning(UserWarning):
    """Something was left out of a dataset (an empty class folder, duplicate or corrupt files)."""


class MelonError(AudioError):
    """A Melon mel-spectrogram file that cannot be used (an AudioError: same handling)."""


@dataclass(frozen=True)
class Track:
    """One labelled clip: absolute `path`, class `label`, and the `key` split lists use."""

    path: str
    label: str
    key: str


@dataclass(frozen=True)
class DatasetIndex:
    """The tracks of a dataset, its classes (sorted, stable) and what was left out and why.

    `skipped` entries are dicts with "path" and "reason" (and "key"/"label" when known);
    `flagged` lists kept tracks with a caveat (e.g. truncated); `stats` holds
    layout-specific counts (e.g. Melon songs with several genres).
    """

    root: str
    layout: str
    tracks: tuple[Track, ...]
    class_names: tuple[str, ...]
    skipped: tuple[dict[str, str], ...] = ()
    flagged: tuple[dict[str, str], ...] = ()
    stats: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tracks", tuple(self.tracks))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "skipped", tuple(self.skipped))
        object.__setattr__(self, "flagged", tuple(self.flagged))
        if list(self.class_names) != sorted(set(self.class_names)):
            raise DatasetError(f"class names must be unique and sorted, got {list(self.class_names)}")
        unknown = sorted({t.label for t in self.tracks} - set(self.class_names))
        if unknown:
            raise DatasetError(f"tracks have labels that are not classes: {unknown}")
        dup = [k for k, n in Counter(t.key for t in self.tracks).items() if n > 1]
        if dup:
            raise DatasetError(f"{len(dup)} duplicate track keys, e.g. {dup[:5]}")

    @classmethod
    def from_tracks(
        cls, tracks: Iterable[Track], *, root: str = "", layout: str = "tracks", **extra: Any
    ) -> DatasetIndex:
        """An index over given tracks; the classes are the sorted labels present."""
        tracks = tuple(tracks)
        return cls(root, layout, tracks, tuple(sorted({t.label for t in tracks})), **extra)

    def __len__(self) -> int:
        return len(self.tracks)

    @property
    def counts(self) -> dict[str, int]:
        """Tracks per class, in class order (zero for a class whose tracks were all skipped)."""
        found = Counter(t.label for t in self.tracks)
        return {name: found.get(name, 0) for name in self.class_names}

    @cached_property
    def by_key(self) -> dict[str, Track]:
        return {t.key: t for t in self.tracks}

    def label_id(self, label: str) -> int:
        """The class index of `label` (its position in `class_names`)."""
        try:
            return self.class_names.index(label)
        except ValueError:
            raise DatasetError(f"unknown class {label!r}; classes are {list(self.class_names)}") from None

    def label_ids(self, tracks: Iterable[Track] | None = None) -> np.ndarray:
        """Class indices (int32) of `tracks` (default: all tracks of the index)."""
        lookup = {name: i for i, name in enumerate(self.class_names)}
        return np.array([lookup[t.label] for t in (self.tracks if tracks is None else tracks)], dtype=np.int32)

    def report(self) -> dict[str, Any]:
        """A JSON-ready summary for run records."""
        return {
            "root": self.root,
            "layout": self.layout,
            "n_tracks": len(self.tracks),
            "class_names": list(self.class_names),
            "counts": self.counts,
            "skipped": [dict(s) for s in self.skipped],
            "flagged": [dict(s) for s in self.flagged],
            "stats": dict(self.stats),
        }


def _skip(path: str | os.PathLike[str], reason: str, **known: str) -> dict[str, str]:
    return {"path": os.fspath(path), "reason": reason, **known}


# --------------------------------------------------------------------------- audio folders


def _locate_gtzan(root: Path) -> Path | None:
    """The folder holding GTZAN genre folders, if `root` is or contains one."""
    if root.name in {Path(d).name for d in GTZAN_DIRS}:
        return root
    found = [root / d for d in GTZAN_DIRS if (root / d).is_dir()]
    if len(found) > 1:
        raise DatasetError(
            f"{root}: holds several GTZAN copies ({', '.join(str(f) for f in found)}); pass one of them as the root"
        )
    return found[0] if found else None


def discover(root: str | os.PathLike[str]) -> DatasetIndex:
    """Index a GTZAN or folder-per-class dataset (see the module docstring).

    Class names are the sorted names of the class folders that hold audio. A class folder
    without audio is dropped with a DatasetWarning and a `skipped` entry; audio files
    directly in the root, and a second file with an already-taken key (``x.au`` beside
    ``x.wav``), are skipped too. Files are not opened here: see `validate_tracks`.
    """
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found" if not root.exists() else f"{root}: not a folder")
    base = _locate_gtzan(root) or root
    tracks: list[Track] = []
    skipped: list[dict[str, str]] = []
    taken: dict[str, Path] = {}
    classes: list[str] = []
    for entry in sorted(base.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            if is_audio_file(entry):
                skipped.append(_skip(entry, "audio file outside any class folder"))
            continue
        n_before = len(tracks)
        for path in find_audio_files(entry):
            key = f"{entry.name}/{path.relative_to(entry).with_suffix('').as_posix()}"
            if key in taken:
                skipped.append(_skip(path, f"duplicate key {key!r}: {taken[key]} has it already", key=key))
                continue
            taken[key] = path
            tracks.append(Track(str(path), entry.name, key))
        if len(tracks) > n_before:
            classes.append(entry.name)
        else:
            skipped.append(_skip(entry, "class folder has no audio files: dropped, not a class"))
    if not tracks:
        raise DatasetError(
            f"{root}: no audio files in class folders; expected genres/<genre>/*.au, "
            "genres_original/<genre>/*.wav, or <class>/**/<audio file>"
        )
    gtzan = base is not root or root.name in {Path(d).name for d in GTZAN_DIRS} or _looks_like_gtzan(tracks)
    index = DatasetIndex(str(base), "gtzan" if gtzan else "folder", tuple(tracks), tuple(sorted(classes)), skipped)
    if skipped:
        warnings.warn(_summary(f"{base}: left out", skipped), DatasetWarning, stacklevel=2)
    return index


def _looks_like_gtzan(tracks: list[Track]) -> bool:
    """True for a GTZAN genre tree given without its genres/ folder (e.g. a subset)."""
    return all(t.label in GTZAN_GENRES and _GTZAN_FILE.match(t.key.split("/", 1)[1]) for t in tracks)


def _summary(what: str, entries: list[dict[str, str]] | tuple[dict[str, str], ...], first: int = 5) -> str:
    """One message naming how many entries and the first few with their reasons."""
    shown = "; ".join(f"{e['path']}: {e['reason']}" for e in entries[:first])
    more = f"; ... and {len(entries) - first} more" if len(entries) > first else ""
    return f"{what} {len(entries)} entries: {shown}{more}"


# --------------------------------------------------------------------------- Melon


def _read_song_meta(path: Path) -> dict[str, list[str]]:
    """song id -> sorted distinct genre codes, from Melon's song_meta.json; DatasetError if malformed."""
    if not path.is_file():
        raise DatasetError(f"{path}: Melon song_meta.json not found")
    try:
        songs = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read ({exc})") from exc
    except (ValueError, RecursionError) as exc:  # e.g. nested thousands deep, a 5000-digit number
        raise DatasetError(f"{path}: not usable JSON ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(songs, list) or not songs:
        raise DatasetError(f"{path}: expected a non-empty JSON list of songs, got {type(songs).__name__}")
    genres: dict[str, list[str]] = {}
    for i, song in enumerate(songs):
        where = f"{path}: entry {i}"
        if not isinstance(song, dict):
            raise DatasetError(f"{where}: expected an object, got {type(song).__name__}")
        for name in ("id", "song_gn_gnr_basket"):
            if name not in song:
                raise DatasetError(f"{where}: missing field {name!r}")
        sid, basket = song["id"], song["song_gn_gnr_basket"]
        if isinstance(sid, bool) or not isinstance(sid, (int, str)) or str(sid).strip() == "":
            raise DatasetError(f"{where}: 'id' must be an integer or a string, got {sid!r}")
        if not isinstance(basket, list) or not all(isinstance(g, str) and g for g in basket):
            raise DatasetError(
                f"{where} (id {sid}): 'song_gn_gnr_basket' must be a list of genre codes, got {basket!r}"
            )
        key = str(sid)
        if key in genres:
            raise DatasetError(f"{where}: duplicate song id {sid!r}")
        genres[key] = sorted(set(basket))
    return genres


def discover_melon(root: str | os.PathLike[str]) -> DatasetIndex:
    """Index Melon Playlist: single-genre songs of ``song_meta.json`` with their mel files.

    Keys are song ids (as strings), labels genre codes, classes the sorted codes present.
    A single-genre song without ``arena_mel/**/<id>.npy`` is skipped with a reason; songs
    with no genre or several (distinct) genres are counted in `stats`, not skipped.
    """
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise DatasetError(f"{root}: Melon folder not found")
    mel_dir = root / "arena_mel"
    if not mel_dir.is_dir():
        raise DatasetError(f"{mel_dir}: Melon arena_mel/ folder not found")
    genres = _read_song_meta(root / "song_meta.json")
    skipped: list[dict[str, str]] = []
    files: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(mel_dir, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".npy") and not name.startswith("."):
                path, key = os.path.join(dirpath, name), name[: -len(".npy")]
                if key in files:
                    reason = f"duplicate mel file for song {key}: {files[key]} has it already"
                    skipped.append(_skip(path, reason, key=key))
                else:
                    files[key] = path
    stats = Counter({"songs": len(genres), "no genre": 0, "several genres": 0})
    tracks: list[Track] = []
    for key, basket in sorted(genres.items(), key=lambda kv: (len(kv[0]), kv[0])):  # numeric order for ids
        if len(basket) != 1:
            stats["no genre" if not basket else "several genres"] += 1
        elif key in files:
            tracks.append(Track(files[key], basket[0], key))
        else:
            skipped.append(_skip(mel_dir / f"**/{key}.npy", "mel file not found", key=key, label=basket[0]))
    stats["mel files without metadata"] = len(files.keys() - genres.keys())
    if not tracks:
        raise DatasetError(f"{root}: no single-genre song has a mel file under arena_mel/")
    if skipped:
        warnings.warn(_summary(f"{root}: left out", skipped), DatasetWarning, stacklevel=2)
    return DatasetIndex.from_tracks(tracks, root=str(root), layout="melon", skipped=skipped, stats=dict(stats))


def _check_mel(path: Path, mel: np.ndarray, values: bool) -> None:
    if mel.ndim != 2 or mel.shape[0] != MELON_MEL_BINS:
        hint = " (time-major? Melon files are (48, T))" if mel.ndim == 2 and mel.shape[1] == MELON_MEL_BINS else ""
        raise MelonError(path, f"shape {mel.shape}, expected ({MELON_MEL_BINS}, T){hint}")
    if mel.shape[1] == 0:
        raise MelonError(path, "no frames (shape (48, 0))")
    if mel.dtype.kind != "f":
        raise MelonError(path, f"dtype {mel.dtype}, expected floating point")
    if values and not np.isfinite(mel).all():
        raise MelonError(path, f"{int(np.size(mel) - np.isfinite(mel).sum())} non-finite values (NaN or Inf)")


def _open_mel(path: str | os.PathLike[str], mmap: bool) -> tuple[Path, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise MelonError(p, "file not found" if not p.exists() else "not a regular file")
    if p.stat().st_size == 0:
        raise MelonError(p, "empty file (0 bytes)")
    try:
        with np.errstate(all="ignore"):  # a forged shape overflows numpy's size arithmetic: an error below
            mel = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy's header parser also raises TokenError, SyntaxError, ...
        raise MelonError(p, f"not a readable .npy array ({type(exc).__name__}: {exc})") from exc
    if not isinstance(mel, np.ndarray):  # an .npz archive
        mel.close()
        raise MelonError(p, "an .npz archive, expected a single .npy array")
    return p, mel


def load_melon_mel(path: str | os.PathLike[str]) -> np.ndarray:
    """A Melon mel file as a time-major (T, 48) float32 array, what the model consumes.

    Raises MelonError (an AudioError) for an unreadable file, a shape other than (48, T),
    a non-float dtype, or NaN/Inf values (also after the cast to float32).
    """
    # Memory-mapped first: a forged or cut header that declares more data than the file
    # holds is an error here, not a many-GB allocation (found by tests/test_fuzz.py).
    p, mel = _open_mel(path, mmap=True)
    _check_mel(p, mel, values=False)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, rejected below
        out = np.ascontiguousarray(mel.T, dtype=np.float32)
    _check_mel(p, out.T, values=True)
    return out


# --------------------------------------------------------------------------- validation


def _problem(track: Track, decode: bool) -> tuple[str | None, bool]:
    """(reason the track is unusable or None, whether it is truncated)."""
    try:
        if track.path.endswith(".npy"):
            if decode:
                load_melon_mel(track.path)
            else:
                _check_mel(*_open_mel(track.path, mmap=True), values=False)
            return None, False
        return None, check_audio(track.path, decode=decode).truncated
    except AudioError as exc:
        return exc.reason, False


def validate_tracks(
    tracks: DatasetIndex | Iterable[Track],
    *,
    max_skip_fraction: float = 0.05,
    decode: bool = True,
    allow_truncated: bool = True,
    workers: int | None = None,
) -> DatasetIndex:
    """Open every file once and move unusable ones to `skipped` with the reason.

    `decode=True` decodes every frame (catches decoder errors, NaN/Inf); `decode=False`
    only reads headers (much cheaper). Truncated files are kept and listed in `flagged`,
    or skipped when `allow_truncated=False`. Raises DatasetError naming how many files
    failed and the first reasons when more than `max_skip_fraction` of the checked
    tracks fail, or when a class loses all its tracks. Class names never change, so
    label indices stay stable. Runs `workers` threads (default: CPU count, at most 8).
    """
    index = tracks if isinstance(tracks, DatasetIndex) else DatasetIndex.from_tracks(tracks)
    if not 0.0 <= max_skip_fraction <= 1.0:
        raise ValueError(f"max_skip_fraction must be within [0, 1], got {max_skip_fraction}")
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda t: _problem(t, decode), index.tracks))
    kept: list[Track] = []
    bad: list[dict[str, str]] = []
    flagged: list[dict[str, str]] = []
    for track, (reason, truncated) in zip(index.tracks, results):
        if reason is None and truncated:
            note = _skip(track.path, "truncated: shorter than its header declares", key=track.key, label=track.label)
            (flagged if allow_truncated else bad).append(note)
            if not allow_truncated:
                continue
        elif reason is not None:
            bad.append(_skip(track.path, reason, key=track.key, label=track.label))
            continue
        kept.append(track)
    n = len(index.tracks)
    if bad and len(bad) > max_skip_fraction * n:
        raise DatasetError(
            _summary(f"{len(bad)} of {n} files ({len(bad) / n:.1%}) are unusable, more than "
                     f"max_skip_fraction={max_skip_fraction}:", bad)
        )
    emptied = sorted({t.label for t in index.tracks} - {t.label for t in kept})
    if emptied:
        raise DatasetError(_summary(f"every track of class(es) {emptied} is unusable;", bad))
    if bad:
        warnings.warn(_summary(f"{index.root or 'tracks'}: skipped unusable", bad), DatasetWarning, stacklevel=2)
    return replace(
        index, tracks=tuple(kept), skipped=index.skipped + tuple(bad), flagged=index.flagged + tuple(flagged)
    )
