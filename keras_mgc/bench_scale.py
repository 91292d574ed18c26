"""Scale benchmark: the Melon input path (shards) against what the Melon models consume.

    python -m keras_mgc.bench_scale [--songs 1000] [--out bench_results/scale] [--keep]

On a synthetic Melon-shaped corpus (keras_mgc.data.synthetic_melon) of `--songs` songs and
one 10x larger, measures:
- shard write throughput (songs/s), 1 writer process on the small corpus, 2 on the large;
- shard read throughput (crops/s of 174-frame crops, batches of 256) on 1 and 2 tf.data threads;
- peak RSS of the input pipeline reading the same 40 batches of 256 crops from each corpus
  (flat = nothing proportional to the corpus is held);
- training consumption (crops/s, float32, batch 32, median of timed steps) and FLOPs per crop
  of the Melon ECAPA (#22, C=1024) and CCS+FSA (#26, s=256 c=768) models, in the same run;
- steps/s of a small model trained from the shards by 1 and by 2 workers on this machine.

Every measurement runs in a fresh process (`--worker`), as in keras_mgc.bench. Prints a
table and writes `<out>/scale.json`. Numbers from a shared 2-core machine are for the
record; the ratios within one run are what hold.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from keras_mgc import bench
from keras_mgc.bench import machine_info, peak_rss_mb

CROP_FRAMES = 174  # 44,356 samples at hop 256: the paper's 2.01 s crop
READ_BATCH = 256  # the Melon recipes' global batch
TRAIN_BATCH = 32
MELON_RECIPES = {"22 ECAPA C=1024": "melon_22_ecapa.yaml", "26 CCS+FSA s=256 c=768": "melon_26_ccs_fsa_s256_c768.yaml"}
SMALL_MODEL = ["model.channels=32", "model.ccs.stop=16", "model.fsa.enabled=false", "model.res2_scale=2",
               "model.se_channels=8", "model.attention_channels=16"]
REPO = Path(__file__).resolve().parents[1]
#: Small shards, so that even the small corpus has several per part (2 workers need 2 or more).
RECORDS_PER_SHARD = 64
RSS_BATCHES = 40


# --------------------------------------------------------------------------- workers


def work_read(job: dict[str, Any]) -> dict[str, Any]:
    """Crops/s out of ShardSet.training_dataset with `threads` tf.data threads, and the peak RSS
    after `batches` batches (default: one epoch)."""
    import tensorflow as tf

    from keras_mgc.data.shard_input import ShardSet

    shards = ShardSet(job["shards"])
    ds = shards.training_dataset("train", CROP_FRAMES, seed=1, global_batch=READ_BATCH,
                                 shuffle_buffer=job.get("shuffle_buffer", 1024))
    options = tf.data.Options()
    options.threading.private_threadpool_size = job["threads"]
    ds = ds.with_options(options)
    baseline = peak_rss_mb()
    steps = job.get("batches") or shards.steps_per_epoch("train", READ_BATCH)
    it = iter(ds)
    next(it)  # first batch: pipeline start-up
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    elapsed = time.perf_counter() - t0
    return {"crops_per_s": steps * READ_BATCH / elapsed, "batches": steps, "rss_before_mb": baseline,
            "peak_rss_mb": peak_rss_mb(), "records": shards.n_records("train")}


def work_train(job: dict[str, Any]) -> dict[str, Any]:
    """Training crops/s of a Melon recipe's model (float32, constant batch) and its FLOPs per crop."""
    import keras
    import tensorflow as tf

    from keras_mgc.timing import timings
    from keras_mgc.config import load_recipe
    from keras_mgc.data.datasets import MELON_MEL_BINS
    from keras_mgc.models import build_model, count_params
    from keras_mgc.models.flops import count_flops

    recipe = load_recipe(REPO / "recipes" / job["recipe"], ["data.root=."])
    keras.utils.set_random_seed(0)
    model = build_model(recipe.model, 28)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    mels = np.random.default_rng(0).standard_normal((TRAIN_BATCH, CROP_FRAMES, MELON_MEL_BINS))
    x = tf.constant(mels.astype(np.float32))
    y = tf.constant(np.arange(TRAIN_BATCH) % 28)
    model.train_on_batch(x, y)
    step = timings(lambda: model.train_on_batch(x, y), job.get("steps", 3), warmup=1)
    return {"crops_per_s": TRAIN_BATCH / step["median"], "step_s": step["median"], "params": count_params(model),
            "gflop_per_crop": count_flops(model, CROP_FRAMES)["total"] / 1e9, "peak_rss_mb": peak_rss_mb()}


WORKERS = {"read": work_read, "train": work_train}


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    return bench.run_worker(job, module="keras_mgc.bench_scale")


# --------------------------------------------------------------------------- orchestration


def _shard(corpus: Path, out: Path, workers: int) -> dict[str, Any]:
    from keras_mgc.data.shard import main as shard_main

    t0 = time.perf_counter()
    code = shard_main(["--recipe", str(REPO / "recipes" / "melon_22_ecapa.yaml"), "--data-dir", str(corpus),
                       "--output", str(out), "--workers", str(workers), "--overwrite",
                       "--records-per-shard", str(RECORDS_PER_SHARD)])
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"sharding {corpus} failed ({code})")
    manifest = json.loads((out / "manifest.json").read_text())
    songs = sum(p["n_records"] for p in manifest["parts"].values())
    return {"songs": songs, "seconds": elapsed, "songs_per_s": songs / elapsed, "workers": workers,
            "bytes": sum(s["bytes"] for p in manifest["parts"].values() for s in p["shards"])}


def _steps_per_s(shards: Path, workers: int, out: Path) -> dict[str, Any]:
    """Steps/s of epoch 2 of a small model trained from the shards (Keras's own per-step time)."""
    args = ["--recipe", str(REPO / "recipes" / "melon_22_ecapa.yaml"), "--set", f"data.shards={shards}",
            "train.epochs=2", "train.steps_per_epoch=10", f"train.batch_size={TRAIN_BATCH}", "train.verbose=2",
            "train.distribute=multi_worker", "eval.modes=[whole]", "eval.headline=whole", *SMALL_MODEL,
            "--output-dir", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if workers == 1:
        proc = subprocess.run([sys.executable, "-m", "keras_mgc.train", *args], env=env, capture_output=True,
                              text=True)
        log = proc.stdout + proc.stderr
    else:
        proc = subprocess.run([sys.executable, "-m", "keras_mgc.distributed", "launch", "--workers", str(workers),
                               "--max-restarts", "0", "--log-dir", str(out / "logs"), "--", *args], env=env,
                              capture_output=True, text=True)
        log = (out / "logs" / "worker0.attempt0.log").read_text() if (out / "logs").is_dir() else proc.stdout
    match = re.findall(r"10/10 - \S+ - (\d+(?:\.\d+)?)(m?s)/step", log)
    if proc.returncode != 0 or len(match) < 2:
        return {"error": log[-500:]}
    value, unit = match[-1]
    step_s = float(value) / (1000 if unit == "ms" else 1)
    return {"workers": workers, "step_s": step_s, "steps_per_s": 1 / step_s,
            "crops_per_s": TRAIN_BATCH / step_s}


def run(songs: int, out: Path, keep: bool) -> dict[str, Any]:
    from keras_mgc.data.synthetic_melon import make_synthetic_melon

    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    sizes = {"small": songs, "large": 10 * songs}
    results: dict[str, Any] = {"machine": machine_info(), "songs": sizes}
    for name, n in sizes.items():
        t0 = time.perf_counter()
        make_synthetic_melon(work / f"melon_{name}", n, seed=1)
        results.setdefault("generate_s", {})[name] = time.perf_counter() - t0
        print(f"corpus {name}: {n} songs in {results['generate_s'][name]:.0f} s", flush=True)
    results["write"] = {"small": _shard(work / "melon_small", work / "shards_small", 1),
                        "large": _shard(work / "melon_large", work / "shards_large", 2)}
    print(f"write: {results['write']}", flush=True)
    results["read"] = {f"{t} thread(s)": run_worker({"kind": "read", "shards": str(work / "shards_large"),
                                                      "threads": t, "batches": 30}) for t in (1, 2)}
    # The same number of batches from both corpora (10 epochs of the small one, ~1.3 of the
    # large one), so both pipelines reach their steady state: only the corpus size differs.
    results["rss"] = {name: run_worker({"kind": "read", "shards": str(work / f"shards_{name}"), "threads": 2,
                                        "batches": RSS_BATCHES}) for name in sizes}
    print(f"read: {results['read']}\nrss: {results['rss']}", flush=True)
    results["train"] = {name: run_worker({"kind": "train", "recipe": recipe}) for name, recipe in MELON_RECIPES.items()}
    print(f"train: {results['train']}", flush=True)
    results["workers"] = {str(w): _steps_per_s(work / "shards_small", w, work / f"run_{w}w") for w in (1, 2)}
    print(f"workers: {results['workers']}", flush=True)
    (out / "scale.json").write_text(json.dumps(results, indent=2))
    print(report(results))
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return results


def report(r: dict[str, Any]) -> str:
    """The Markdown table of BENCHMARKS.md's Scale section."""
    def g(d: dict[str, Any], key: str, digits: int = 0) -> str:
        return "error" if "error" in d else f"{d[key]:,.{digits}f}"

    rows = [
        "| measurement | value |", "|---|---|",
        f"| shard write, {r['write']['small']['songs']:,} songs, 1 process | {g(r['write']['small'], 'songs_per_s')} songs/s |",
        f"| shard write, {r['write']['large']['songs']:,} songs, 2 processes | {g(r['write']['large'], 'songs_per_s')} songs/s |",
    ]
    for k, v in r["read"].items():
        rows.append(f"| shard read, {k} (174-frame crops, batch 256) | {g(v, 'crops_per_s')} crops/s |")
    for k, v in r["rss"].items():
        rows.append(f"| input pipeline peak RSS, {v.get('batches', 0)} batches from the {k} corpus "
                    f"({v.get('records', 0):,} train records) "
                    f"| {g(v, 'peak_rss_mb')} MiB (before reading: {g(v, 'rss_before_mb')} MiB) |")
    for k, v in r["train"].items():
        rows.append(f"| training consumption, #{k}, float32 CPU, batch {TRAIN_BATCH} | {g(v, 'crops_per_s', 1)} crops/s "
                    f"({g(v, 'gflop_per_crop', 2)} GFLOP/crop forward) |")
    for k, v in r["workers"].items():
        rows.append(f"| small model from shards, {k} worker(s), batch {TRAIN_BATCH} | {g(v, 'steps_per_s', 2)} steps/s |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_mgc.bench_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=1000, help="small corpus; the large one is 10x")
    parser.add_argument("--out", default="bench_results/scale")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpora and shards")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(1)
        print(json.dumps(WORKERS[job["kind"]](job)), flush=True)
        return 0
    if args.songs < 100:
        print("error: --songs must be at least 100", file=sys.stderr)
        return 2
    run(args.songs, Path(args.out), args.keep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
