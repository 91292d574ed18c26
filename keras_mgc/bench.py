"""Benchmarks: what keras-mgc costs to train and to run, on this machine, against its limit.

    python -m keras_mgc.bench [--quick] [--configs 8,15,small] [--out bench_results]
        [--sections peak,flops,inference,training,pipeline,frontend,frontend_share,tagging]
        [--repeats 5] [--song FILE]

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
  epoch (decoding included) and cached;
- frontend: the log-mel front end alone on the 30 s clip, as Keras runs it (FFT, float64) and
  as the TFLite artifacts run it (float32 folded DFT matmul), each beside the other spectrum
  path for comparison (Keras: matmul; TFLite: the builtin RFFT2D); the report gives its share
  of each configuration's latency measured in the same run (inference section);
- frontend_share: each configuration's whole TFLite float32 model on the 30 s clip with the
  front end it had before issue 14 (`spectrum="dense"`, the unfolded DFT table) and with the
  one the artifacts use now (`"matmul"`, folded), beside the network alone (the log-mel entry
  point), timed round-robin in one process: before/after speed-up and the front end's share
  of the latency, same run;
- tagging: whole-song tagging throughput (seconds of audio per second, decoding included) of
  `keras_mgc.tag.Tagger` with every TFLite precision and the task-ready models (window 2.01 s,
  hop 1 s), on `--song` (default: a generated 3-minute signal).

The inference and training sections also time the authors' PyTorch model of each
configuration in the same run, on the same threads and batch (`authors_pytorch` rows:
tests/torch_reference.py, which gives outputs identical to the authors' model.py), so every
"authors' PyTorch / this" ratio is same-run. They need torch (the `parity` extra) and a
source checkout, and are skipped with the reason otherwise.

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
from keras_mgc.timing import round_robin_timings, timings

CLIP_SAMPLES = 30 * DEFAULT_SAMPLE_RATE
CROP = DEFAULT_CROP_SAMPLES
TTA_CROPS = 16

#: Benchmarked configurations (`--configs` names -> keras_mgc.presets): the paper's #8 and #15
#: and the quickstart's CPU-sized model; "tiny" for --quick only (tracing it takes seconds).
CONFIGS: dict[str, str] = {"8": "paper_08_ecapa", "15": "paper_15_ccs_fsa_s512_c1024", "small": "quickstart",
                           "tiny": "tiny"}
#: Front-end timings: the path each runtime's models use first, then the other for comparison.
FRONTEND_PATHS = {"keras": ("fft", "matmul"), "tflite_float32": ("matmul", "fft", "dense")}
#: The frontend_share section's graphs: the artifacts' front end before issue 14, now, and none.
SHARE_GRAPHS = {"before": "dense", "after": "matmul", "network": None}
#: Why the authors' PyTorch rows are missing when they are (set by the run).
TORCH_MISSING = "torch is not installed (the test-only extra: pip install -e '.[parity]')"
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


def _torch_reference(name: str):
    """The PyTorch reference (tests/torch_reference.py) of a configuration, or a reason why not.

    It is the authors' model (identical outputs to their model.py, BUILD_NOTES.md "Parity with
    the authors' PyTorch models") with their float32 torchaudio front end.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, TORCH_MISSING
    root = Path(__file__).resolve().parents[1]
    if not (root / "tests" / "torch_reference.py").is_file():
        return None, f"tests/torch_reference.py not found beside {root / 'keras_mgc'} (run from a source checkout)"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tests.torch_reference import reference_for

    try:
        return reference_for(presets.model_config(CONFIGS[name])), None
    except ValueError as exc:
        return None, f"no PyTorch reference for config {name}: {exc}"


def work_torch(job: dict[str, Any]) -> dict[str, Any]:
    """The authors' PyTorch model of a configuration, timed as the Keras rows are, in the same run.

    mode "inference": batch-1 latency of a 30 s clip and of 16-crop TTA (eval mode, no_grad);
    mode "training": crops per second, median of timed steps of torch.optim.Adam(lr 1e-3,
    weight_decay 1e-5) with cross-entropy on one constant batch, as their training loop.
    """
    model, reason = _torch_reference(job["config"])
    if model is None:
        return {"skipped": reason}
    import torch

    torch.set_num_threads(_threads(job["threads"]))
    torch.manual_seed(0)
    out: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if job["mode"] == "inference":
        model.eval()
        with torch.no_grad():
            for name, x in (("clip", _audio(CLIP_SAMPLES)), ("tta", _audio(CROP, TTA_CROPS))):
                x = torch.from_numpy(x)
                out[name] = timings(lambda: model(x).softmax(-1), job["repeats"], warmup=2)
    else:
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
        batch = job.get("batch", 64)
        x, y = torch.from_numpy(_audio(CROP, batch)), torch.arange(batch) % 10

        def step() -> None:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

        t = timings(step, job.get("steps", 5), warmup=1)
        out.update(crops_per_s=batch / t["median"], step_s=t)
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

    from keras_mgc.config import OptimizerConfig
    from keras_mgc.optimizers import make_optimizer

    keras.mixed_precision.set_global_policy(job["precision"])
    model = _model(job["config"])
    model.compile(optimizer=make_optimizer(OptimizerConfig()),  # the paper recipes' adam_l2
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


def work_frontend(job: dict[str, Any]) -> dict[str, Any]:
    """The front end alone on a 30 s clip in one runtime ("keras" or "tflite_float32") and spectrum path."""
    import tensorflow as tf

    from keras_mgc.frontend import LogMelSpectrogram

    x = _audio(CLIP_SAMPLES)
    if job["runtime"] == "keras":
        layer = LogMelSpectrogram(spectrum=job["spectrum"])  # float64, as Keras trains and evaluates
        fn = tf.function(layer, input_signature=[tf.TensorSpec((None, None), tf.float32)], autograph=False)
        return {"clip": timings(lambda: fn(x).numpy(), job["repeats"], warmup=2)}
    layer = LogMelSpectrogram(dft_precision="float32", spectrum=job["spectrum"])
    interpreter = tflite_interpreter(layer, (None, None), x, _threads(job["threads"]))
    return {"clip": timings(interpreter.invoke, job["repeats"], warmup=2)}


def tflite_interpreter(fn: Any, input_shape: tuple, x: np.ndarray, threads: int) -> Any:
    """`fn` (a Keras model or layer, or a TF-traceable function) as a builtin-ops TFLite float32
    interpreter on `threads` threads, declared with `input_shape` (None = free) and holding `x`.

    Converted without a trackable object, so the converter freezes the weights as the exporter's
    SavedModel route does (with one it keeps them as resource variables, 2-3x slower).
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    concrete = tf.function(lambda w: fn(w), autograph=False).get_concrete_function(
        tf.TensorSpec(input_shape, tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert(), num_threads=threads)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    return interpreter


def work_frontend_share(job: dict[str, Any]) -> dict[str, Any]:
    """Whole-model TFLite float32 latency (30 s clip) per front end, and the network alone, round-robin.

    The graphs are converted as the exporter converts them (free batch and length, builtin ops,
    the input resized to the clip), so "after" is the float32 artifact's graph.
    """
    from keras_mgc.models.classifier import with_input

    cfg = presets.model_config(CONFIGS[job["config"]])
    model = _model(job["config"])
    x = _audio(CLIP_SAMPLES)
    mel_shape = (1, CLIP_SAMPLES // cfg.frontend.hop_length + 1, cfg.frontend.n_mels)
    graphs = {name: (with_input(model, "mel", cfg), (None, None, cfg.frontend.n_mels), np.zeros(mel_shape, np.float32))
              if spectrum is None else
              (with_input(model, "waveform", cfg, dft_precision="float32", spectrum=spectrum), (None, None), x)
              for name, spectrum in SHARE_GRAPHS.items()}
    # The artifacts take any length, so their graphs compute shapes at run time, and XNNPACK
    # leaves those ops (and the partitions between them) to the builtin kernels; the same graph
    # converted for one fixed input shape is delegated whole. Timed too, for comparison.
    graphs["after_fixed_length"] = (graphs["after"][0], x.shape, x)
    graphs["network_fixed_length"] = (graphs["network"][0], mel_shape, graphs["network"][2])
    invokes = {name: tflite_interpreter(graph, spec, inp, _threads(job["threads"])).invoke
               for name, (graph, spec, inp) in graphs.items()}
    out: dict[str, Any] = round_robin_timings(invokes, job["repeats"], warmup=2)
    for name, network in (("before", "network"), ("after", "network"), ("after_fixed_length", "network_fixed_length")):
        out[name]["frontend_share"] = max(0.0, 1.0 - out[network]["median"] / out[name]["median"])
    out["speedup"] = out["before"]["median"] / out["after"]["median"]
    return out


def work_tagging(job: dict[str, Any]) -> dict[str, Any]:
    """Seconds of audio tagged per second for one whole song, per TFLite artifact (keras_mgc.tag)."""
    from keras_mgc.tag import Tagger

    out = {}
    for name, path in job["artifacts"].items():
        if not (name.startswith("tflite_") or name.startswith("task_")):
            continue
        tagger = Tagger(path, threads=_threads(job["threads"]))
        last = {}

        def tag() -> None:
            last["result"] = tagger.tag(job["song"])

        t = timings(tag, job["repeats"], warmup=1)
        duration = last["result"].duration
        out[name] = {"seconds": t, "duration_s": duration, "windows": last["result"].windows,
                     "audio_s_per_s": duration / t["median"]}
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
    # Only what the requested runtimes need (converting #15 to every format takes minutes).
    runtimes = job.get("runtimes") or [r for r in RUNTIMES if r != "keras"]
    formats = tuple(f for f in ("saved_model", "tflite", "onnx") if any(r.split("_")[0] == f.split("_")[0]
                                                                         for r in runtimes))
    precisions = tuple(r.removeprefix("tflite_") for r in runtimes if r.startswith("tflite_"))
    opts = ExportOptions(source=source, out=work / "export", formats=formats, tflite_precisions=precisions,
                         eval_audio=audio, representative_audio=audio,
                         eval_clips=4, eval_crops_per_clip=1, representative_crops=16, latency_runs=0,
                         max_abs_diff=1.0, min_agreement={k: 0.0 for k in ("float32", "float16", "dynamic_int8", "int8")})
    result = run_export(opts, log=lambda msg: None)
    files = {"saved_model": f"saved_model/bench_{job['config']}/1", "onnx": "onnx/model.onnx"}
    files.update({f"tflite_{p}": f"tflite/model_{p}.tflite" for p in ("float32", "float16", "dynamic_int8", "int8")})
    files.update({f"task_{p}": f"tflite/model_task_{p}.tflite" for p in ("float32", "dynamic_int8")})
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
           "pipeline": work_pipeline, "artifacts": work_artifacts, "runtime": work_runtime,
           "frontend": work_frontend, "frontend_share": work_frontend_share, "tagging": work_tagging, "torch": work_torch}


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
    if job["kind"] != "torch" and not (job["kind"] == "runtime" and job["runtime"] != "saved_model"):
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
    parser.add_argument("--threads", help="comma-separated thread counts, numbers or 'all' (default: 1,all; --quick: all)")
    parser.add_argument("--data-dir", help="audio folder for the pipeline section (default: generated clips)")
    parser.add_argument("--song", help="audio file for the tagging section (default: a generated 3-minute signal)")
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
    thread_counts = (args.threads or ("all" if args.quick else "1,all")).split(",")
    bad = [t for t in thread_counts if t != "all" and not (t.isdigit() and int(t) > 0)]
    if bad:
        parser.error(f"--threads: {bad} are not thread counts (positive numbers or 'all')")
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
    if "frontend" in sections:
        results["frontend"] = _frontend(thread_counts, repeats)
    with tempfile.TemporaryDirectory(prefix="kmgc-bench-") as work:
        song = args.song or (_generated_song(Path(work)) if "tagging" in sections else None)
        for name in configs:
            entry: dict[str, Any] = results["configs"].setdefault(name, {"preset": CONFIGS[name], "model": presets.get(CONFIGS[name]).model})
            artifacts: dict[str, Any] = {}
            if "flops" in sections:
                entry["flops"] = run_worker({"kind": "flops", "config": name})
            if "inference" in sections:
                entry["inference"] = _inference(name, runtimes, thread_counts, repeats, work, args.data_dir, artifacts)
            if "frontend_share" in sections:
                entry["frontend_share"] = _frontend_share(name, thread_counts, repeats)
            if "tagging" in sections:
                entry["tagging"] = _tagging(name, song, thread_counts, 2 if args.quick else 3, work, args.data_dir,
                                            artifacts)
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


def _artifacts(name: str, work: str, data_dir: str | None, cache: dict[str, Any],
               runtimes: list[str] | None = None) -> dict[str, Any]:
    """The configuration's exported artifacts for `runtimes` (default: every non-Keras runtime).

    Exported once per configuration and run; a later request for runtimes the cache lacks
    re-exports with the union (converting #15 to every format takes minutes, so only what is asked).
    """
    wanted = set(runtimes or [r for r in RUNTIMES if r != "keras"])
    if not cache or not wanted <= set(cache.get("runtimes", [])):
        wanted |= set(cache.get("runtimes", []))
        cache.clear()
        cache.update(run_worker({"kind": "artifacts", "config": name, "work_dir": work, "data_dir": data_dir,
                                 "runtimes": sorted(wanted)}))
        cache["runtimes"] = sorted(wanted)
    return cache


def _generated_song(work: Path, seconds: float = 180.0) -> str:
    import soundfile as sf

    path = work / "song.wav"
    sf.write(path, _audio(int(seconds * DEFAULT_SAMPLE_RATE))[0], DEFAULT_SAMPLE_RATE)
    return str(path)


def _frontend(thread_counts: list[str], repeats: int) -> dict[str, Any]:
    """Front-end latency per runtime, spectrum path and thread count (the same for every configuration)."""
    out: dict[str, Any] = {}
    for runtime, spectra in FRONTEND_PATHS.items():
        for spectrum in spectra:
            for threads in thread_counts:
                res = run_worker({"kind": "frontend", "runtime": runtime, "spectrum": spectrum, "threads": threads,
                                  "repeats": repeats})
                out.setdefault(runtime, {}).setdefault(spectrum, {})[threads] = res
                print(f"  front end {runtime:<15} {spectrum:<7} threads={threads:<3} " + (
                    f"clip {_fmt(res['clip']['median'], 4)} s" if "clip" in res else f"error: {res.get('error')}"),
                    flush=True)
    return out


def _frontend_share(name: str, thread_counts: list[str], repeats: int) -> dict[str, Any]:
    out = {}
    for threads in thread_counts:
        out[threads] = res = run_worker({"kind": "frontend_share", "config": name, "threads": threads,
                                         "repeats": max(repeats, 5)})
        print(f"  {name} front-end share threads={threads:<3} " + (
            f"before {_fmt(res['before']['median'], 4)} s, after {_fmt(res['after']['median'], 4)} s "
            f"({res['speedup']:.2f}x), network alone {_fmt(res['network']['median'], 4)} s"
            if "speedup" in res else f"error: {res.get('error')}"), flush=True)
    return out


def _tagging(name: str, song: str, thread_counts: list[str], repeats: int, work: str, data_dir: str | None,
             artifacts: dict[str, Any]) -> dict[str, Any]:
    paths = _artifacts(name, work, data_dir, artifacts)
    if "error" in paths:
        return {"error": f"artifacts: {paths['error']}"}
    out = {}
    for threads in thread_counts:
        out[threads] = res = run_worker({"kind": "tagging", "song": song, "threads": threads, "repeats": repeats,
                                         "artifacts": paths})
        print(f"  {name} tagging threads={threads:<3} " + (", ".join(
            f"{k} {v['audio_s_per_s']:.0f}x" for k, v in res.items() if isinstance(v, dict))
            if "error" not in res else f"error: {res['error']}"), flush=True)
    return out


def _inference(name: str, runtimes: list[str], thread_counts: list[str], repeats: int, work: str,
               data_dir: str | None, artifacts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for runtime in runtimes:
        for threads in thread_counts:
            if runtime == "keras":
                res = run_worker({"kind": "keras", "config": name, "threads": threads, "repeats": repeats})
            else:
                _artifacts(name, work, data_dir, artifacts, [r for r in runtimes if r != "keras"])
                if "error" in artifacts:
                    res = {"error": f"artifacts: {artifacts['error']}"}
                else:
                    res = run_worker({"kind": "runtime", "runtime": runtime, "config": name, "threads": threads,
                                      "repeats": repeats, "artifacts": artifacts})
            out.setdefault(runtime, {})[threads] = res
            _print_latency(name, runtime, threads, res)
    # The authors' PyTorch model in the same run, same threads: the ratios in the table are same-run.
    for threads in thread_counts:
        res = run_worker({"kind": "torch", "mode": "inference", "config": name, "threads": threads,
                          "repeats": repeats})
        out.setdefault(TORCH_ROW, {})[threads] = res
        _print_latency(name, TORCH_ROW, threads, res)
    return out


#: The runtime name of the authors' PyTorch rows.
TORCH_ROW = "authors_pytorch"


def _print_latency(name: str, runtime: str, threads: str, res: dict[str, Any]) -> None:
    print(f"  {name} {runtime:<20} threads={threads:<3} " + (
        f"clip {_fmt(res['clip']['median'])} s, TTA {_fmt(res['tta']['median'])} s"
        if "clip" in res else f"skipped: {res['skipped']}" if "skipped" in res else f"error: {res.get('error')}"),
        flush=True)


def _training(name: str, quick: bool) -> dict[str, Any]:
    import tensorflow as tf  # only to ask what devices exist

    precisions = ["float32"]
    if cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        precisions.append("mixed_bfloat16")
    if tf.config.list_physical_devices("GPU"):
        precisions.append("mixed_float16")
    out = {}
    for precision in precisions:
        job = {"kind": "training", "config": name, "precision": precision, "steps": 2 if quick else 5,
               "batch": 16 if quick else 64}
        out[precision] = run_worker(job)
    # The authors' PyTorch model (float32, all threads), same batch, same run.
    out[TORCH_ROW] = run_worker({"kind": "torch", "mode": "training", "config": name, "threads": "all",
                                 "steps": 2 if quick else 5, "batch": 16 if quick else 64})
    for precision, res in out.items():
        print(f"  {name} training {precision:<15} " + (
            f"{_fmt(res['crops_per_s'], 2)} crops/s" if "crops_per_s" in res
            else f"skipped: {res['skipped']}" if "skipped" in res else f"error: {res.get('error')}"), flush=True)
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
    skipped: set[str] = set()
    for name, entry in results["configs"].items():
        gflop = (entry.get("flops") or {}).get("clip_gflop")
        inference = entry.get("inference") or {}
        torch_rows = inference.get(TORCH_ROW, {})
        for runtime, by_threads in inference.items():
            for threads, res in by_threads.items():
                if "skipped" in res:
                    skipped.add(res["skipped"])
                    continue
                if "clip" not in res:
                    lines.append(f"| {name} | {runtime} | {threads} | error: {res.get('error', '')[:60]} | | | | | |")
                    continue
                clip = res["clip"]
                rate = gflop / clip["median"] if gflop else None
                pct = 100 * rate / peak[threads] if rate and peak.get(threads) else None
                # Same run, same thread count: the authors' model against this row.
                ref = torch_rows.get(threads, {}).get("clip")
                speedup = ref["median"] / clip["median"] if ref and runtime != TORCH_ROW else None
                lines.append(f"| {name} | {runtime} | {threads} | {_fmt(clip['median'])} ({_fmt(clip['p10'])}-{_fmt(clip['p90'])}) "
                             f"| {_fmt(res['tta']['median'])} | {_fmt(rate, 1)} | {_fmt(pct, 0)} | "
                             f"{'-' if speedup is None else f'{speedup:.2f}x'} | {_fmt(res.get('peak_rss_mb'), 0)} |")
    lines += ["", "| config | params | GFLOP / 30 s clip (front end) | training precision | crops/s | vs authors' PyTorch "
              "| peak RSS MiB |", "|---|---|---|---|---|---|---|"]
    for name, entry in results["configs"].items():
        flops = entry.get("flops") or {}
        training = entry.get("training") or {"-": {}}
        ref = (training.get(TORCH_ROW) or {}).get("crops_per_s")
        for precision, res in training.items():
            if "skipped" in res:
                skipped.add(res["skipped"])
                continue
            cps = res.get("crops_per_s")
            ratio = f"{cps / ref:.2f}x" if cps and ref and precision != TORCH_ROW else "-"
            params = f"{flops['params']:,}" if isinstance(flops.get("params"), int) else "-"
            lines.append(f"| {name} | {params} | {_fmt(flops.get('clip_gflop'), 1)} ({_fmt(flops.get('clip_frontend_gflop'), 1)}) "
                         f"| {precision} | {_fmt(cps, 2)} | {ratio} | {_fmt(res.get('peak_rss_mb'), 0)} |")
    lines += ["", "GFLOP/s counts float FLOPs of the graph over the time taken; int8 rows run on VNNI integer "
              "units, so their share of the float32 peak can exceed 100%. The `authors_pytorch` rows are the "
              "authors' model (tests/torch_reference.py, outputs identical to their model.py; float32 torchaudio "
              "front end; training with torch.optim.Adam(weight_decay=1e-5)) timed in this same run on the same "
              "threads and batch, so every ratio is same-run."]
    lines += [f"authors' PyTorch rows skipped: {reason}" for reason in sorted(skipped)]
    lines += _frontend_report(results) + _frontend_share_report(results) + _tagging_report(results)
    pipe = results.get("pipeline")
    if pipe and "memory" in pipe:
        lines += ["", f"Input pipeline ({pipe['files']} files from {pipe['data']}): "
                  f"first epoch (decode included) {pipe['memory']['first_epoch_crops_per_s']:.0f} crops/s, cached "
                  f"{pipe['memory']['cached_crops_per_s']:.0f} crops/s in memory, "
                  f"{pipe['disk']['cached_crops_per_s']:.0f} crops/s from the disk cache."]
    return "\n".join(lines)


def _frontend_report(results: dict[str, Any]) -> list[str]:
    """Front-end latency per path, and its share of each configuration's latency in the same run."""
    fe = results.get("frontend")
    if not fe:
        return []
    lines = ["", "| front end (30 s clip) | spectrum | threads | s (p10-p90) | share of the model's latency |",
             "|---|---|---|---|---|"]
    for runtime, by_spectrum in fe.items():
        for spectrum, by_threads in by_spectrum.items():
            used = spectrum == FRONTEND_PATHS[runtime][0]
            for threads, res in by_threads.items():
                if "clip" not in res:
                    lines.append(f"| {runtime} | {spectrum} | {threads} | error: {res.get('error', '')[:60]} | |")
                    continue
                t = res["clip"]
                shares = []
                for name, entry in results["configs"].items():
                    model = ((entry.get("inference") or {}).get(runtime) or {}).get(threads) or {}
                    if used and "clip" in model:
                        shares.append(f"{name} {100 * t['median'] / model['clip']['median']:.0f}%")
                lines.append(f"| {runtime} | {spectrum}{' (used)' if used else ''} | {threads} | "
                             f"{_fmt(t['median'], 4)} ({_fmt(t['p10'], 4)}-{_fmt(t['p90'], 4)}) | "
                             f"{', '.join(shares) or '-'} |")
    return lines


def _frontend_share_report(results: dict[str, Any]) -> list[str]:
    """Before/after issue 14: whole TFLite float32 model per front end, and the front end's share."""
    rows = []
    for name, entry in results["configs"].items():
        for threads, res in (entry.get("frontend_share") or {}).items():
            if "speedup" not in res:
                rows.append(f"| {name} | {threads} | error: {res.get('error', '')[:60]} | | | | | |")
                continue
            before, after = res["before"], res["after"]
            fixed = res["after_fixed_length"]
            rows.append(f"| {name} | {threads} | {_fmt(before['median'], 4)} | {100 * before['frontend_share']:.0f}% "
                        f"| {_fmt(after['median'], 4)} | {100 * after['frontend_share']:.0f}% "
                        f"| {res['speedup']:.2f}x | {_fmt(res['network']['median'], 4)} "
                        f"| {_fmt(fixed['median'], 4)} ({100 * fixed['frontend_share']:.0f}%) |")
    if not rows:
        return []
    return ["", "Whole model, TFLite float32, 30 s clip, front end before issue 14 (dense DFT table) and now "
            "(folded DFT), round-robin in one process; share = 1 - network alone / whole. The last column is the "
            "'after' graph converted for this one input length (XNNPACK then delegates all of it):", "",
            "| config | threads | before s | front end share | after s | front end share | speed-up | network alone s "
            "| after, fixed length s (front end share) |",
            "|---|---|---|---|---|---|---|---|---|", *rows]


def _tagging_report(results: dict[str, Any]) -> list[str]:
    rows = []
    for name, entry in results["configs"].items():
        for threads, res in (entry.get("tagging") or {}).items():
            for artifact, r in res.items():
                if isinstance(r, dict) and "audio_s_per_s" in r:
                    rows.append(f"| {name} | {artifact} | {threads} | {r['duration_s']:.0f} | {r['windows']} | "
                                f"{r['seconds']['median']:.2f} | {r['audio_s_per_s']:.0f} |")
    if not rows:
        return []
    return ["", "Whole-song tagging (`keras_mgc.tag.Tagger`, window 2.01 s, hop 1 s, decoding included):", "",
            "| config | artifact | threads | song s | windows | wall s | audio s per s |",
            "|---|---|---|---|---|---|---|", *rows]


if __name__ == "__main__":
    raise SystemExit(main())
