"""Benchmarks: what keras-mgc costs to train and to run, on this machine, against its limit.

    python -m keras_mgc.bench [--quick] [--configs 8,15,small] [--out bench_results]
        [--sections peak,flops,inference,training,pipeline] [--repeats 5]

Every measurement runs in a fresh worker process (`--worker`), so thread counts are set
before TensorFlow starts and peak memory (VmHWM) belongs to that measurement alone.
Prints a table and writes `<out>/bench.json` (machine, versions, every number).

Sections:
- peak: this machine's float32 matmul rate (TF, 1 thread and all threads), the yardstick;
- flops: FLOPs per 30 s clip of each configuration (counted on its TF graph);
- inference: batch-1 latency of one 30 s clip and of 16-crop TTA for Keras, SavedModel,
  TFLite float32 / float16 / dynamic-range int8 / int8 (XNNPACK) and ONNX Runtime, 1 and
  all threads, median and spread (p10-p90) after warm-up, achieved GFLOP/s vs the peak;
- training: crops per second (batch 64 of 44,356-sample crops) from the median of timed
  training steps, float32, plus mixed_bfloat16 where the CPU has BF16 units and
  mixed_float16 on a GPU; peak memory;
- pipeline: crops per second out of the tf.data pipeline from audio files on disk, first
  epoch (decoding included) and cached.

`--quick` runs a tiny configuration only, with few repeats: a smoke test for CI. It
asserts nothing about speed; numbers from a shared machine are for the record, ratios
within one run are what hold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from keras_mgc import presets
from keras_mgc.contract import DEFAULT_CROP_SAMPLES, DEFAULT_SAMPLE_RATE
from keras_mgc.environment import cpu_flags
from keras_mgc.timing import timings

CLIP_SAMPLES = 30 * DEFAULT_SAMPLE_RATE
CROP = DEFAULT_CROP_SAMPLES
TTA_CROPS = 16

#: Benchmarked configurations (`--configs` names -> keras_mgc.presets): the paper's #8 and #15
#: and the quickstart's CPU-sized model; "tiny" for --quick only (tracing it takes seconds).
CONFIGS: dict[str, str] = {"8": "paper_08_ecapa", "15": "paper_15_ccs_fsa_s512_c1024", "small": "quickstart",
                           "tiny": "tiny"}
#: The authors' PyTorch models on the reference CPU (BUILD_NOTES.md, "Design facts"): seconds per 30 s clip,
#: seconds for 16-crop TTA, training crops per second (batch 64).
REFERENCE = {"8": {"clip_s": 0.55, "tta_s": 0.65, "train_crops_s": 6.5},
             "15": {"clip_s": 1.05, "tta_s": 1.21, "train_crops_s": 4.9}}
RUNTIMES = ("keras", "saved_model", "tflite_float32", "tflite_float16", "tflite_dynamic_int8", "tflite_int8", "onnx")


# --------------------------------------------------------------------------- helpers


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info() -> dict[str, Any]:
    from keras_mgc.environment import environment

    info = environment()
    flags = cpu_flags()
    info["cpu_features"] = sorted(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags)
    for module in ("ai_edge_litert", "onnxruntime", "tf2onnx"):
        try:
            mod = __import__(module)
            info[module] = getattr(mod, "__version__", "installed")
        except ImportError:
            info[module] = None
    return info


def _threads(n: str | int) -> int:
    return os.cpu_count() or 1 if n == "all" else int(n)


def _model(name: str, seed: int = 0):
    import keras

    from keras_mgc.models import build_model

    keras.utils.set_random_seed(seed)
    return build_model(presets.model_config(CONFIGS[name]), num_classes=10)


def _audio(samples: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((batch, samples)) * 0.1).astype(np.float32)


# --------------------------------------------------------------------------- workers


def work_peak(job: dict[str, Any]) -> dict[str, Any]:
    """float32 matmul GFLOP/s of TF on `threads` threads (2048^3, best of repeats)."""
    import tensorflow as tf

    n = 2048
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    matmul = tf.function(lambda: tf.matmul(a, b))
    t = timings(lambda: matmul().numpy(), job.get("repeats", 10), warmup=3)
    return {"gflops": 2 * n**3 / t["min"] / 1e9, "gflops_median": 2 * n**3 / t["median"] / 1e9}


def work_flops(job: dict[str, Any]) -> dict[str, Any]:
    from keras_mgc.models import count_params
    from keras_mgc.models.flops import count_flops

    model = _model(job["config"])
    clip = count_flops(model, CLIP_SAMPLES)
    tta = count_flops(model, CROP, batch=TTA_CROPS)
    return {"params": count_params(model), "clip_gflop": clip["total"] / 1e9, "clip_frontend_gflop": clip["frontend"] / 1e9,
            "tta_gflop": tta["total"] / 1e9}


def work_keras(job: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf

    model = _model(job["config"])
    spec = tf.TensorSpec((None, None), tf.float32)
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec], autograph=False)
    out = {}
    for name, x in (("clip", _audio(CLIP_SAMPLES)), ("tta", _audio(CROP, TTA_CROPS))):
        x = tf.constant(x)
        out[name] = timings(lambda: fn(x).numpy(), job["repeats"], warmup=2)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def work_training(job: dict[str, Any]) -> dict[str, Any]:
    """Crops per second of Keras training steps on one constant batch (input cost excluded).

    Each step is timed on its own (`train_on_batch`, the same compiled step as `fit`) and the
    median is reported: one slow step from a busy neighbour on a shared machine must not set
    the figure.
    """
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_global_policy(job["precision"])
    model = _model(job["config"])
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batch = job.get("batch", 64)
    x = tf.constant(_audio(CROP, batch))
    y = tf.constant(np.arange(batch) % 10)
    t0 = time.perf_counter()
    model.train_on_batch(x, y)  # trace
    first = time.perf_counter() - t0
    step = timings(lambda: model.train_on_batch(x, y), job.get("steps", 5), warmup=1)
    return {"crops_per_s": batch / step["median"], "step_s": step, "first_step_s": first,
            "peak_rss_mb": peak_rss_mb()}


def work_pipeline(job: dict[str, Any]) -> dict[str, Any]:
    """Crops per second out of the training pipeline from audio files: first epoch and cached."""
    from keras_mgc.data.datasets import discover
    from keras_mgc.data.pipeline import ClipStore, CropSampler, training_dataset
    from keras_mgc.data.synthetic import make_synthetic_dataset

    root = job.get("data_dir")
    if not root or not Path(root).is_dir():
        root = make_synthetic_dataset(Path(job["work_dir"]) / "synthetic", clips_per_class=job["clips_per_class"],
                                      seconds=30.0)
    index = discover(root)
    labels = index.label_ids()
    out: dict[str, Any] = {"data": str(root), "files": len(index)}
    for cache in ("memory", "disk"):
        cache_dir = Path(job["work_dir"]) / "cache"
        t0 = time.perf_counter()
        store = ClipStore(index.tracks, cache=cache, cache_dir=cache_dir if cache == "disk" else None).prepare()
        prepare = time.perf_counter() - t0
        sampler = CropSampler(store.lengths, CROP, data_cycle=8, seed=0, global_batch=64)
        ds = training_dataset(store, labels, sampler)
        n_batches = sampler.steps_per_epoch
        t0 = time.perf_counter()
        for _ in ds.take(n_batches):
            pass
        epoch = time.perf_counter() - t0
        crops = n_batches * 64
        out[cache] = {"prepare_s": prepare, "crops": crops, "cached_crops_per_s": crops / epoch,
                      "first_epoch_crops_per_s": crops / (epoch + prepare)}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def work_artifacts(job: dict[str, Any]) -> dict[str, Any]:
    """Export the configuration (random weights: latency does not depend on them) with `export`.

    The export's own accuracy thresholds are switched off here: they mean something only for
    a trained model (see the export report of a trained run for agreement numbers).
    """
    from keras_mgc.export.run import ExportOptions, run_export
    from keras_mgc.export.trained_model import ExportSource

    work = Path(job["work_dir"]) / job["config"]
    checkpoint = work / "model.keras"
    work.mkdir(parents=True, exist_ok=True)
    _model(job["config"]).save(checkpoint)
    source = ExportSource(checkpoint=checkpoint, model_config=presets.model_config(CONFIGS[job["config"]]),
                          class_names=[f"class_{i}" for i in range(10)],
                          recipe={"name": f"bench_{job['config']}", "data": {"crop_samples": CROP}}, recipe_path=None)
    audio = [job["data_dir"]] if job.get("data_dir") else None
    opts = ExportOptions(source=source, out=work / "export", eval_audio=audio, representative_audio=audio,
                         eval_clips=4, eval_crops_per_clip=1, representative_crops=16, latency_runs=0,
                         max_abs_diff=1.0, min_agreement={k: 0.0 for k in ("float32", "float16", "dynamic_int8", "int8")})
    result = run_export(opts, log=lambda msg: None)
    files = {"saved_model": f"saved_model/bench_{job['config']}/1", "onnx": "onnx/model.onnx"}
    files.update({f"tflite_{p}": f"tflite/model_{p}.tflite" for p in ("float32", "float16", "dynamic_int8", "int8")})
    out = {name: str(result.location / rel) for name, rel in files.items() if (result.location / rel).exists()}
    out["sizes_mb"] = {a["name"]: (a["size_bytes"] or 0) / 2**20 for a in result.report.get("artifacts", [])}
    return out


def work_runtime(job: dict[str, Any]) -> dict[str, Any]:
    """Latency of one exported artifact in its own runtime (export's runners), 30 s clip and TTA."""
    from keras_mgc.export import verify

    runtime, threads = job["runtime"], _threads(job["threads"])
    path = job["artifacts"].get(runtime)
    if path is None:
        return {"error": f"no {runtime} artifact was exported"}
    if runtime == "saved_model":
        runner = verify.SavedModelRunner(Path(path))
        run = lambda x: runner.run("waveform", x)  # noqa: E731  (TF threads set for this process)
    elif runtime == "onnx":
        runner = verify.ONNXRunner({"waveform": Path(path)})
        run = lambda x: runner.run_threads("waveform", x, threads)  # noqa: E731
    else:
        runner = verify.TFLiteRunner(Path(path))
        run = lambda x: runner.run_threads("waveform", x, threads)  # noqa: E731
    out = {}
    for name, x in (("clip", _audio(CLIP_SAMPLES)), ("tta", _audio(CROP, TTA_CROPS))):
        out[name] = timings(lambda: run(x), job["repeats"], warmup=2)
    out["peak_rss_mb"] = peak_rss_mb()
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    return out


WORKERS = {"peak": work_peak, "flops": work_flops, "keras": work_keras, "training": work_training,
           "pipeline": work_pipeline, "artifacts": work_artifacts, "runtime": work_runtime}


def run_worker(job: dict[str, Any], timeout: int = 3600, module: str = "keras_mgc.bench") -> dict[str, Any]:
    """Run one measurement in a fresh process with the job's thread count; its JSON result.

    `module` is the benchmark module whose `--worker` runs the job (keras_mgc.bench_scale too).
    """
    # Threads are set inside the worker (TF's config, LiteRT's and ONNX Runtime's options).
    # Not OMP_NUM_THREADS: with it set, TF's oneDNN kernels trained #8 at 6.3 crops/s
    # instead of 11.6 on this machine.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", module, "--worker", json.dumps(job)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:500]}
    return json.loads(lines[-1])


def _worker_main(spec: str) -> int:
    job = json.loads(spec)
    # TFLite and ONNX Runtime workers never import TensorFlow, so their peak memory is what a
    # device running that artifact needs (LiteRT or ORT, NumPy, the model), not TF's ~600 MB.
    if not (job["kind"] == "runtime" and job["runtime"] != "saved_model"):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(_threads(job.get("threads", "all")))
        tf.config.threading.set_inter_op_parallelism_threads(job.get("inter_op", 1))
    print(json.dumps(WORKERS[job["kind"]](job)), flush=True)
    return 0


# --------------------------------------------------------------------------- orchestration


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_mgc.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small configuration, few repeats (CI smoke test)")
    parser.add_argument("--configs", help="comma-separated from: " + ", ".join(CONFIGS))
    parser.add_argument("--sections", default="peak,flops,inference,training,pipeline")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--data-dir", help="audio folder for the pipeline section (default: generated clips)")
    parser.add_argument("--out", default="bench_results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker_main(args.worker)

    configs = (args.configs or ("tiny" if args.quick else "8,15,small")).split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    sections = set(args.sections.split(","))
    runtimes = args.runtimes.split(",")
    repeats = args.repeats or (3 if args.quick else 7)
    thread_counts = ["all"] if args.quick else ["1", "all"]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"command": " ".join(["python -m keras_mgc.bench", *(argv or sys.argv[1:])]),
                               "machine": machine_info(), "quick": args.quick, "configs": {}}
    print(f"machine: {results['machine']['cpu']}, {results['machine']['cpu_count']} cores, "
          f"features {results['machine']['cpu_features']}, TF {results['machine']['tensorflow']}", flush=True)
    if "peak" in sections:
        results["peak"] = {t: run_worker({"kind": "peak", "threads": t, "repeats": 5 if args.quick else 10})
                           for t in thread_counts}
        print("float32 matmul peak: " + ", ".join(f"{t} thread(s) {_fmt(r.get('gflops'), 1)} GFLOP/s"
                                                  for t, r in results["peak"].items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="kmgc-bench-") as work:
        for name in configs:
            entry: dict[str, Any] = results["configs"].setdefault(name, {"preset": CONFIGS[name], "model": presets.get(CONFIGS[name]).model})
            if "flops" in sections:
                entry["flops"] = run_worker({"kind": "flops", "config": name})
            if "inference" in sections:
                entry["inference"] = _inference(name, runtimes, thread_counts, repeats, work, args.data_dir)
            if "training" in sections:
                entry["training"] = _training(name, args.quick)
        if "pipeline" in sections:
            results["pipeline"] = run_worker({"kind": "pipeline", "work_dir": work, "data_dir": args.data_dir,
                                              "clips_per_class": 4 if args.quick else 20})
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report(results)
    (out_dir / "bench.md").write_text(table + "\n")
    print(table)
    print(f"\nwritten: {out_dir / 'bench.json'}, {out_dir / 'bench.md'}")
    return 0


def _inference(name: str, runtimes: list[str], thread_counts: list[str], repeats: int, work: str,
               data_dir: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    artifacts = None
    for runtime in runtimes:
        for threads in thread_counts:
            if runtime == "keras":
                res = run_worker({"kind": "keras", "config": name, "threads": threads, "repeats": repeats})
            else:
                if artifacts is None:
                    artifacts = run_worker({"kind": "artifacts", "config": name, "work_dir": work,
                                            "data_dir": data_dir})
                if "error" in artifacts:
                    res = {"error": f"artifacts: {artifacts['error']}"}
                else:
                    res = run_worker({"kind": "runtime", "runtime": runtime, "config": name, "threads": threads,
                                      "repeats": repeats, "artifacts": artifacts})
            out.setdefault(runtime, {})[threads] = res
            print(f"  {name} {runtime:<20} threads={threads:<3} " + (
                f"clip {_fmt(res['clip']['median'])} s, TTA {_fmt(res['tta']['median'])} s"
                if "clip" in res else f"error: {res.get('error')}"), flush=True)
    return out


def _training(name: str, quick: bool) -> dict[str, Any]:
    import tensorflow as tf  # only to ask what devices exist

    precisions = ["float32"]
    if "avx512_bf16" in cpu_flags() or "amx_bf16" in cpu_flags():
        precisions.append("mixed_bfloat16")
    if tf.config.list_physical_devices("GPU"):
        precisions.append("mixed_float16")
    out = {}
    for precision in precisions:
        job = {"kind": "training", "config": name, "precision": precision, "steps": 2 if quick else 5,
               "batch": 16 if quick else 64}
        out[precision] = run_worker(job)
        res = out[precision]
        print(f"  {name} training {precision:<15} " + (f"{_fmt(res['crops_per_s'], 2)} crops/s" if "crops_per_s" in res
                                                        else f"error: {res.get('error')}"), flush=True)
    return out


def report(results: dict[str, Any]) -> str:
    """The benchmark table (Markdown)."""
    peak = {t: r.get("gflops") for t, r in results.get("peak", {}).items()}
    lines = [f"Machine: {results['machine']['cpu']}, {results['machine']['cpu_count']} cores "
             f"({', '.join(results['machine']['cpu_features'])}); TensorFlow {results['machine']['tensorflow']}, "
             f"LiteRT {results['machine'].get('ai_edge_litert')}, ONNX Runtime {results['machine'].get('onnxruntime')}.",
             ""]
    if peak:
        lines += ["float32 matmul peak (TF, 2048^3): " + ", ".join(f"{t} thread(s) {_fmt(v, 1)} GFLOP/s"
                                                                  for t, v in peak.items()), ""]
    lines += ["| config | runtime | threads | 30 s clip, s (p10-p90) | 16-crop TTA, s | GFLOP/s | % of fp32 peak "
              "| authors' PyTorch / this | peak RSS MiB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in results["configs"].items():
        gflop = (entry.get("flops") or {}).get("clip_gflop")
        ref = REFERENCE.get(name, {})
        for runtime, by_threads in (entry.get("inference") or {}).items():
            for threads, res in by_threads.items():
                if "clip" not in res:
                    lines.append(f"| {name} | {runtime} | {threads} | error: {res.get('error', '')[:60]} | | | | | |")
                    continue
                clip = res["clip"]
                rate = gflop / clip["median"] if gflop else None
                pct = 100 * rate / peak[threads] if rate and peak.get(threads) else None
                # The reference ran on 2 threads: compare like with like only.
                speedup = ref["clip_s"] / clip["median"] if ref and _threads(threads) == 2 else None
                lines.append(f"| {name} | {runtime} | {threads} | {_fmt(clip['median'])} ({_fmt(clip['p10'])}-{_fmt(clip['p90'])}) "
                             f"| {_fmt(res['tta']['median'])} | {_fmt(rate, 1)} | {_fmt(pct, 0)} | "
                             f"{'-' if speedup is None else f'{speedup:.2f}x'} | {_fmt(res.get('peak_rss_mb'), 0)} |")
    lines += ["", "| config | params | GFLOP / 30 s clip (front end) | training precision | crops/s | vs authors | peak RSS MiB |",
              "|---|---|---|---|---|---|---|"]
    for name, entry in results["configs"].items():
        flops = entry.get("flops") or {}
        ref = REFERENCE.get(name, {}).get("train_crops_s")
        for precision, res in (entry.get("training") or {"-": {}}).items():
            cps = res.get("crops_per_s")
            lines.append(f"| {name} | {flops.get('params', '-'):,} | {_fmt(flops.get('clip_gflop'), 1)} "
                         f"({_fmt(flops.get('clip_frontend_gflop'), 1)}) | {precision} | {_fmt(cps, 2)} | "
                         f"{'-' if not (cps and ref) else f'{cps / ref:.2f}x'} | {_fmt(res.get('peak_rss_mb'), 0)} |"
                         if isinstance(flops.get('params'), int) else
                         f"| {name} | - | - | {precision} | {_fmt(cps, 2)} | - | {_fmt(res.get('peak_rss_mb'), 0)} |")
    lines += ["", "GFLOP/s counts float FLOPs of the graph over the time taken; int8 rows run on VNNI integer "
              "units, so their share of the float32 peak can exceed 100%. The authors' PyTorch figures "
              "(BUILD_NOTES.md) were taken on 2 threads of the same CPU: 0.55 s / 6.5 crops/s (#8), 1.05 s / "
              "4.9 crops/s (#15)."]
    pipe = results.get("pipeline")
    if pipe and "memory" in pipe:
        lines += ["", f"Input pipeline ({pipe['files']} files from {pipe['data']}): "
                  f"first epoch (decode included) {pipe['memory']['first_epoch_crops_per_s']:.0f} crops/s, cached "
                  f"{pipe['memory']['cached_crops_per_s']:.0f} crops/s in memory, "
                  f"{pipe['disk']['cached_crops_per_s']:.0f} crops/s from the disk cache."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
