"""Reading TFRecord shards (`python -m keras_mgc.data.shard`) for training and evaluation.

Training input is pure tf.data, in the graph end to end: the shard files of the part are
permuted per pass, split between the input pipelines by file (pipeline i of P takes files
i, i+P, ... of the permutation: tf.distribute's FILE sharding, done explicitly so that it
is deterministic), read with a deterministic parallel interleave, parsed and cropped in
`map`, optionally shuffled in a buffer, batched and prefetched. Nothing proportional to the
dataset is held in memory (the file list and a shuffle buffer), and nothing is read before
the first step beyond the first records.

Determinism and resume: a crop's start is drawn by a stateless RNG from (seed, epoch,
pass, record index), the file permutation from (seed, epoch, pass) and the shuffle
buffer is seeded from the same; so the same seed gives the same crops in every epoch, and
a run resumed at epoch k builds the stream from epoch k without reading epochs 0..k-1.

An epoch is `steps_per_epoch` global batches: every pipeline serves the same number of
batches (collectives need it), enough for the largest share of files a pipeline can get;
a pipeline whose files hold fewer records repeats its first crops of the epoch (as
`CropSampler` pads an epoch to whole batches).

Example (with shards written by `python -m keras_mgc.data.shard`; tests/test_shards.py runs it)::

    shards = ShardSet("/data/melon-shards")
    ds = shards.training_dataset("train", crop=174, seed=4021, global_batch=256, data_cycle=1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_mgc.data.datasets import Track
from keras_mgc.data.shard import FORMAT, FORMAT_VERSION, MANIFEST, PROGRESS, RECORD_DTYPE, ShardError, parse_record
from keras_mgc.io import read_json

_MAX_EPOCHS = 1 << 30


class ShardSet:
    """A shard folder: its manifest checked (format, version, files present) and its parts."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise ShardError(f"{self.folder}: no {MANIFEST}; write the shards with python -m keras_mgc.data.shard "
                             "(an interrupted run is finished by running it again)")
        try:
            m = read_json(path)
        except (OSError, ValueError) as exc:
            raise ShardError(f"{path}: not readable JSON ({exc})") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise ShardError(f"{path}: not a keras-mgc shard manifest")
        if m.get("version") != FORMAT_VERSION:
            raise ShardError(f"{path}: shard format version {m.get('version')}, this keras-mgc reads "
                             f"{FORMAT_VERSION}; reshard with this version")
        for part, info in m["parts"].items():
            for shard in info["shards"]:
                f = self.folder / shard["file"]
                if not f.is_file():
                    raise ShardError(f"{f}: shard of part {part} listed in the manifest is missing")
                if f.stat().st_size != shard["bytes"]:
                    raise ShardError(f"{f}: {f.stat().st_size} bytes, the manifest says {shard['bytes']} (changed "
                                     "or cut short after writing)")
        self.manifest: dict[str, Any] = m
        self.class_names: list[str] = list(m["class_names"])
        self.kind: str = m["kind"]

    # ------------------------------------------------------------------ metadata
    def parts(self) -> list[str]:
        return list(self.manifest["parts"])

    def _part(self, part: str) -> dict[str, Any]:
        try:
            return self.manifest["parts"][part]
        except KeyError:
            raise ShardError(f"{self.folder}: no {part!r} part (parts: {self.parts()})") from None

    def files(self, part: str) -> list[str]:
        return [str(self.folder / s["file"]) for s in self._part(part)["shards"]]

    def counts(self, part: str) -> list[int]:
        return [int(s["n_records"]) for s in self._part(part)["shards"]]

    def n_records(self, part: str) -> int:
        return int(self._part(part)["n_records"])

    def keys(self, part: str) -> list[str]:
        from keras_mgc.data.splits import read_split_list

        return read_split_list(self.folder / self._part(part)["keys"])

    def steps_per_epoch(self, part: str, global_batch: int, data_cycle: int = 1, num_pipelines: int = 1,
                        max_steps: int | None = None) -> int:
        """Global batches per epoch: enough for the pipeline that gets the most records.

        Files are dealt per pass from a permutation, so a pipeline gets at most
        ceil(F / P) files: the bound uses that many of the largest. With one pipeline this is
        ceil(records * data_cycle / global_batch), as `CropSampler.steps_per_epoch`.
        """
        counts = sorted(self.counts(part), reverse=True)
        if len(counts) < num_pipelines:
            raise ShardError(f"{self.folder}: the {part} part has {len(counts)} shard file(s), fewer than the "
                             f"{num_pipelines} input pipelines; reshard with a smaller --records-per-shard")
        per_pipeline = global_batch // num_pipelines
        most = sum(counts[: math.ceil(len(counts) / num_pipelines)])
        steps = max(1, math.ceil(most * data_cycle / per_pipeline))
        return steps if max_steps is None else min(steps, max_steps)

    # ------------------------------------------------------------------ training input
    def training_dataset(self, part: str, crop: int, seed: int, global_batch: int, data_cycle: int = 1,
                         initial_epoch: int = 0, num_pipelines: int = 1, pipeline_id: int = 0,
                         shuffle_buffer: int = 1024, interleave_cycle: int = 16,
                         max_steps: int | None = None, batch_size: int | None = None) -> Any:
        """An endless tf.data stream of (crops, labels) batches from epoch `initial_epoch` on.

        An epoch is `steps_per_epoch(...)` global batches, of which this pipeline serves
        global_batch / num_pipelines crops, in batches of `batch_size` (default: all of
        them; tf.distribute passes the per-replica batch).
        """
        import tensorflow as tf

        if global_batch % num_pipelines:
            raise ShardError(f"global batch {global_batch} is not divisible by {num_pipelines} input pipelines")
        batch = global_batch // num_pipelines
        batch_size = batch_size or batch
        steps = self.steps_per_epoch(part, global_batch, data_cycle, num_pipelines, max_steps)
        paths = self.files(part)
        files = tf.constant(paths)
        n_files = len(paths)
        mine = math.ceil((n_files - pipeline_id) / num_pipelines)
        cycle = max(1, min(interleave_cycle, mine))
        mel = self.kind == "mel"
        dtype = tf.float16 if mel else tf.float32
        bins = int(self.manifest["bins"] or 0)
        spec = {"x": tf.io.FixedLenFeature([], tf.string), "length": tf.io.FixedLenFeature([], tf.int64),
                "label": tf.io.FixedLenFeature([], tf.int64), "index": tf.io.FixedLenFeature([], tf.int64)}
        base = tf.constant([seed, 0], tf.int64)

        def pass_seed(epoch: Any, c: Any) -> Any:
            key = tf.random.experimental.stateless_fold_in(base, epoch)
            return tf.random.experimental.stateless_fold_in(key, c)

        def parse_and_crop(record: Any, key: Any) -> tuple[Any, Any]:
            f = tf.io.parse_single_example(record, spec)
            x = tf.io.decode_raw(f["x"], dtype)
            length = f["length"]
            x = tf.reshape(x, [length, bins] if mel else [length])
            start = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(key, f["index"]),
                                                minval=0, maxval=tf.maximum(length - crop, 0) + 1, dtype=tf.int64)
            window = tf.gather(x, (start + tf.range(crop, dtype=tf.int64)) % length)  # wrap-pads a short clip
            return tf.cast(window, tf.float32), tf.cast(f["label"], tf.int32)

        def one_pass(epoch: Any, c: Any) -> Any:
            key = pass_seed(epoch, c)
            order = tf.argsort(tf.random.stateless_uniform([n_files], key))
            chosen = tf.gather(files, order)[pipeline_id::num_pipelines]
            ds = tf.data.Dataset.from_tensor_slices(chosen).interleave(
                tf.data.TFRecordDataset, cycle_length=cycle, block_length=1,
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            ds = ds.map(lambda r: parse_and_crop(r, key), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            if shuffle_buffer > 1:
                ds = ds.shuffle(shuffle_buffer, seed=key[0])
            return ds

        def one_epoch(epoch: Any) -> Any:
            passes = tf.data.Dataset.range(data_cycle).flat_map(lambda c: one_pass(epoch, c))
            return passes.repeat().take(steps * batch)  # pad with the epoch's first crops

        ds = tf.data.Dataset.range(initial_epoch, _MAX_EPOCHS).flat_map(one_epoch)
        options = tf.data.Options()
        options.deterministic = True
        # Files are dealt to pipelines above; tf.distribute must not shard again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(options)

    def distributed_training_input(self, strategy: Any, part: str, crop: int, seed: int, global_batch: int,
                                   **kwargs: Any) -> Any:
        """`training_dataset` per input pipeline of a tf.distribute strategy (one per worker)."""

        def dataset_fn(context: Any) -> Any:
            return self.training_dataset(part, crop, seed, global_batch, num_pipelines=context.num_input_pipelines,
                                         pipeline_id=context.input_pipeline_id,
                                         batch_size=context.get_per_replica_batch_size(global_batch), **kwargs)

        return strategy.distribute_datasets_from_function(dataset_fn)

    # ------------------------------------------------------------------ evaluation input
    def clips(self, part: str) -> "ShardClips":
        return ShardClips(self, part)


class ShardClips:
    """The clips of one part in shard order, read on demand: a ClipStore for evaluation.

    `get(i)` reads sequentially (evaluation visits clips in order); a step backwards reopens
    the stream. Only keys and labels are held, never the clips.
    """

    def __init__(self, shards: ShardSet, part: str) -> None:
        self.shards, self.part = shards, part
        keys = shards.keys(part)
        labels = self._labels(shards, part)
        if len(labels) != len(keys):
            raise ShardError(f"{shards.folder}: {part}.txt lists {len(keys)} tracks, the shards hold {len(labels)}")
        self.labels = labels
        self.tracks = [Track(str(shards.folder), shards.class_names[label], key) for key, label in zip(keys, labels)]
        self._iter: Any = None
        self._next = 0

    @staticmethod
    def _labels(shards: ShardSet, part: str) -> list[int]:
        progress = shards.folder / PROGRESS
        labels: list[int] = []
        for shard in shards._part(part)["shards"]:
            labels += read_json(progress / f"{shard['file']}.json")["labels"]
        return labels

    def __len__(self) -> int:
        return len(self.tracks)

    @property
    def is_mel(self) -> bool:
        return self.shards.kind == "mel"

    def get(self, i: int) -> np.ndarray:
        import tensorflow as tf

        if self._iter is None or i < self._next:
            self._iter = tf.data.TFRecordDataset(self.shards.files(self.part)).as_numpy_iterator()
            self._next = 0
        while True:
            rec = parse_record(next(self._iter))
            self._next += 1
            if self._next - 1 == i:
                break
        if rec["key"] != self.tracks[i].key:
            raise ShardError(f"{self.shards.folder}: record {i} of {self.part} is {rec['key']}, "
                             f"{self.part}.txt says {self.tracks[i].key}")
        x = np.frombuffer(rec["x"], dtype=RECORD_DTYPE["mel" if self.is_mel else "audio"]).astype(np.float32)
        return x.reshape(rec["length"], -1) if self.is_mel else x


@dataclass
class ShardedData:
    """What training needs from a shard folder (the counterpart of sources.PreparedData)."""

    shards: ShardSet

    @property
    def class_names(self) -> list[str]:
        return self.shards.class_names

    @property
    def description(self) -> str:
        m = self.shards.manifest
        sizes = ", ".join(f"{p} {v['n_records']}" for p, v in m["parts"].items())
        return f"shards at {self.shards.folder} ({sizes}) of {m['source'].get('description', 'a dataset')}"

    @property
    def folds(self) -> list[Any]:
        """The one fold the shards hold (its track lists stay empty: the tracks are in the shards)."""
        from keras_mgc.data.prepare import Fold

        source = self.shards.manifest["source"]
        return [Fold(int(source.get("fold", 1)), str(source.get("fold_name", "split")), [], [], [])]

    @property
    def skipped(self) -> list[dict[str, str]]:
        return list(self.shards.manifest["skipped"])

    @property
    def flagged(self) -> list[dict[str, str]]:
        return list(self.shards.manifest["flagged"])

    def sizes(self) -> dict[str, int]:
        return {p: int(v["n_records"]) for p, v in self.shards.manifest["parts"].items()}

    def part(self, fold: Any, name: str) -> tuple[ShardClips, list[int]]:
        """The clips (streamed from the shards) and labels of part `name`."""
        clips = self.shards.clips(name)
        return clips, clips.labels

    def report(self) -> dict[str, Any]:
        m = self.shards.manifest
        return {"description": self.description, "shards": str(self.shards.folder), "class_names": self.class_names,
                "n_files": sum(v["n_records"] for v in m["parts"].values()), "n_skipped": len(m["skipped"]),
                "flagged": m["flagged"], "source": m["source"],
                "folds": {self.folds[0].name: {"sizes": self.sizes()}}}


def check_shards_match(shards: ShardSet, model_input: str, sample_rate: int) -> None:
    """ShardError if the shards were made for another input (mel vs audio) or sample rate."""
    want = "mel" if model_input == "mel" else "audio"
    if shards.kind != want:
        raise ShardError(f"{shards.folder}: shards hold {shards.kind} clips, the recipe's model.input is {model_input}")
    if want == "audio" and shards.manifest["sample_rate"] != sample_rate:
        raise ShardError(f"{shards.folder}: audio decoded at {shards.manifest['sample_rate']} Hz, the recipe's front "
                         f"end runs at {sample_rate} Hz; reshard with this recipe")
