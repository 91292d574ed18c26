"""tf.data input pipelines: decoded clips, random training crops, whole clips and TTA crops.

Each file is decoded once (libsndfile + soxr, outside the graph: TF has no resampler) into
a `ClipStore`, in memory or in an on-disk cache of .npy files that later runs reuse
(memory-mapped, so a dataset larger than RAM streams from disk). Training crops are
planned per epoch by `CropSampler` from (seed, epoch) alone, so a run is deterministic
and a resumed run sees exactly the crops the uninterrupted run would have seen.

Example (with `tracks`, `labels` and a compiled `model`; `keras_mgc.fold_trainer` does this)::

    store = ClipStore(tracks, cache="memory").prepare()
    sampler = CropSampler(store.lengths, crop=44356, data_cycle=8, seed=3823, global_batch=64)
    ds = training_dataset(store, labels, sampler, initial_epoch=0)
    model.fit(ds, epochs=80, steps_per_epoch=sampler.steps_per_epoch, initial_epoch=0)
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from keras_mgc.audio import AudioError, load_audio
from keras_mgc.contract import DEFAULT_SAMPLE_RATE
from keras_mgc.data.datasets import MELON_MEL_BINS, Track, load_melon_mel
from keras_mgc.io import DiskFullError, atomic_path
from keras_mgc.windows import crop

__all__ = ["CACHE_VERSION", "is_mel_track", "decode_track", "skip_reason", "truncation_note", "ClipStore",
           "CropSampler", "training_dataset", "distributed_training_input", "whole_clip_dataset"]

CACHE_VERSION = 1


def is_mel_track(track: Track) -> bool:
    return track.path.endswith(".npy")


def decode_track(path: str | os.PathLike[str], is_mel: bool, sample_rate: int,
                 notes: list[str] | None = None) -> np.ndarray:
    """A track's clip as training consumes it: `load_melon_mel` for a mel file, else `load_audio`
    at `sample_rate`; what `ClipStore` and the shard writer both decode with.

    Raises AudioError (or OSError) for an unusable file. A truncated audio file's notes are
    appended to `notes` when given (see `truncation_note`), else load_audio warns.
    """
    if is_mel:
        return load_melon_mel(path)
    return load_audio(path, sample_rate, on_truncated=None if notes is None else notes.append)


def skip_reason(exc: AudioError | OSError) -> str:
    """Why a track that `decode_track` refused is skipped, as the skip lists record it."""
    return exc.reason if isinstance(exc, AudioError) else str(exc)


def truncation_note(notes: list[str]) -> str:
    """The flag-list reason of a track decoded with truncation `notes`."""
    return "truncated, using the decodable part: " + "; ".join(notes)


class ClipStore:
    """The decoded clips of `tracks`, each decoded once; index i is tracks[i].

    cache: "memory" keeps float32 arrays in RAM; "disk" writes one .npy per track under
    `cache_dir` (keyed by path, size, mtime and sample rate, so an edited file is decoded
    again) and memory-maps it; "none" decodes on every access (for mels already on disk,
    such as Melon's, this is the cheap choice). Whatever the cache, `prepare()` decodes
    every track once, so a file that cannot be used (NaN values, wrong shape or dtype, a
    decoder error) is found before training, never mid-epoch; unreadable tracks are
    dropped and listed in `skipped` with the reason, truncated ones kept and listed in
    `flagged` (decoded now; a disk-cache hit is not decoded again and not re-flagged).
    """

    def __init__(self, tracks: Sequence[Track], cache: str = "memory", cache_dir: str | os.PathLike | None = None,
                 sample_rate: int = DEFAULT_SAMPLE_RATE, workers: int | None = None) -> None:
        if cache not in ("memory", "disk", "none"):
            raise ValueError(f"cache must be 'memory', 'disk' or 'none', got {cache!r}")
        if cache == "disk" and cache_dir is None:
            raise ValueError("cache 'disk' needs a cache_dir")
        self.tracks = list(tracks)
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.sample_rate = sample_rate
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.skipped: list[dict[str, str]] = []
        self.flagged: list[dict[str, str]] = []
        self.lengths = np.zeros(len(self.tracks), dtype=np.int64)
        self._arrays: list[np.ndarray | None] = [None] * len(self.tracks)
        self._prepared = False

    # ------------------------------------------------------------------ decoding
    def _decode(self, track: Track, notes: list[str] | None = None) -> np.ndarray:
        return decode_track(track.path, is_mel_track(track), self.sample_rate, notes)

    def _cache_path(self, track: Track) -> Path:
        st = os.stat(track.path)
        key = f"{CACHE_VERSION}|{os.path.abspath(track.path)}|{st.st_size}|{st.st_mtime_ns}|{self.sample_rate}"
        return self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"

    def _prepare_one(self, i: int) -> tuple[int, np.ndarray | None, int, str | None, list[str]]:
        track = self.tracks[i]
        notes: list[str] = []  # truncation notes from the decoder
        try:
            if self.cache == "memory":
                clip = self._decode(track, notes)
                return i, clip, clip.shape[0], None, notes
            if self.cache == "disk":
                path = self._cache_path(track)
                if not path.is_file():
                    clip = self._decode(track, notes)
                    with atomic_path(path) as tmp:
                        np.save(tmp, clip)
                clip = np.load(path, mmap_mode="r")
                return i, clip, clip.shape[0], None, notes
            # "none": decode once to check (NaN, shape, dtype, decoder errors) and measure, keep nothing.
            return i, None, self._decode(track, notes).shape[0], None, notes
        except (AudioError, OSError) as exc:
            if isinstance(exc, DiskFullError):  # the cache's disk, not the track: stop, do not skip it
                raise
            return i, None, 0, skip_reason(exc), notes

    def prepare(self) -> "ClipStore":
        """Decode (or index) every track once; drop and record the unreadable ones."""
        if self._prepared:
            return self
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(self.workers) as pool:
            results = list(pool.map(self._prepare_one, range(len(self.tracks))))
        keep = [i for i, _, _, reason, _ in results if reason is None]
        for i, _, _, reason, notes in results:
            t = self.tracks[i]
            if reason is not None:
                self.skipped.append({"path": t.path, "key": t.key, "label": t.label, "reason": reason})
            elif notes:
                self.flagged.append({"path": t.path, "key": t.key, "label": t.label, "reason": truncation_note(notes)})
        self.tracks = [self.tracks[i] for i in keep]
        self._arrays = [results[i][1] for i in keep]
        self.lengths = np.array([results[i][2] for i in keep], dtype=np.int64)
        self._prepared = True
        return self

    def __len__(self) -> int:
        return len(self.tracks)

    def subset(self, positions: Sequence[int]) -> "ClipStore":
        """A view of some prepared clips (shares the decoded arrays)."""
        if not self._prepared:
            raise RuntimeError("prepare() the store before taking subsets")
        view = copy.copy(self)
        view.tracks = [self.tracks[i] for i in positions]
        view._arrays = [self._arrays[i] for i in positions]
        view.lengths = self.lengths[list(positions)]
        view.skipped = []
        view.flagged = []
        return view

    def get(self, i: int) -> np.ndarray:
        """Clip i: (samples,) float32 audio or (frames, 48) float32 mels."""
        clip = self._arrays[i]
        return self._decode(self.tracks[i]) if clip is None else clip

    @property
    def is_mel(self) -> bool:
        return bool(self.tracks) and is_mel_track(self.tracks[0])


class CropSampler:
    """Plans each epoch's random crops from (seed, epoch) alone: every track `data_cycle` times, shuffled.

    An epoch is padded to whole global batches by repeating its first crops (so every
    step has the same batch size on every replica and epochs never straddle a batch);
    `max_steps` caps the steps per epoch (`train.steps_per_epoch`).
    """

    def __init__(self, lengths: Sequence[int], crop: int, data_cycle: int, seed: int, global_batch: int,
                 max_steps: int | None = None) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.size == 0:
            raise ValueError("CropSampler needs at least one track")
        self.crop, self.data_cycle, self.seed, self.global_batch = crop, data_cycle, seed, global_batch
        self.max_steps = max_steps

    @property
    def steps_per_epoch(self) -> int:
        steps = -(-len(self.lengths) * self.data_cycle // self.global_batch)
        return steps if self.max_steps is None else min(steps, self.max_steps)

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(track indices, crop starts) of one epoch, steps_per_epoch * global_batch long."""
        rng = np.random.default_rng([self.seed, epoch])
        order = np.repeat(np.arange(len(self.lengths)), self.data_cycle)
        rng.shuffle(order)
        max_start = np.maximum(self.lengths[order] - self.crop, 0)
        starts = (rng.random(order.size) * (max_start + 1)).astype(np.int64)
        n = self.steps_per_epoch * self.global_batch
        take = np.arange(n) % order.size
        return order[take], starts[take]


def _spec(store: ClipStore, length: int | None, batched: bool = False) -> tf.TensorSpec:
    shape = (length, MELON_MEL_BINS) if store.is_mel else (length,)
    return tf.TensorSpec((None, *shape) if batched else shape, tf.float32)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # Sharding is done by the sampler (see training_dataset); tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def training_dataset(store: ClipStore, labels: Sequence[int], sampler: CropSampler, initial_epoch: int = 0,
                     batch_size: int | None = None, num_shards: int = 1, shard_index: int = 0) -> tf.data.Dataset:
    """An endless stream of (crops, labels) batches: epoch `initial_epoch`, then the next, ...

    Pass `steps_per_epoch=sampler.steps_per_epoch` and `initial_epoch` to `fit`. Batches
    are `batch_size` crops (default: the global batch); with tf.distribute, each input
    pipeline (`shard_index` of `num_shards`) takes every num_shards-th crop of the plan
    and `batch_size` is the per-replica batch (see `distributed_training_input`).
    """
    labels = np.asarray(labels, dtype=np.int32)
    batch_size = batch_size or sampler.global_batch

    def generate() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch = initial_epoch
        while True:
            order, starts = sampler.plan(epoch)
            order, starts = order[shard_index::num_shards], starts[shard_index::num_shards]
            for b in range(0, order.size, batch_size):
                idx, st = order[b : b + batch_size], starts[b : b + batch_size]
                crops = np.stack([crop(store.get(int(i)), int(s), sampler.crop) for i, s in zip(idx, st)])
                yield crops.astype(np.float32, copy=False), labels[idx]
            epoch += 1

    ds = tf.data.Dataset.from_generator(
        generate, output_signature=(_spec(store, sampler.crop, batched=True), tf.TensorSpec((None,), tf.int32))
    )
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def distributed_training_input(strategy: tf.distribute.Strategy, store: ClipStore, labels: Sequence[int],
                               sampler: CropSampler, initial_epoch: int = 0) -> Any:
    """`training_dataset` spread over a tf.distribute strategy: one input pipeline per worker,
    sharded by the sampler, batched per replica (`distribute_datasets_from_function`)."""

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return training_dataset(store, labels, sampler, initial_epoch,
                                batch_size=context.get_per_replica_batch_size(sampler.global_batch),
                                num_shards=context.num_input_pipelines, shard_index=context.input_pipeline_id)

    return strategy.distribute_datasets_from_function(dataset_fn)


def whole_clip_dataset(store: ClipStore, labels: Sequence[int]) -> tf.data.Dataset:
    """Batches of one whole clip each (lengths differ), for validation and whole-clip tests."""
    labels = np.asarray(labels, dtype=np.int32)

    def generate() -> Iterator[tuple[np.ndarray, np.int32]]:
        for i in range(len(store)):
            yield np.asarray(store.get(i), dtype=np.float32), labels[i]

    ds = tf.data.Dataset.from_generator(generate, output_signature=(_spec(store, None), tf.TensorSpec((), tf.int32)))
    return ds.batch(1).prefetch(tf.data.AUTOTUNE).with_options(_options())
