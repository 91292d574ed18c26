"""Every artifact against the reference Keras model: probabilities, top-1, embedding, latency.

The reference is the checkpoint rebuilt in float32 with the Keras front end's float64 DFT
(`graphs.ServingModels`). Each artifact is run through its own runtime (TensorFlow for the
SavedModel, LiteRT for .tflite, ONNX Runtime for .onnx) on whole real clips (one per batch,
their own lengths) and on crops of them (one batch), through both entry points (waveform,
and the log-mels of the same audio), and compared with the reference.

Thresholds (BUILD_NOTES.md "Export" has the measurements behind them):

- float32 artifacts (SavedModel, ONNX, TFLite float32): max |p - p_keras| <= 1e-4 and 100%
  top-1 agreement;
- TFLite float16 >= 99%, dynamic-range int8 >= 95%, full int8 >= 90% top-1 agreement.

Latency: median wall time of one 30 s clip (661,500 samples) after a warm-up run, with one
thread and with all threads. TensorFlow fixes its thread pools when it starts, so the
SavedModel's one-thread figure comes from a child process (`keras_mgc.export.latency_worker`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from keras_mgc import windows
from keras_mgc.contract import (ENTRY_SIGNATURES, MEL_INPUT, PROBABILITIES, SIGNATURE, WAVEFORM_INPUT,
                                mel_signature_name)
from keras_mgc.export.clips import ClipSet, crops
from keras_mgc.timing import timings

__all__ = ["MIN_AGREEMENT", "MAX_ABS_DIFF", "LATENCY_SECONDS", "CROP_BATCH", "EvalInputs", "Runner", "KerasRunner",
           "SavedModelRunner", "latency_in_child", "TFLiteRunner", "TFLiteTaskRunner", "ONNXRunner", "run_all", "compare",
           "thresholds_for", "check", "latency_clip", "measure_latency"]

#: Minimum top-1 agreement with the Keras reference, per precision.
MIN_AGREEMENT = {"float32": 1.0, "float16": 0.99, "dynamic_int8": 0.95, "int8": 0.90}
#: Maximum |probability difference| for float32 artifacts.
MAX_ABS_DIFF = 1e-4
LATENCY_SECONDS = 30.0
CROP_BATCH = 16


@dataclass
class EvalInputs:
    """The audio every artifact is run on, and the log-mels of the same audio."""

    whole: list[tuple[str, np.ndarray]]  # (name, (1, samples))
    crops: list[tuple[str, np.ndarray]]  # (name, (crop,))
    mel_whole: list[np.ndarray] = field(default_factory=list)
    mel_crops: np.ndarray | None = None
    #: Fixed-length windows for task-ready models (`set_windows`): the whole clips' windows, then crops.
    windows: np.ndarray | None = None
    n_whole_windows: int = 0

    def set_windows(self, window: int) -> None:
        """The inputs of a fixed-window (task-ready) model: every complete window of each whole
        clip, consecutive from its start (as MediaPipe's AudioClassifier cuts a clip), then the
        crops when they have that length."""
        cut = [x[0, i * window : (i + 1) * window] for _, x in self.whole for i in range(x.shape[1] // window)]
        crops = [c for _, c in self.crops if len(c) == window]
        self.n_whole_windows = len(cut)
        self.windows = np.stack(cut + crops).astype(np.float32) if cut or crops else None

    @classmethod
    def build(cls, clip_set: ClipSet, crop: int, crops_per_clip: int, log_mel: Callable[[np.ndarray], np.ndarray],
              fixed: int | None = None) -> "EvalInputs":
        """`fixed`: the input length of a fixed-length model, whose "whole clip" is the batch of
        windows covering it (`keras_mgc.windows.covering_windows`), as evaluation feeds it."""
        if fixed is None:
            whole = [(c.name, c.audio[None, :]) for c in clip_set.clips]
        else:
            whole = [(c.name, windows.covering_windows(c.audio, fixed)) for c in clip_set.clips]
        crop_list = crops(clip_set, crop, crops_per_clip) if crops_per_clip > 0 else []
        mel_whole = [log_mel(x) for _, x in whole]
        mel_crops = log_mel(np.stack([c for _, c in crop_list])) if crop_list else None
        return cls(whole=whole, crops=crop_list, mel_whole=mel_whole, mel_crops=mel_crops)

    def batches(self, entry: str) -> list[np.ndarray]:
        """Inputs of `entry` ("waveform" or "mel"): whole clips one by one, then crops in batches."""
        if entry == "window":
            out, stacked = [], self.windows
        elif entry == "waveform":
            out = [x for _, x in self.whole]
            stacked = np.stack([c for _, c in self.crops]) if self.crops else None
        else:
            out = list(self.mel_whole)
            stacked = self.mel_crops
        if stacked is not None:
            out += [stacked[i : i + CROP_BATCH] for i in range(0, len(stacked), CROP_BATCH)]
        return [np.ascontiguousarray(b, dtype=np.float32) for b in out]

    @property
    def n_whole(self) -> int:
        """Rows of whole-clip input (one per clip; one per window for a fixed-length model)."""
        return sum(x.shape[0] for _, x in self.whole)


# --------------------------------------------------------------------------- runners


class Runner:
    """One artifact in its runtime: run(entry, x) -> {"probabilities", "embedding"}."""

    label = ""

    def run(self, entry: str, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def latency(self, x: np.ndarray, threads: int, runs: int, entry: str = "waveform") -> float | None:
        """Median seconds for `x` with `threads` threads (None where not measurable)."""
        return timings(lambda: self.run_threads(entry, x, threads), runs)["median"]

    def run_threads(self, entry: str, x: np.ndarray, threads: int) -> Any:
        raise NotImplementedError


class KerasRunner(Runner):
    def __init__(self, waveform_model: Any, mel_model: Any) -> None:
        self.models = {"waveform": waveform_model, "mel": mel_model}
        self.label = "keras"

    def run(self, entry: str, x: np.ndarray) -> dict[str, np.ndarray]:
        from keras import ops

        out = self.models["waveform" if entry == "window" else entry](x, training=False)  # windows are waveforms
        return {"probabilities": np.asarray(ops.softmax(out["logits"], axis=-1)),
                "embedding": np.asarray(out["embedding"])}

    def latency(self, x: np.ndarray, threads: int, runs: int, entry: str = "waveform") -> float | None:
        if threads != _tf_threads():
            return None  # TensorFlow's pools are fixed for this process
        return timings(lambda: self.run(entry, x), runs)["median"]


def _tf_threads() -> int:
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads() or (os.cpu_count() or 1)


class SavedModelRunner(Runner):
    SIGNATURES = {entry: (ENTRY_SIGNATURES[entry], entry) for entry in ENTRY_SIGNATURES}

    def __init__(self, version_dir: Path) -> None:
        import tensorflow as tf

        self.path = Path(version_dir)
        self.loaded = tf.saved_model.load(str(version_dir))
        self.label = "saved_model"

    def run(self, entry: str, x: np.ndarray) -> dict[str, np.ndarray]:
        import tensorflow as tf

        signature, name = self.SIGNATURES[entry]
        out = self.loaded.signatures[signature](**{name: tf.constant(x)})
        return {"probabilities": out["probabilities"].numpy(), "embedding": out["embedding"].numpy(),
                "top_classes": out["top_classes"].numpy()}

    def latency(self, x: np.ndarray, threads: int, runs: int, entry: str = "waveform") -> float | None:
        if threads == _tf_threads():
            return timings(lambda: self.run(entry, x), runs)["median"]
        if entry != "waveform":
            return None
        return latency_in_child(self.path, x, threads, runs)


def latency_in_child(version_dir: Path, x: np.ndarray, threads: int, runs: int, timeout: float = 600) -> float:
    """SavedModel latency measured in a fresh process whose TensorFlow uses `threads` threads."""
    with tempfile.TemporaryDirectory(prefix="keras-mgc-latency-") as tmp:
        clip = Path(tmp) / "clip.npy"
        np.save(clip, x)
        cmd = [sys.executable, "-m", "keras_mgc.export.latency_worker", "--saved-model", str(version_dir),
               "--input", str(clip), "--threads", str(threads), "--runs", str(runs)]
        # The child imports this very `export` package, wherever the parent found it.
        package_root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=path)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"latency worker failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["median_s"])


class TFLiteRunner(Runner):

    def __init__(self, path: Path, threads: int = 1) -> None:
        self.path = Path(path)
        self.threads = threads
        self.label = self.path.name
        self._interpreters: dict[int, Any] = {}

    def _runner(self, entry: str, threads: int) -> tuple[Any, str]:
        from ai_edge_litert.interpreter import Interpreter

        if threads not in self._interpreters:
            self._interpreters[threads] = Interpreter(model_path=str(self.path), num_threads=threads)
        interpreter = self._interpreters[threads]
        signature = ENTRY_SIGNATURES[entry]
        if entry == MEL_INPUT:  # files exported before issue 10 name it "mel"
            signature = mel_signature_name(interpreter.get_signature_list()) or signature
        return interpreter.get_signature_runner(signature), entry

    def run_threads(self, entry: str, x: np.ndarray, threads: int) -> dict[str, np.ndarray]:
        runner, name = self._runner(entry, threads)
        out = runner(**{name: x})
        return {"probabilities": np.array(out["probabilities"]), "embedding": np.array(out["embedding"])}

    def run(self, entry: str, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.run_threads(entry, x, self.threads)


class TFLiteTaskRunner(Runner):
    """A task-ready model (export.task_model): input [1, window], output probabilities only.

    A batch of windows runs row by row; a longer input (the 30 s latency clip) runs as
    MediaPipe's AudioClassifier runs it: consecutive windows, the last one zero-padded, and
    the probabilities averaged. Entry "window" and "waveform" are the same input here.
    """

    def __init__(self, path: Path, window: int, threads: int = 1) -> None:
        self.path = Path(path)
        self.window = window
        self.threads = threads
        self.label = self.path.name
        self._runners: dict[int, Any] = {}

    def run_threads(self, entry: str, x: np.ndarray, threads: int) -> dict[str, np.ndarray]:
        from ai_edge_litert.interpreter import Interpreter

        if threads not in self._runners:
            interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            self._runners[threads] = interpreter.get_signature_runner(SIGNATURE)
        runner = self._runners[threads]
        rows = []
        for row in np.asarray(x, np.float32):
            n = max(1, -(-len(row) // self.window))
            padded = np.zeros(n * self.window, np.float32)
            padded[: len(row)] = row
            probs = [runner(**{WAVEFORM_INPUT: w[None]})[PROBABILITIES][0] for w in padded.reshape(n, self.window)]
            rows.append(np.mean(probs, axis=0))
        return {"probabilities": np.stack(rows)}

    def run(self, entry: str, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.run_threads(entry, x, self.threads)


class ONNXRunner(Runner):
    def __init__(self, paths: dict[str, Path], threads: int = 1) -> None:
        self.paths = {k: Path(v) for k, v in paths.items()}
        self.threads = threads
        self.label = "onnx"
        self._sessions: dict[tuple[str, int], Any] = {}

    def _session(self, entry: str, threads: int) -> Any:
        import onnxruntime as ort

        key = (entry, threads)
        if key not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self._sessions[key] = ort.InferenceSession(str(self.paths[entry]), options,
                                                       providers=["CPUExecutionProvider"])
        return self._sessions[key]

    def run_threads(self, entry: str, x: np.ndarray, threads: int) -> dict[str, np.ndarray]:
        session = self._session(entry, threads)
        name = session.get_inputs()[0].name
        probabilities, embedding = session.run(["probabilities", "embedding"], {name: x})
        return {"probabilities": probabilities, "embedding": embedding}

    def run(self, entry: str, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.run_threads(entry, x, self.threads)


# --------------------------------------------------------------------------- comparison


def run_all(runner: Runner, inputs: EvalInputs, entry: str) -> dict[str, np.ndarray]:
    outs = [runner.run(entry, x) for x in inputs.batches(entry)]
    return {k: np.concatenate([o[k] for o in outs]) for k in ("probabilities", "embedding") if k in outs[0]}


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], n_whole: int) -> dict[str, Any]:
    """Max/mean |dp|, top-1 agreement (whole clips, crops, all), embedding agreement."""
    p_ref, p = reference["probabilities"], candidate["probabilities"]
    if p.shape != p_ref.shape:
        raise ValueError(f"probabilities have shape {p.shape}, the reference {p_ref.shape}")
    diff = np.abs(p.astype(np.float64) - p_ref)
    agree = p.argmax(-1) == p_ref.argmax(-1)
    e_ref = reference["embedding"].astype(np.float64)
    # Task-ready models output probabilities only: their embedding comparison is left out.
    e = candidate["embedding"].astype(np.float64) if "embedding" in candidate else e_ref
    has_embedding = "embedding" in candidate
    cosine = np.sum(e_ref * e, -1) / np.maximum(np.linalg.norm(e_ref, axis=-1) * np.linalg.norm(e, axis=-1), 1e-30)
    finite = bool(np.isfinite(p).all() and np.isfinite(e).all())
    parts = {"whole": slice(0, n_whole), "crops": slice(n_whole, None)}
    return {
        "n": int(len(p)),
        "finite": finite,
        "max_abs_diff": float(diff.max()) if finite else float("nan"),
        "mean_abs_diff": float(diff.mean()) if finite else float("nan"),
        "top1_agreement": float(agree.mean()),
        "top1_disagreements": int((~agree).sum()),
        "by_input": {
            name: {"n": int(len(agree[s])), "max_abs_diff": float(diff[s].max()) if len(agree[s]) and finite else None,
                   "top1_agreement": float(agree[s].mean()) if len(agree[s]) else None}
            for name, s in parts.items()
        },
        "embedding_max_abs_diff": (float(np.abs(e - e_ref).max()) if finite else float("nan")) if has_embedding else None,
        "embedding_min_cosine": (float(cosine.min()) if finite else float("nan")) if has_embedding else None,
    }


def thresholds_for(precision: str, min_agreement: dict[str, float], max_abs_diff: float) -> dict[str, float]:
    out = {"min_top1_agreement": float(min_agreement[precision])}
    if precision == "float32":
        out["max_abs_diff"] = float(max_abs_diff)
    return out


def check(entries: dict[str, dict[str, Any]], thresholds: dict[str, float]) -> list[str]:
    """Failure messages of one artifact (empty when it passes)."""
    failures = []
    for entry, stats in entries.items():
        if not stats["finite"]:
            failures.append(f"{entry}: non-finite outputs (NaN or Inf)")
            continue
        if "max_abs_diff" in thresholds and stats["max_abs_diff"] > thresholds["max_abs_diff"]:
            failures.append(f"{entry}: max |p - p_keras| = {stats['max_abs_diff']:.3g} > {thresholds['max_abs_diff']:.3g}")
        if stats["top1_agreement"] < thresholds["min_top1_agreement"]:
            failures.append(
                f"{entry}: top-1 agreement {stats['top1_agreement']:.2%} < {thresholds['min_top1_agreement']:.2%} "
                f"({stats['top1_disagreements']} of {stats['n']} differ)"
            )
    return failures


def latency_clip(clip_set: ClipSet, sample_rate: int, seconds: float = LATENCY_SECONDS,
                 fixed: int | None = None) -> tuple[np.ndarray, str]:
    """A (1, 30 s) batch: the first clip that long, else the longest clip repeated to 30 s.

    For a fixed-length model (`fixed` samples), the windows covering those 30 s, as one batch.
    """
    n = int(round(seconds * sample_rate))
    audio = desc = None
    for clip in clip_set.clips:
        if len(clip.audio) >= n:
            audio, desc = clip.audio[:n], f"{clip.name} (first {seconds:g} s)"
            break
    if audio is None:
        longest = max(clip_set.clips, key=lambda c: len(c.audio))
        audio, desc = np.resize(longest.audio, n), f"{longest.name} (repeated to {seconds:g} s)"
    if fixed is None:
        return audio[None].astype(np.float32), desc
    batch = windows.covering_windows(audio, fixed).astype(np.float32)
    return batch, f"{desc} as {len(batch)} windows of {fixed} samples"


def measure_latency(runner: Runner, x: np.ndarray, threads: list[int], runs: int,
                    entry: str = "waveform") -> dict[str, Any]:
    """Milliseconds per thread count (keys "1", "2", ...); None where not measurable."""
    out: dict[str, Any] = {}
    for n in threads:
        try:
            value = runner.latency(x, n, runs, entry)
        except Exception as exc:  # a latency failure is reported, not fatal
            out[str(n)] = None
            out[f"{n}_error"] = f"{type(exc).__name__}: {exc}"[:500]
            continue
        out[str(n)] = None if value is None else round(value * 1000.0, 2)
    return out
