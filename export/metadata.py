"""The JSON that travels beside every artifact, like the metadata published model zoos ship.

`<stem>.json` beside `<stem>.tflite` / `<stem>.onnx` (and `metadata.json` in a SavedModel's
`assets.extra/`), plus `labels.txt` (one class per line, label order). The on-device tagger
reads "class_names", "sample_rate" and "crop_samples"; everything else documents the model.
This module does not import TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keras_mgc import io as kio
from keras_mgc.contract import MEL_INPUT, METADATA_VERSION, WAVEFORM_INPUT
from keras_mgc.environment import package_versions, utc_now
from keras_mgc.export.trained_model import ExportSource
from keras_mgc.models.classifier import frontend_params

__all__ = ["io_spec", "artifact_metadata", "write_side_files"]


_LOGMEL_DOC = ("natural log of (48-bin HTK mel power + 1e-6), NOT normalised (the model removes each "
               "bin's time mean itself, or normalises it over time); frames every 256 samples "
               "(1 + samples // 256 frames)")


def io_spec(source: ExportSource, entry: str, embedding_size: int, input_name: str | None = None) -> dict[str, Any]:
    """Input and outputs of one entry point ("waveform" or "mel")."""
    n = len(source.class_names)
    cfg = source.model_config
    frames = cfg.fixed_frames()  # a model built for one input length (VGG) declares it
    if entry == WAVEFORM_INPUT:
        inp = {"name": input_name or WAVEFORM_INPUT, "dtype": "float32", "shape": ["batch", "samples"],
               "sample_rate": source.sample_rate, "channels": 1, "min_samples": source.crop_samples,
               "description": f"mono audio at {source.sample_rate} Hz, float32 in [-1, 1], any length >= "
                              f"one crop ({source.crop_samples} samples); one row per clip (rows of one batch "
                              "share a length)"}
        samples = cfg.fixed_samples()
        if samples is not None:
            inp.update(shape=["batch", samples], description=(
                f"mono audio at {source.sample_rate} Hz, float32 in [-1, 1], exactly {samples} samples: the model "
                f"is built for one input length; average its probabilities over windows of it for a longer clip"))
    else:
        inp = {"name": input_name or MEL_INPUT, "dtype": "float32",
               "shape": ["batch", "frames" if frames is None else frames, cfg.frontend.n_mels],
               "description": _LOGMEL_DOC}
    outputs = {
        "probabilities": {"dtype": "float32", "shape": ["batch", n], "description": "softmax over class_names"},
        "embedding": {"dtype": "float32", "shape": ["batch", embedding_size],
                      "description": "pooled vector before the head ([attentive mean, attentive std]); "
                                     "for similarity search"},
    }
    return {"input": inp, "outputs": outputs}


def artifact_metadata(
    source: ExportSource,
    *,
    artifact: str,
    fmt: str,
    precision: str,
    dft_precision: str,
    embedding_size: int,
    entry_points: dict[str, dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a consumer of one artifact needs to know, in one JSON object."""
    from keras_mgc import __version__

    primary = next(iter(entry_points.values()))
    frontend = frontend_params(source.model_config)
    f_max = frontend["f_max"] if frontend["f_max"] is not None else source.sample_rate / 2
    frontend.update(f_max=f_max, window="hann (periodic)", center=True, pad_mode="reflect", power=2.0,
                    mel_scale="htk", mel_norm=None, log="natural log(mel + log_offset)",
                    dft_precision=dft_precision)
    meta = {
        "metadata_version": METADATA_VERSION,
        "artifact": artifact,
        "format": fmt,
        "precision": precision,
        "class_names": list(source.class_names),
        "num_classes": len(source.class_names),
        "sample_rate": source.sample_rate,
        "crop_samples": source.crop_samples,
        "crop_seconds": round(source.crop_samples / source.sample_rate, 4),
        "frontend": frontend,
        "input": primary["input"],
        "outputs": primary["outputs"],
        "entry_points": entry_points,
        "model": source.model_config.model_dump(mode="json"),
        "training": source.training_info(),
        "metrics": source.metrics(),
        "keras_mgc_version": __version__,
        "versions": package_versions(),
        "created": utc_now(),
    }
    if extra:
        meta.update(extra)
    return kio.to_jsonable(meta)


def write_side_files(artifact_path: Path, meta: dict[str, Any], class_names: list[str],
                     json_path: Path | None = None) -> Path:
    """`<stem>.json` (or `json_path`) and `labels.txt` beside an artifact; returns the JSON path."""
    json_path = json_path or artifact_path.with_suffix(".json")
    kio.write_json(json_path, meta)
    kio.write_text(json_path.parent / "labels.txt", "\n".join(class_names) + "\n")
    return json_path
