"""Convert a dataset into TFRecord shards + a manifest, for training at scale.

    python -m keras_mgc.data.shard --recipe recipes/melon_22_ecapa.yaml --data-dir /data/melon \\
        --output /data/melon-shards [--records-per-shard 1024] [--workers 8] [--fold 1] [--overwrite]

The recipe says what to shard: its `data:` section (dataset, split, fold) and the model's
front end (audio is decoded ONCE here, at `model.frontend.sample_rate`; Melon mels are
stored as they are, time-major, float16). Each part of the split (train / valid / test)
becomes `<part>-NNNNN-of-MMMMM.tfrecord` files of `tf.train.Example` records:

    x       bytes   the clip, raw little-endian (float32 audio samples, or float16 (T, 48) mels)
    length  int64   samples or frames
    label   int64   class index (manifest class_names)
    key     bytes   the track key split lists use
    index   int64   position of the track in its part (seeds its training crops)
    crc32   int64   zlib.crc32 of x

and `manifest.json` records the class names, the front-end settings, the split (with
`<part>.txt` split lists beside it, so the split of every track is on record and usable
as `data.split: lists`), and per shard its record count, size and sha256.

Properties:
- parallel: shards are written by `--workers` processes;
- interruptible and resumable: a shard is written under a temporary name and renamed
  when complete and verified; then `.progress/<shard>.json` records it. Running the same
  command again skips recorded shards (their size is checked) and writes the rest.
  `manifest.json` is written last: its presence means the folder is complete;
- verified: every shard is read back before its rename; each record must parse, be the
  track that was written (key, index) and match the crc32 computed from the decoded clip;
- bad inputs are reported and skipped exactly as the loaders do (the same decoders and
  checks); more than `data.max_skip_fraction` of them stops with every reason in
  `skipped.json`.

Exit codes: 0 done; 2 bad arguments, recipe or data.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
import zlib
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_mgc.io import atomic_path, read_json, write_json

#: Version of the shard format (records and manifest); readers refuse another.
FORMAT = "keras-mgc-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PLAN = "plan.json"
PROGRESS = ".progress"
#: Stored dtype of a record's x per kind: float16 time-major mels, float32 audio samples, little-endian.
RECORD_DTYPE = {"mel": "<f2", "audio": "<f4"}
#: Records per shard when not given: ~100-200 MB files, what tf.data reads efficiently.
DEFAULT_RECORDS = {"mel": 1024, "audio": 64}

log = logging.getLogger("keras_mgc")


class ShardError(ValueError):
    """A shard folder or argument that cannot be used; the message names the path and the cause."""


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its file name and its tracks as (index, path, key, label id)."""

    file: str
    part: str
    tracks: tuple[tuple[int, str, str, int], ...]


# --------------------------------------------------------------------------- records


def record_bytes(clip: np.ndarray, kind: str) -> bytes:
    """The stored bytes of a decoded clip: float32 audio or float16 time-major mels, little-endian."""
    return np.ascontiguousarray(clip, dtype=RECORD_DTYPE[kind]).tobytes()


def _example(tf: Any, payload: bytes, length: int, label: int, key: str, index: int) -> bytes:
    def ints(v: int) -> Any:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    def raw(v: bytes) -> Any:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    features = {"x": raw(payload), "length": ints(length), "label": ints(label), "key": raw(key.encode()),
                "index": ints(index), "crc32": ints(zlib.crc32(payload))}
    # deterministic: map fields in a fixed order, so the same clips give the same bytes (and sha256)
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)


def parse_record(serialized: bytes) -> dict[str, Any]:
    """One record as a dict (x as bytes), in Python: for verification and evaluation reads."""
    import tensorflow as tf

    f = tf.train.Example.FromString(serialized).features.feature
    return {"x": f["x"].bytes_list.value[0], "length": f["length"].int64_list.value[0],
            "label": f["label"].int64_list.value[0], "key": f["key"].bytes_list.value[0].decode(),
            "index": f["index"].int64_list.value[0], "crc32": f["crc32"].int64_list.value[0]}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shard(job: ShardJob, out_dir: str, kind: str, sample_rate: int) -> dict[str, Any]:
    """Write, verify and publish one shard; returns its progress record (run in a worker process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from keras_mgc.audio import AudioError
    from keras_mgc.data.pipeline import decode_track, skip_reason, truncation_note

    target = Path(out_dir) / job.file
    written: list[tuple[int, str, int, int]] = []  # index, key, label, crc32
    skipped: list[dict[str, str]] = []
    flagged: list[dict[str, str]] = []
    with atomic_path(target) as tmp:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for index, path, key, label in job.tracks:
                notes: list[str] = []
                try:
                    clip = decode_track(path, kind == "mel", sample_rate, notes)
                except (AudioError, OSError) as exc:
                    skipped.append({"path": path, "key": key, "reason": skip_reason(exc)})
                    continue
                if notes:
                    flagged.append({"path": path, "key": key, "reason": truncation_note(notes)})
                payload = record_bytes(clip, kind)
                writer.write(_example(tf, payload, int(clip.shape[0]), label, key, index))
                written.append((index, key, label, zlib.crc32(payload)))
        _verify(tmp, written)
    return {"file": job.file, "part": job.part, "n_records": len(written), "bytes": target.stat().st_size,
            "sha256": _sha256(target), "keys": [w[1] for w in written], "labels": [w[2] for w in written],
            "skipped": skipped, "flagged": flagged}


def _verify(path: Path, written: list[tuple[int, str, int, int]]) -> None:
    """Read the shard back (TFRecord CRCs checked by TF) and compare every record with what was written."""
    import tensorflow as tf

    n = 0
    for n, raw in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator(), start=1):
        if n > len(written):
            raise ShardError(f"{path}: read back more records than written ({len(written)})")
        rec = parse_record(raw)
        index, key, label, crc = written[n - 1]
        if (rec["index"], rec["key"], rec["label"]) != (index, key, label):
            raise ShardError(f"{path}: record {n} reads back as {rec['key']!r} (index {rec['index']}), "
                             f"wrote {key!r} (index {index})")
        if zlib.crc32(rec["x"]) != crc or rec["crc32"] != crc:
            raise ShardError(f"{path}: record {n} ({key}) fails its checksum on read-back")
    if n != len(written):
        raise ShardError(f"{path}: read back {n} records, wrote {len(written)}")


# --------------------------------------------------------------------------- planning


def plan_jobs(parts: dict[str, list[tuple[str, str, int]]], records_per_shard: int, seed: int) -> list[ShardJob]:
    """Shards of each part: tracks (path, key, label id) sorted by key, permuted by `seed` (so every
    shard mixes classes), cut into files of `records_per_shard`; `index` is the permuted position."""
    jobs: list[ShardJob] = []
    for part, tracks in parts.items():
        ordered = sorted(tracks, key=lambda t: t[1])
        order = np.random.default_rng([seed, len(part)]).permutation(len(ordered))
        ordered = [ordered[i] for i in order]
        n_shards = max(1, math.ceil(len(ordered) / records_per_shard))
        for s in range(n_shards):
            chunk = ordered[s * records_per_shard:(s + 1) * records_per_shard]
            tracks_ = tuple((s * records_per_shard + i, path, key, label) for i, (path, key, label) in enumerate(chunk))
            jobs.append(ShardJob(f"{part}-{s:05d}-of-{n_shards:05d}.tfrecord", part, tracks_))
    return jobs


def _plan_fingerprint(jobs: list[ShardJob], settings: dict[str, Any]) -> str:
    h = hashlib.sha256(repr(sorted(settings.items())).encode())
    for job in jobs:
        h.update(job.file.encode())
        for t in job.tracks:
            h.update(repr(t).encode())
    return h.hexdigest()


def _done(out: Path, job: ShardJob) -> dict[str, Any] | None:
    """The progress record of a finished shard whose file is still there whole, else None."""
    record_path = out / PROGRESS / f"{job.file}.json"
    if not record_path.is_file():
        return None
    try:
        record = read_json(record_path)
    except (OSError, ValueError):
        return None
    shard = out / job.file
    if not shard.is_file() or shard.stat().st_size != record.get("bytes"):
        return None
    return record


# --------------------------------------------------------------------------- the command


def shard_dataset(parts: dict[str, list[tuple[str, str, int]]], out_dir: str | os.PathLike[str], *, kind: str,
                  class_names: list[str], sample_rate: int, frontend: dict[str, Any], source: dict[str, Any],
                  records_per_shard: int | None = None, workers: int = 1, seed: int = 0,
                  max_skip_fraction: float = 0.05, overwrite: bool = False) -> dict[str, Any]:
    """Write (or finish) the shards of `parts` (part -> [(path, key, label id)]) and the manifest.

    Returns the manifest. Raises ShardError for a folder holding another sharding (unless
    `overwrite`), and DatasetError when more than `max_skip_fraction` of the tracks are unusable.
    """
    from keras_mgc.data.datasets import MELON_MEL_BINS, DatasetError
    from keras_mgc.data.splits import write_split_list

    if kind not in ("mel", "audio"):
        raise ShardError(f"kind must be 'mel' or 'audio', got {kind!r}")
    records_per_shard = records_per_shard or DEFAULT_RECORDS[kind]
    if records_per_shard < 1 or workers < 1:
        raise ShardError(f"records_per_shard and workers must be >= 1, got {records_per_shard}, {workers}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ShardError(f"{out}: exists and is not a folder")
    if overwrite and out.exists():
        shutil.rmtree(out)
    jobs = plan_jobs(parts, records_per_shard, seed)
    settings = {"kind": kind, "sample_rate": sample_rate, "records_per_shard": records_per_shard, "seed": seed,
                "class_names": list(class_names)}
    fingerprint = _plan_fingerprint(jobs, settings)
    plan_path = out / PLAN
    if plan_path.is_file():
        previous = read_json(plan_path)
        if previous.get("fingerprint") != fingerprint:
            raise ShardError(f"{out} holds shards of another dataset, split or setting (plan.json differs); "
                             "use --overwrite or another --output")
        if (out / MANIFEST).is_file():
            print(f"{out}: already complete ({MANIFEST} present)", flush=True)
            return read_json(out / MANIFEST)
    elif out.is_dir() and any(out.iterdir()):
        raise ShardError(f"{out}: folder is not empty and holds no shard plan; use --overwrite or another --output")
    write_json(plan_path, {"fingerprint": fingerprint, **settings, "n_shards": len(jobs)})
    (out / PROGRESS).mkdir(parents=True, exist_ok=True)
    for leftover in [*out.glob(".*.tmp-*"), *(out / PROGRESS).glob(".*.tmp-*")]:  # cut short by an interruption
        leftover.unlink()

    records: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        done = _done(out, job)
        if done is not None:
            records[job.file] = done
        else:
            todo.append(job)
    if records:
        print(f"{out}: resuming, {len(records)} of {len(jobs)} shards already written", flush=True)
    started = time.perf_counter()
    n_tracks = sum(len(j.tracks) for j in todo)
    if todo:
        _run_jobs(todo, out, kind, sample_rate, workers, records)
    elapsed = time.perf_counter() - started

    skipped = [s for r in records.values() for s in r["skipped"]]
    flagged = [s for r in records.values() for s in r["flagged"]]
    total = sum(len(t) for t in parts.values())
    if skipped:
        write_json(out / "skipped.json", skipped)
        first = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
        log.warning("skipped %d unusable file(s): %s", len(skipped), first)
        if len(skipped) > max_skip_fraction * total:
            raise DatasetError(f"{len(skipped)} of {total} files are unusable, more than max_skip_fraction="
                               f"{max_skip_fraction}; first: {first} (all in {out / 'skipped.json'})")
    manifest_parts: dict[str, Any] = {}
    for part in parts:
        shards = [records[j.file] for j in jobs if j.part == part]
        keys = [k for r in shards for k in r["keys"]]
        write_split_list(out / f"{part}.txt", keys, f"{part} part of {out.name}, in shard order")
        manifest_parts[part] = {
            "n_records": len(keys), "keys": f"{part}.txt",
            "shards": [{k: r[k] for k in ("file", "n_records", "bytes", "sha256")} for r in shards]}
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind,
                "dtype": np.dtype(RECORD_DTYPE[kind]).name,
                "bins": MELON_MEL_BINS if kind == "mel" else None, "sample_rate": sample_rate, "frontend": frontend,
                "class_names": list(class_names), "source": source, "parts": manifest_parts,
                "records_per_shard": records_per_shard, "seed": seed,
                "skipped": skipped, "flagged": flagged,
                "write_seconds": round(elapsed, 3), "tracks_written_this_run": n_tracks}
    write_json(out / MANIFEST, manifest)
    return manifest


def _run_jobs(todo: list[ShardJob], out: Path, kind: str, sample_rate: int, workers: int,
              records: dict[str, dict[str, Any]]) -> None:
    """Write shards in `workers` processes, recording each as it completes (so an interruption
    loses at most the shards in flight)."""
    if workers == 1:  # in this process: no start-up cost, same code path per shard
        for job in todo:
            _record(out, job, write_shard(job, str(out), kind, sample_rate), records)
        return
    context = multiprocessing.get_context("spawn")  # TensorFlow is not fork-safe
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context) as pool:
        pending: dict[Future, ShardJob] = {pool.submit(write_shard, job, str(out), kind, sample_rate): job
                                           for job in todo}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    _record(out, pending.pop(future), future.result(), records)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _record(out: Path, job: ShardJob, record: dict[str, Any], records: dict[str, dict[str, Any]]) -> None:
    """Mark a published shard as done (after its rename: a kill in between only redoes it)."""
    write_json(out / PROGRESS / f"{job.file}.json", record)
    records[job.file] = record
    print(f"{job.file}: {record['n_records']} records"
          + (f", {len(record['skipped'])} skipped" if record["skipped"] else ""), flush=True)


# --------------------------------------------------------------------------- from a recipe


def parts_from_recipe(recipe: Any, work_dir: Path, fold: int | None) -> tuple[dict[str, list[tuple[str, str, int]]],
                                                                               list[str], dict[str, Any]]:
    """The tracks of each part of one fold of the recipe's split, its classes, and a description."""
    from keras_mgc.data import splits as S
    from keras_mgc.data.prepare import resolve_fold

    cfg = recipe.data
    index, description, name, fold, resolved = resolve_fold(cfg, work_dir, recipe.seed, fold)
    lookup = {c: i for i, c in enumerate(index.class_names)}
    parts = {p: [(t.path, t.key, lookup[t.label]) for t in resolved.parts[p]] for p in S.PARTS if resolved.parts[p]}
    source = {"description": description, "root": index.root, "layout": index.layout, "split": cfg.split,
              "fold": fold, "fold_name": name, "recipe": recipe.name,
              "missing": {p: list(k) for p, k in resolved.missing.items() if k},
              "left_out_at_discovery": [dict(s) for s in index.skipped]}
    return parts, list(index.class_names), source


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m keras_mgc.data.shard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="YAML recipe whose data section and front end to shard")
    parser.add_argument("--output", required=True, help="shard folder to write (or finish)")
    parser.add_argument("--data-dir", help="dataset folder (sets data.root)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override recipe keys")
    parser.add_argument("--fold", type=int, help="which fold of the split to shard (default: the recipe's first)")
    parser.add_argument("--records-per-shard", type=int,
                        help=f"records per file (default {DEFAULT_RECORDS['mel']} mels, {DEFAULT_RECORDS['audio']} audio)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="writer processes")
    parser.add_argument("--overwrite", action="store_true", help="delete the output folder first")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from keras_mgc.config import RecipeError
    from keras_mgc.data.datasets import DatasetError
    from keras_mgc.data.splits import SplitError
    from keras_mgc.train import recipe_from_args

    try:
        if args.records_per_shard is not None and args.records_per_shard < 1:
            raise ShardError(f"--records-per-shard must be >= 1, got {args.records_per_shard}")
        if args.workers < 1:
            raise ShardError(f"--workers must be >= 1, got {args.workers}")
        ns = argparse.Namespace(recipe=args.recipe, set=list(args.set), data_dir=args.data_dir, output_dir=None,
                                folds=None, allow_missing=False)
        recipe = recipe_from_args(ns)
        if recipe.data.shards is not None:
            raise ShardError("the recipe already reads shards (data.shards); shard from the dataset itself")
        out = Path(args.output)
        parts, class_names, source = parts_from_recipe(recipe, out.parent / f".{out.name}.work", args.fold)
        kind = "mel" if recipe.model.input == "mel" else "audio"
        manifest = shard_dataset(parts, out, kind=kind, class_names=class_names,
                                 sample_rate=recipe.model.frontend.sample_rate,
                                 frontend=recipe.model.frontend.model_dump(mode="json"), source=source,
                                 records_per_shard=args.records_per_shard, workers=args.workers,
                                 seed=recipe.seed, max_skip_fraction=recipe.data.max_skip_fraction,
                                 overwrite=args.overwrite)
    except (RecipeError, DatasetError, SplitError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{p} {v['n_records']} in {len(v['shards'])} shards" for p, v in manifest["parts"].items())
    print(f"{args.output}: {counts}; manifest {Path(args.output) / MANIFEST}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
