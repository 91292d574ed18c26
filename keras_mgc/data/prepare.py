"""A recipe's `data:` section -> decoded clips and the folds to run, with a record of what was used.

Order of work: discover the dataset (layout, classes), build the split (paper folds,
fault-filtered, stratified k-fold or list files), resolve it against what is on disk
(absent tracks are an error unless `allow_missing`), decode every needed file once
(corrupt files are reported and skipped; too many stop the run), then hand out each
fold's train / valid / test tracks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keras_mgc.contract import DEFAULT_SAMPLE_RATE
from keras_mgc.config import DataConfig
from keras_mgc.data import splits as S
from keras_mgc.data.datasets import GTZAN_GENRES, DatasetError, DatasetIndex, Track, discover, discover_melon
from keras_mgc.data.pipeline import ClipStore
from keras_mgc.data.synthetic import describe as describe_synthetic
from keras_mgc.data.synthetic import make_synthetic_dataset

if TYPE_CHECKING:
    from keras_mgc.data.shard_input import ShardedData

__all__ = ["Fold", "PreparedData", "prepare_data", "load_data", "resolve_fold"]

log = logging.getLogger("keras_mgc")


@dataclass
class Fold:
    """One train/valid/test assignment: `name` ("fold_01", or "split"), its tracks and missing keys."""

    number: int
    name: str
    train: list[Track]
    valid: list[Track]
    test: list[Track]
    missing: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "sizes": {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)},
            "missing": {k: v for k, v in self.missing.items() if v},
            "skipped_unreadable": {k: v for k, v in self.skipped.items() if v},
        }


@dataclass
class PreparedData:
    """Everything training needs from the data: clips, classes, folds and the record of it."""

    index: DatasetIndex
    store: ClipStore
    class_names: list[str]
    folds: list[Fold]
    description: str
    skipped: list[dict[str, str]]

    def positions(self, tracks: list[Track]) -> list[int]:
        """Positions of `tracks` in the store."""
        where = {t.key: i for i, t in enumerate(self.store.tracks)}
        return [where[t.key] for t in tracks]

    def labels(self, tracks: list[Track]) -> list[int]:
        lookup = {name: i for i, name in enumerate(self.class_names)}
        return [lookup[t.label] for t in tracks]

    def part(self, fold: Fold, name: str) -> tuple[ClipStore, list[int]]:
        """The clips and labels of one part ("train", "valid", "test") of `fold`."""
        tracks = getattr(fold, name)
        return self.store.subset(self.positions(tracks)), self.labels(tracks)

    @property
    def flagged(self) -> list[dict[str, str]]:
        return self.store.flagged

    def report(self) -> dict[str, Any]:
        """The data actually used, for results.json."""
        counts = {name: 0 for name in self.class_names}
        for t in self.store.tracks:
            counts[t.label] += 1
        return {
            "description": self.description,
            "root": self.index.root,
            "layout": self.index.layout,
            "class_names": self.class_names,
            "files_per_class": counts,
            "n_files": len(self.store.tracks),
            "n_skipped": len(self.skipped),
            "flagged": [dict(f) for f in self.store.flagged],
            "folds": {f.name: f.report() for f in self.folds},
        }


def _index(cfg: DataConfig, work_dir: Path, seed: int) -> tuple[DatasetIndex, str]:
    if cfg.dataset == "synthetic":
        root = make_synthetic_dataset(work_dir / "synthetic_data", cfg.synthetic_clips_per_class,
                                      cfg.synthetic_seconds, seed)
        return discover(root), describe_synthetic()
    if cfg.dataset == "melon":
        index = discover_melon(cfg.root)
        return index, f"Melon Playlist mels at {index.root}: {len(index)} single-genre songs, {len(index.class_names)} genres"
    index = discover(cfg.root)
    if cfg.dataset == "gtzan":
        unknown = sorted(set(index.class_names) - set(GTZAN_GENRES))
        if unknown:
            raise DatasetError(f"data.root {cfg.root}: not a GTZAN layout, unknown genre folders {unknown} "
                               "(use data.dataset: folder for your own classes)")
        index = DatasetIndex(index.root, index.layout, index.tracks, GTZAN_GENRES, index.skipped, index.flagged,
                             index.stats)
    what = "GTZAN" if index.layout == "gtzan" else "folder-per-class dataset"
    return index, f"{what} at {index.root}: {len(index)} files, {len(index.class_names)} classes"


def _splits(cfg: DataConfig, index: DatasetIndex, seed: int) -> list[tuple[str, S.Split]]:
    if cfg.split == "paper_10fold":
        folds = S.paper_folds()
    elif cfg.split == "fault_filtered":
        return [("split", S.fault_filtered())]
    elif cfg.split == "kfold":
        folds = S.stratified_kfold([t.key for t in index.tracks], [t.label for t in index.tracks], cfg.n_folds, seed)
    else:
        loaded = S.load_split_dir(cfg.split_dir)
        if isinstance(loaded, S.Split):
            return [("split", loaded)]
        folds = loaded
    return [(f"fold_{k:02d}", S.cv_fold(folds, k)) for k in range(1, len(folds) + 1)]


def resolve_fold(cfg: DataConfig, work_dir: str | Path, seed: int, fold: int | None = None
                 ) -> tuple[DatasetIndex, str, str, int, S.ResolvedSplit]:
    """One fold of the recipe's split resolved against the dataset, nothing decoded (for sharding).

    Returns (index, description, fold name, fold number, resolved split); `fold` defaults
    to the recipe's first (`data.folds`).
    """
    index, description = _index(cfg, Path(work_dir), seed)
    splits = _splits(cfg, index, seed)
    if fold is None:
        fold = cfg.folds[0] if cfg.folds != "all" else 1
    if not 1 <= fold <= len(splits):
        raise S.SplitError(f"--fold {fold}: the split has folds 1..{len(splits)}")
    name, split = splits[fold - 1]
    return index, description, name, fold, S.resolve_split(split, index, cfg.allow_missing)


def load_data(cfg: DataConfig, work_dir: str | Path, seed: int,
              sample_rate: int = DEFAULT_SAMPLE_RATE) -> "PreparedData | ShardedData":
    """The data a recipe's `data:` section names: its shard folder (`data.shards`, read by
    tf.data) or the dataset itself (`prepare_data`). Both give folds, parts and a report."""
    if cfg.shards is not None:
        from keras_mgc.data.shard_input import ShardedData, ShardSet

        return ShardedData(ShardSet(cfg.shards))
    return prepare_data(cfg, work_dir, seed, sample_rate=sample_rate)


def prepare_data(cfg: DataConfig, work_dir: str | Path, seed: int, cache_dir: str | Path | None = None,
                 sample_rate: int = DEFAULT_SAMPLE_RATE) -> PreparedData:
    """Discover, split, resolve and decode the data a recipe asks for.

    `sample_rate` is the model's front-end rate (model.frontend.sample_rate): every audio
    file is decoded and resampled to it, and the disk cache is keyed by it.
    """
    work_dir = Path(work_dir)
    index, description = _index(cfg, work_dir, seed)
    splits = _splits(cfg, index, seed)
    if cfg.folds != "all":
        unknown = [k for k in cfg.folds if k > len(splits)]
        if unknown:
            raise S.SplitError(f"data.folds: folds {unknown} do not exist; the split has {len(splits)}")
        splits = [splits[k - 1] for k in cfg.folds]

    resolved = [(name, S.resolve_split(split, index, cfg.allow_missing)) for name, split in splits]
    needed = {t.key: t for _, r in resolved for part in r.parts.values() for t in part}
    disk_cache = (cache_dir or cfg.cache_dir or work_dir / "cache") if cfg.cache == "disk" else None
    store = ClipStore(sorted(needed.values(), key=lambda t: t.key), cache=cfg.cache, cache_dir=disk_cache,
                      sample_rate=sample_rate).prepare()
    n = len(needed)
    all_skipped = [dict(s) for s in index.skipped] + store.skipped
    first = "; ".join(f"{s['path']}: {s['reason']}" for s in store.skipped[:5])
    if store.skipped:
        log.warning("skipped %d unreadable file(s): %s", len(store.skipped), first)
    if store.flagged:
        log.warning("%d truncated file(s) kept (their decodable part is used): %s", len(store.flagged),
                    "; ".join(f"{s['path']}: {s['reason']}" for s in store.flagged[:5]))
    if n and len(store.skipped) > cfg.max_skip_fraction * n:
        raise _with_skipped(DatasetError(f"{len(store.skipped)} of {n} files are unreadable, more than "
                                         f"data.max_skip_fraction={cfg.max_skip_fraction}; first: {first}"), all_skipped)
    emptied = sorted({t.label for t in needed.values()} - {t.label for t in store.tracks})
    if emptied:
        raise _with_skipped(DatasetError(f"every file of class(es) {emptied} is unreadable; first: {first}"), all_skipped)
    bad = {s["key"] for s in store.skipped}
    folds = []
    for number, (name, r) in enumerate(resolved, start=1):
        number = int(name.split("_")[1]) if name.startswith("fold_") else number
        parts = {p: [t for t in r.parts[p] if t.key not in bad] for p in S.PARTS}
        skipped = {p: [t.key for t in r.parts[p] if t.key in bad] for p in S.PARTS}
        for p in ("train", "test"):
            if not parts[p]:
                raise S.SplitError(f"{name}: the {p} part has no usable tracks (missing: {len(r.missing.get(p, ()))}, "
                                   f"unreadable: {len(skipped[p])})")
        folds.append(Fold(number, name, parts["train"], parts["valid"], parts["test"],
                          {p: list(k) for p, k in r.missing.items()}, skipped))
    return PreparedData(index, store, list(index.class_names), folds, description, all_skipped)


def _with_skipped(error: DatasetError, skipped: list[dict[str, str]]) -> DatasetError:
    """`error` carrying the full list of skipped files, for the run's skipped.json."""
    error.skipped = skipped  # type: ignore[attr-defined]
    return error
