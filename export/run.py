"""The export: build every requested artifact, verify each against Keras, publish atomically.

`run_export(options)` is what ``python -m keras_mgc.export`` runs. Steps: load the checkpoint in float32;
load the evaluation and representative clips (bad files reported and skipped); build the
artifacts in a staging folder (a failing converter is recorded and the others go on); run
every artifact on the same clips as the reference Keras model; write metadata beside each
artifact and the report; publish the folder to ``out`` when everything passed, else to
``out.failed``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from keras_mgc import io as kio
from keras_mgc.contract import ENTRY_SIGNATURES, MEL_INPUT, MEL_SIGNATURE, SIGNATURE, WAVEFORM_INPUT
from keras_mgc.environment import package_versions, utc_now
from keras_mgc.export import ExportError, publish
from keras_mgc.export import clips as clips_mod
from keras_mgc.export import metadata as meta_mod
from keras_mgc.export import report as report_mod
from keras_mgc.export import verify
from keras_mgc.export.trained_model import ExportSource

__all__ = ["FORMATS", "ExportOptions", "Artifact", "ExportResult", "default_model_name", "run_export", "command_line"]

FORMATS = ("saved_model", "tflite", "onnx")


@dataclass
class ExportOptions:
    source: ExportSource
    out: Path
    formats: tuple[str, ...] = FORMATS
    tflite_precisions: tuple[str, ...] = ("float32", "float16", "dynamic_int8", "int8")
    eval_audio: list[str] | None = None
    representative_audio: list[str] | None = None
    model_name: str | None = None
    version: int = 1
    eval_clips: int = 30
    eval_crops_per_clip: int = 2
    representative_crops: int = 64
    latency_runs: int = 5
    latency_threads: tuple[int, ...] = field(default_factory=lambda: tuple(sorted({1, os.cpu_count() or 1})))
    max_abs_diff: float = verify.MAX_ABS_DIFF
    min_agreement: dict[str, float] = field(default_factory=lambda: dict(verify.MIN_AGREEMENT))
    top_k: int = 3
    #: Task-ready TFLite (MediaPipe AudioClassifier) for these of the TFLite precisions, and its
    #: fixed window in samples (None: the training crop).
    task_precisions: tuple[str, ...] = ("float32", "dynamic_int8")
    task_window: int | None = None
    command: str = ""


@dataclass
class Artifact:
    name: str  # path relative to the export folder
    fmt: str
    precision: str
    entries: tuple[str, ...]
    path: Path | None = None  # file, or the SavedModel version folder
    dft_precision: str = "float32"
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    latency_ms: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    runner: Any = None

    @property
    def passed(self) -> bool:
        return self.error is None and not self.failures

    def size(self) -> int | None:
        if self.path is None or not self.path.exists():
            return None
        if self.path.is_dir():
            return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return self.path.stat().st_size

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.fmt, "precision": self.precision, "dft_precision": self.dft_precision,
                "size_bytes": self.size(), "entries": self.results, "thresholds": self.thresholds,
                "latency_ms": self.latency_ms, "passed": self.passed, "failures": self.failures,
                "error": self.error, "details": self.details}


@dataclass
class ExportResult:
    passed: bool
    location: Path
    report: dict[str, Any]
    skipped_inputs: int

    @property
    def exit_code(self) -> int:
        """0 all good; 1 an artifact failed; 3 published, but some input clips were skipped."""
        if not self.passed:
            return 1
        return 3 if self.skipped_inputs else 0


def default_model_name(source: ExportSource) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", str(source.recipe.get("name") or "")).strip("_")
    return name or "genre_classifier"


def _raise_if_disk_full(exc: BaseException, where: Path) -> None:
    """A full disk stops the whole export (nothing is published), never one artifact.

    `where` (the artifact being built) names it when the writer did not (TensorFlow's
    SavedModel writer under the TFLite converter reports only its message).
    """
    from keras_mgc.io import DiskFullError, disk_full_cause

    cause = disk_full_cause(exc)
    if cause is None:
        return
    if isinstance(exc, DiskFullError) or cause.filename:
        raise exc
    raise DiskFullError(where, cause.errno) from exc


def _err(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) < 4000 else text[:4000] + " ..."


def _load_clips(opts: ExportOptions, log: Callable[[str], None]) -> tuple[clips_mod.ClipSet, clips_mod.ClipSet]:
    """Evaluation and representative clips (disjoint when they come from one pool)."""
    src = opts.source
    kwargs = dict(sample_rate=src.sample_rate, min_samples=src.crop_samples, log=log)
    pool, origin = ([], "")
    if opts.eval_audio is None or opts.representative_audio is None:
        pool, origin = clips_mod.default_pool(src.recipe)
    if opts.eval_audio is not None:
        files, problems = clips_mod.expand(opts.eval_audio)
        evaluation = clips_mod.load(files, purpose="evaluation", limit=opts.eval_clips, problems=problems,
                                    origin="--eval-audio", **kwargs)
        if not evaluation.clips:
            raise ExportError("no usable evaluation clip in --eval-audio (each one is listed above)")
    elif pool:
        evaluation = clips_mod.load(pool[0::2], purpose="evaluation", limit=opts.eval_clips, origin=origin, **kwargs)
    else:
        evaluation = clips_mod.ClipSet()
    if not evaluation.clips:
        log("WARNING: no real audio found for verification (give --eval-audio); using generated signals")
        evaluation = clips_mod.generated(min(opts.eval_clips, 8), 30.0, src.sample_rate)

    needs_representative = "tflite" in opts.formats and "int8" in opts.tflite_precisions
    if not needs_representative:
        return evaluation, clips_mod.ClipSet(origin="not needed (no full int8 artifact)")
    limit = max(1, min(opts.representative_crops, 64))
    if opts.representative_audio is not None:
        files, problems = clips_mod.expand(opts.representative_audio)
        representative = clips_mod.load(files, purpose="representative", limit=limit, problems=problems,
                                        origin="--representative-audio", **kwargs)
        if not representative.clips:
            raise ExportError("no usable representative clip in --representative-audio (each one is listed above)")
    elif pool:
        representative = clips_mod.load(pool[1::2] or pool, purpose="representative", limit=limit, origin=origin,
                                        **kwargs)
    elif evaluation.source == "real":
        representative = clips_mod.ClipSet(
            clips=list(evaluation.clips), origin=evaluation.origin, sample_rate=evaluation.sample_rate,
            notes=["representative clips are the evaluation clips (no other real audio given)"])
    else:
        representative = clips_mod.ClipSet()
    if not representative.clips:
        log("WARNING: no real audio for int8 calibration (give --representative-audio); using generated signals")
        representative = clips_mod.generated(8, 10.0, src.sample_rate, seed=1)
    return evaluation, representative


def run_export(opts: ExportOptions, log: Callable[[str], None] | None = None) -> ExportResult:
    """Build, verify and publish; raises ExportError for problems with the inputs."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.time()
    unknown = set(opts.formats) - set(FORMATS)
    if unknown:
        raise ExportError(f"unknown format(s) {sorted(unknown)} (known: {', '.join(FORMATS)})")
    from keras_mgc.export.tflite import PRECISIONS

    bad = set(opts.tflite_precisions) - set(PRECISIONS)
    if bad:
        raise ExportError(f"unknown TFLite precision(s) {sorted(bad)} (known: {', '.join(PRECISIONS)})")
    if opts.version < 1:
        raise ExportError(f"--version must be a positive integer, got {opts.version}")
    tasks, window = _task_precisions(opts), _task_window(opts)  # task-ready TFLite models, their fixed window
    src = opts.source
    model_name = opts.model_name or default_model_name(src)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_name):
        raise ExportError(f"--model-name {model_name!r}: use letters, digits, '_', '-', '.' only")

    evaluation, representative = _load_clips(opts, log)

    from keras_mgc.export.graphs import ServingModels

    log(f"loading {src.checkpoint} (rebuilt in float32)")
    try:
        models = ServingModels.load(str(src.checkpoint), src.model_config, len(src.class_names))
    except (ValueError, OSError) as exc:
        raise ExportError(f"cannot load {src.checkpoint} with the recipe's model config and "
                          f"{len(src.class_names)} classes: {exc}") from None
    reference = verify.KerasRunner(models.waveform("float64"), models.mel())
    fixed = models.input_shape("waveform")[1]  # None, or the samples a fixed-length model takes
    inputs = verify.EvalInputs.build(evaluation, src.crop_samples, opts.eval_crops_per_clip, models.log_mel, fixed)
    ref_out = {entry: verify.run_all(reference, inputs, entry) for entry in ("waveform", "mel")}
    if tasks:
        inputs.set_windows(window)
        if inputs.windows is None:
            raise ExportError(f"no evaluation clip is as long as the task window ({window} samples)")
        ref_out["window"] = verify.run_all(reference, inputs, "window")
    latency_x, latency_desc = verify.latency_clip(evaluation, src.sample_rate, fixed=fixed)

    staging = publish.Staging(opts.out)
    for stale in staging.removed_stale:
        log(f"removed the staging folder of an interrupted export: {stale}")
    try:
        artifacts = _build_all(opts, models, representative, staging.dir, model_name, tasks, window, log)
        for art in artifacts:
            if art.error is None:
                _evaluate(art, opts, inputs, ref_out, latency_x, models, log)
        ref_latency = verify.measure_latency(reference, latency_x, list(opts.latency_threads), opts.latency_runs) \
            if opts.latency_runs > 0 else {}
        report = _report(opts, src, model_name, artifacts, evaluation, representative, inputs, latency_desc,
                         ref_latency, staging.dir, started)
        for art in artifacts:
            if art.path is not None and art.path.exists():
                _write_metadata(art, src, models, report)
        kio.write_json(staging.dir / "report.json", report)
        kio.write_text(staging.dir / "report.md", report_mod.markdown(report))
        passed = report["status"] == "passed"
        location = staging.publish(passed)
    except BaseException:
        staging.discard()
        raise
    skipped = len(evaluation.skipped) + len(representative.skipped)
    return ExportResult(passed=passed, location=location, report=report, skipped_inputs=skipped)


def _task_window(opts: ExportOptions) -> int:
    return int(opts.task_window or opts.source.crop_samples)


def _task_precisions(opts: ExportOptions) -> list[str]:
    """Task-ready models to build: those of the requested TFLite precisions that have one."""
    from keras_mgc.export.task_model import TASK_PRECISIONS

    if "tflite" not in opts.formats:
        return []
    unknown = set(opts.task_precisions) - set(TASK_PRECISIONS)
    if unknown:
        raise ExportError(f"task models exist for {', '.join(TASK_PRECISIONS)}, not {sorted(unknown)}")
    return [p for p in opts.task_precisions if p in opts.tflite_precisions]


def _build_all(opts: ExportOptions, models: Any, representative: clips_mod.ClipSet, stage: Path, model_name: str,
               tasks: list[str], window: int, log: Callable[[str], None]) -> list[Artifact]:
    src = opts.source
    artifacts: list[Artifact] = []

    if "saved_model" in opts.formats:
        from keras_mgc.export import saved_model

        art = Artifact(f"saved_model/{model_name}/{opts.version}", "saved_model", "float32", ("waveform", "mel"),
                       dft_precision="float64")
        log(f"building {art.name}")
        try:
            art.path = saved_model.write_saved_model(models, src.class_names,
                                                     stage / "saved_model" / model_name / str(opts.version),
                                                     top_k=opts.top_k, dft_precision=art.dft_precision)
            art.details["server_files"] = {k: str(v.relative_to(stage)) for k, v in
                                           saved_model.write_server_files(stage / "saved_model", model_name,
                                                                          opts.version).items()}
            art.details["signatures"] = saved_model.signature_summary(art.path)
            art.runner = verify.SavedModelRunner(art.path)
        except Exception as exc:
            _raise_if_disk_full(exc, stage / art.name)
            art.error = _err(exc)
            log(f"FAILED {art.name}: {art.error}")
        artifacts.append(art)

    if "tflite" in opts.formats:
        from keras_mgc.export import tflite

        converter = tflite.TFLiteConverter(models, workdir=stage / ".tflite-work")
        rep = None
        if "int8" in opts.tflite_precisions:
            crops = clips_mod.random_crops(representative, src.crop_samples, opts.representative_crops, seed=src.fold or 0)
            mels = [models.log_mel(c[None]) for c in crops]

            def rep() -> Any:
                for crop, mel in zip(crops, mels):
                    yield SIGNATURE, {WAVEFORM_INPUT: crop[None].astype(np.float32)}
                    yield MEL_SIGNATURE, {MEL_INPUT: mel}
        try:
            for precision in opts.tflite_precisions:
                art = Artifact(f"tflite/model_{precision}.tflite", "tflite", precision, ("waveform", "mel"))
                log(f"building {art.name}")
                try:
                    flatbuffer = converter.convert(precision, rep)
                    art.details.update(tflite.check_contract(flatbuffer, len(src.class_names), models.embedding_size,
                                                             models.cfg.frontend.n_mels))
                    art.path = stage / art.name
                    kio.write_bytes(art.path, flatbuffer)
                    art.runner = verify.TFLiteRunner(art.path, threads=1)
                except Exception as exc:
                    _raise_if_disk_full(exc, stage / art.name)
                    art.error = _err(exc)
                    log(f"FAILED {art.name}: {art.error}")
                artifacts.append(art)
        finally:
            converter.close()
            shutil.rmtree(stage / ".tflite-work", ignore_errors=True)
        artifacts += _build_task_models(opts, models, stage, model_name, tasks, window, log)

    if "onnx" in opts.formats:
        from keras_mgc.export import onnx_export

        for entry, filename in onnx_export.ENTRY_FILES.items():
            art = Artifact(f"onnx/{filename}", "onnx", "float32", (entry,))
            log(f"building {art.name}")
            try:
                data = onnx_export.convert(models, entry)
                art.details.update(onnx_export.describe(data))
                art.path = stage / art.name
                kio.write_bytes(art.path, data)
                art.runner = verify.ONNXRunner({entry: art.path}, threads=1)
            except Exception as exc:
                _raise_if_disk_full(exc, stage / art.name)
                art.error = _err(exc)
                log(f"FAILED {art.name}: {art.error}")
            artifacts.append(art)
    return artifacts


def _build_task_models(opts: ExportOptions, models: Any, stage: Path, model_name: str, tasks: list[str],
                       window: int, log: Callable[[str], None]) -> list[Artifact]:
    """model_task_<precision>.tflite for `tasks`: `window` samples, probabilities only, TFLite Model Metadata
    (MediaPipe)."""
    from keras_mgc.export import task_model

    src, out = opts.source, []
    meta = task_model.task_metadata(model_name, src.class_names, src.sample_rate, window, opts.version)
    for precision in tasks:
        art = Artifact(f"tflite/{task_model.task_filename(precision)}", "tflite_task", precision, ("window",))
        log(f"building {art.name}")
        try:
            flatbuffer, checked = task_model.build_task_model(models, precision, window, meta)
            art.details.update(checked)
            art.path = stage / art.name
            kio.write_bytes(art.path, flatbuffer)
            art.runner = verify.TFLiteTaskRunner(art.path, window, threads=1)
        except Exception as exc:
            art.error = _err(exc)
            log(f"FAILED {art.name}: {art.error}")
        out.append(art)
    return out


def _evaluate(art: Artifact, opts: ExportOptions, inputs: verify.EvalInputs, ref_out: dict[str, Any],
              latency_x: np.ndarray, models: Any, log: Callable[[str], None]) -> None:
    log(f"verifying {art.name}")
    art.thresholds = verify.thresholds_for(art.precision, opts.min_agreement, opts.max_abs_diff)
    try:
        for entry in art.entries:
            out = verify.run_all(art.runner, inputs, entry)
            n_whole = inputs.n_whole_windows if entry == "window" else inputs.n_whole
            art.results[entry] = verify.compare(ref_out[entry], out, n_whole)
            if art.fmt == "saved_model" and entry == "waveform":
                art.results[entry]["top_classes_match"] = _check_top_classes(art, inputs, opts.source.class_names)
        art.failures = verify.check(art.results, art.thresholds)
        if art.fmt == "saved_model" and not all(r.get("top_classes_match", True) for r in art.results.values()):
            art.failures.append("top_classes do not name the classes of the highest probabilities")
        if opts.latency_runs > 0:
            entry = art.entries[0]
            x = models.log_mel(latency_x) if entry == "mel" else latency_x  # task models: window by window
            art.latency_ms = verify.measure_latency(art.runner, x, list(opts.latency_threads), opts.latency_runs,
                                                    entry)
    except Exception as exc:
        _raise_if_disk_full(exc, art.path or Path(art.name))
        art.error = f"verification failed: {_err(exc)}"
        log(f"FAILED {art.name}: {art.error}\n{traceback.format_exc(limit=3)}")
    for failure in art.failures:
        log(f"FAILED {art.name}: {failure}")


def _check_top_classes(art: Artifact, inputs: verify.EvalInputs, class_names: list[str]) -> bool:
    """The SavedModel's top_classes name its largest probabilities, best first (ties aside)."""
    names = np.asarray(class_names, dtype=object)
    for x in inputs.batches("waveform")[:4]:
        out = art.runner.run("waveform", x)
        probs, got = out["probabilities"], out["top_classes"]
        scores = np.sort(probs, axis=-1)[:, ::-1][:, : got.shape[1]]
        index = {name: i for i, name in enumerate(class_names)}
        for row in range(len(probs)):
            named = [index.get(b.decode("utf-8"), -1) for b in got[row]]
            if -1 in named or not np.allclose(probs[row, named], scores[row], rtol=0, atol=1e-7):
                return False
            if names[int(np.argmax(probs[row]))] != got[row][0].decode("utf-8") and \
                    probs[row, named[0]] < probs[row].max():
                return False
    return True


def _report(opts: ExportOptions, src: ExportSource, model_name: str, artifacts: list[Artifact],
            evaluation: clips_mod.ClipSet, representative: clips_mod.ClipSet, inputs: verify.EvalInputs,
            latency_desc: str, ref_latency: dict[str, Any], stage: Path, started: float) -> dict[str, Any]:
    failures = [f"{a.name}: {a.error}" for a in artifacts if a.error] + \
               [f"{a.name}: {f}" for a in artifacts for f in a.failures]
    serving: dict[str, Any] = {}
    if any(a.fmt == "saved_model" and a.error is None for a in artifacts):
        from keras_mgc.export import saved_model

        published = opts.out if not failures else opts.out.with_name(opts.out.name + ".failed")
        serving = {
            "model_name": model_name, "version": opts.version,
            "docker_run": saved_model.docker_command(published.absolute() / "saved_model"),
            "rest": f"http://localhost:8501/v1/models/{model_name}:predict",
            "grpc": "localhost:8500",
        }
    ev = evaluation.summary() | {"n_whole": inputs.n_whole, "n_crops": len(inputs.crops),
                                 "crops_per_clip": opts.eval_crops_per_clip, "crop_samples": src.crop_samples}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return kio.to_jsonable({
        "status": "failed" if failures or not artifacts else "passed",
        "created": utc_now(),
        "seconds": round(time.time() - started, 1),
        "command": opts.command,
        "model_name": model_name,
        "version": opts.version,
        "source": {"checkpoint": str(src.checkpoint), "run_dir": str(src.run_dir) if src.run_dir else None,
                   "fold": src.fold, "recipe": src.recipe.get("name"), "metrics": src.metrics()},
        "class_names": src.class_names,
        "evaluation": ev,
        "representative": representative.summary() | {"n_crops": opts.representative_crops},
        "reference": {"name": "keras", "dft_precision": "float64", "latency_ms": ref_latency},
        "thresholds": {"max_abs_diff_float32": opts.max_abs_diff, "min_top1_agreement": opts.min_agreement},
        "latency": {"clip": latency_desc, "clip_seconds": verify.LATENCY_SECONDS, "runs": opts.latency_runs,
                    "threads": list(opts.latency_threads)},
        "host": {"cpu_count": os.cpu_count(), "loadavg": [round(x, 2) for x in load] if load else None,
                 "versions": package_versions()},
        "artifacts": [a.summary() for a in artifacts],
        "failures": failures,
        "serving": serving,
    })


def _write_metadata(art: Artifact, src: ExportSource, models: Any, report: dict[str, Any]) -> None:
    specs = {entry: meta_mod.io_spec(src, entry, models.embedding_size) for entry in ENTRY_SIGNATURES}
    if art.fmt in ("saved_model", "tflite"):  # one signature per entry point, named by the contract
        entry_points = {ENTRY_SIGNATURES[entry]: spec for entry, spec in specs.items()}
    if art.fmt == "saved_model":
        for spec in entry_points.values():
            spec["outputs"] = spec["outputs"] | {
                "top_classes": {"dtype": "string", "shape": ["batch", "k"], "description": "class names, best first"},
                "top_scores": {"dtype": "float32", "shape": ["batch", "k"], "description": "their probabilities"},
            }
    elif art.fmt == "tflite_task":
        from keras_mgc.export.task_model import task_io_spec

        entry_points = {SIGNATURE: task_io_spec(specs[WAVEFORM_INPUT], art.details["input_shape"][1])}
    elif art.fmt != "tflite":
        entry_points = {art.entries[0]: specs[art.entries[0]]}
    verification = {"passed": art.passed, "thresholds": art.thresholds, "entries": art.results,
                    "latency_ms_30s": art.latency_ms, "evaluation_source": report["evaluation"]["source"],
                    "failures": art.failures, "error": art.error}
    meta = meta_mod.artifact_metadata(
        src, artifact=art.name, fmt=art.fmt, precision=art.precision, dft_precision=art.dft_precision,
        embedding_size=models.embedding_size, entry_points=entry_points,
        extra={"verification": verification, "export_command": report.get("command"),
               "model_name": report.get("model_name"), "version": report.get("version")},
    )
    if art.fmt == "saved_model":
        meta["serving"] = report.get("serving")
        meta_mod.write_side_files(art.path, meta, src.class_names,
                                  json_path=art.path / "assets.extra" / "metadata.json")
    else:
        meta_mod.write_side_files(art.path, meta, src.class_names)


def command_line(argv: list[str]) -> str:
    return "python -m keras_mgc.export " + " ".join(shlex.quote(a) for a in argv)
