"""The contract between an exported model and everything that runs it, defined once.

Every artifact (SavedModel, TFLite, ONNX) and every consumer (the on-device tagger
`keras_mgc.tag`, the TF Serving client, the exporter's verification) uses these names:

- signature ``serving_default`` (`SIGNATURE`): input ``waveform`` float32 [batch, samples],
  mono audio at the metadata's ``sample_rate``;
- signature ``classify_mel`` (`MEL_SIGNATURE`): input ``mel`` float32 [batch, frames, n_mels]
  log-mels (TFLite files exported before issue 10 call it ``mel``: `LEGACY_MEL_SIGNATURES`);
- outputs ``probabilities`` [batch, n_classes] (softmax applied) and ``embedding`` [batch, D]
  (the SavedModel adds ``top_classes`` and ``top_scores``);
- metadata JSON beside the artifact (`<stem>.json`) with the keys in `METADATA_KEYS`, and
  ``labels.txt`` (one class per line) as the fallback for the class names.

`check_signatures` is the one check of a TFLite model's contract, used by the exporter
(`keras_mgc.export.tflite.check_contract`) and the tagger (`keras_mgc.tag.Tagger`). Rule:
fixed input dimensions are legitimate (a fixed-length baseline, a task model with a fixed
window), so the check accepts them and reports them (`SignatureReport.fixed_samples`); what
it rejects is a missing signature, wrong names, a non-float32 input, a wrong rank, or an
output whose size does not match the class names.

This module imports nothing beyond the standard library and NumPy (the tagger runs without
TensorFlow).

>>> DEFAULT_CROP_SAMPLES, round(DEFAULT_CROP_SAMPLES / DEFAULT_SAMPLE_RATE, 2)
(44356, 2.01)
>>> crop_frames(DEFAULT_CROP_SAMPLES)
174
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "SIGNATURE", "MEL_SIGNATURE", "LEGACY_MEL_SIGNATURES", "WAVEFORM_INPUT", "MEL_INPUT", "PROBABILITIES",
    "EMBEDDING", "OUTPUTS", "SIGNATURES", "ENTRY_SIGNATURES", "DEFAULT_SAMPLE_RATE", "DEFAULT_CROP_SAMPLES",
    "HOP_LENGTH", "METADATA_KEYS", "METADATA_VERSION", "crop_frames", "ContractError", "SignatureReport",
    "check_signatures", "mel_signature_name",
]

#: The waveform entry point (TF Serving's default signature key).
SIGNATURE = "serving_default"
#: The log-mel entry point, in every format.
MEL_SIGNATURE = "classify_mel"
#: Older names of the log-mel entry point still read (TFLite files exported before issue 10).
LEGACY_MEL_SIGNATURES = ("mel",)
WAVEFORM_INPUT = "waveform"
MEL_INPUT = "mel"
PROBABILITIES = "probabilities"
EMBEDDING = "embedding"
#: Outputs every format has (sorted, as LiteRT lists them).
OUTPUTS = (EMBEDDING, PROBABILITIES)
#: Signature key -> its one input name.
SIGNATURES = {SIGNATURE: WAVEFORM_INPUT, MEL_SIGNATURE: MEL_INPUT}
#: Entry ("waveform" or "mel", as the exporter and verification name them) -> signature key.
ENTRY_SIGNATURES = {WAVEFORM_INPUT: SIGNATURE, MEL_INPUT: MEL_SIGNATURE}

#: The paper's sample rate (the front end's and every artifact's default).
DEFAULT_SAMPLE_RATE = 22050
#: The paper's training crop: 44,356 samples (about 2.01 s at 22,050 Hz, 174 mel frames).
DEFAULT_CROP_SAMPLES = 44356
#: The front end's mel hop (samples per frame).
HOP_LENGTH = 256

#: Bumped when a metadata key changes meaning.
METADATA_VERSION = 1
#: Metadata keys a consumer reads ("class_names", "sample_rate" and "crop_samples" by the tagger).
METADATA_KEYS = ("metadata_version", "class_names", "num_classes", "sample_rate", "crop_samples", "crop_seconds",
                 "frontend", "input", "outputs", "entry_points")


def crop_frames(samples: int, hop: int = HOP_LENGTH) -> int:
    """Mel frames of `samples` samples with the centred front end: 1 + samples // hop."""
    return 1 + samples // hop


class ContractError(ValueError):
    """A model does not follow the contract; the message says what it has and what was expected."""


@dataclass(frozen=True)
class SignatureReport:
    """What `check_signatures` found: fixed dimensions (None where resizable) and optional parts."""

    fixed_batch: int | None
    fixed_samples: int | None
    has_embedding: bool
    mel_signature: str | None  # the log-mel signature's key, None when the model has none
    details: dict[str, Any]  # signature -> {"inputs"/"outputs": name -> {"dtype", "shape_signature"}}


def mel_signature_name(signatures: dict[str, Any]) -> str | None:
    """The key of the log-mel signature in a model's signature list (current or legacy name)."""
    for key in (MEL_SIGNATURE, *LEGACY_MEL_SIGNATURES):
        if key in signatures:
            return key
    return None


def _shape(spec: dict[str, Any]) -> list[int]:
    return [int(d) for d in spec.get("shape_signature", spec["shape"])]


def _describe(runner: Any) -> dict[str, Any]:
    return {side: {name: {"dtype": np.dtype(v["dtype"]).name, "shape_signature": _shape(v)}
                   for name, v in getter().items()}
            for side, getter in (("inputs", runner.get_input_details), ("outputs", runner.get_output_details))}


def check_signatures(interpreter: Any, num_classes: int, *, embedding_size: int | None = None,
                     n_mels: int | None = None, require_mel: bool = False,
                     labels_source: str = "the metadata") -> SignatureReport:
    """Check a LiteRT interpreter's signatures against the contract; returns what it found.

    `num_classes`: the size the "probabilities" output must have. `embedding_size`: when
    given, the "embedding" output is required with this size (the exporter); otherwise it
    is optional (the tagger). `require_mel`: the log-mel signature must exist, with input
    [batch, frames, `n_mels`]. Fixed input dimensions are accepted and reported.
    `labels_source` names where the class names came from, for the message.
    Raises ContractError naming the signature, tensor and expected form.
    """
    signatures = interpreter.get_signature_list()
    expected = (f'the contract needs a "{SIGNATURE}" signature with input "{WAVEFORM_INPUT}" '
                f'float32 [batch, samples] and output "{PROBABILITIES}" [batch, classes]')
    sig = signatures.get(SIGNATURE)
    if sig is None:
        found = ", ".join(f'"{k}"' for k in signatures) or "none"
        raise ContractError(f"{expected}; the model's signatures: {found}")
    if sig["inputs"] != [WAVEFORM_INPUT] or PROBABILITIES not in sig["outputs"]:
        raise ContractError(f'{expected}; its "{SIGNATURE}" takes {sig["inputs"]} and returns {sig["outputs"]}')
    has_embedding = EMBEDDING in sig["outputs"]
    if embedding_size is not None and sorted(sig["outputs"]) != sorted(OUTPUTS):
        raise ContractError(f'signature "{SIGNATURE}" returns {sig["outputs"]}, expected {sorted(OUTPUTS)}')
    mel_key = mel_signature_name(signatures)
    if require_mel:
        if mel_key is None:
            raise ContractError(f'the model lacks signature "{MEL_SIGNATURE}" (has {sorted(signatures)})')
        mel = signatures[mel_key]
        if mel["inputs"] != [MEL_INPUT] or sorted(mel["outputs"]) != sorted(OUTPUTS):
            raise ContractError(f'signature "{mel_key}" is {mel}, expected inputs [{MEL_INPUT!r}] '
                                f"and outputs {sorted(OUTPUTS)}")
    details = {SIGNATURE: _describe(interpreter.get_signature_runner(SIGNATURE))}
    if require_mel:  # mel_key is set: checked above
        details[mel_key] = _describe(interpreter.get_signature_runner(mel_key))

    wave_in = details[SIGNATURE]["inputs"][WAVEFORM_INPUT]
    if wave_in["dtype"] != "float32" or len(wave_in["shape_signature"]) != 2:
        raise ContractError(f'input "{WAVEFORM_INPUT}" must be float32 [batch, samples], got {wave_in["dtype"]} '
                            f'of rank {len(wave_in["shape_signature"])}')
    if require_mel:
        got = details[mel_key]["inputs"][MEL_INPUT]["shape_signature"]
        if len(got) != 3 or (n_mels is not None and got[-1] != n_mels):
            raise ContractError(f'input "{mel_key}/{MEL_INPUT}" has shape signature {got}, '
                                f"expected [batch, frames, {n_mels}]")
    for key, spec in details.items():
        for name, tensor in {**spec["inputs"], **spec["outputs"]}.items():
            if tensor["dtype"] != "float32":
                raise ContractError(f'signature "{key}" tensor "{name}" is {tensor["dtype"]}, expected float32')
        sizes = {PROBABILITIES: num_classes, EMBEDDING: embedding_size}
        for name, size in sizes.items():
            if name not in spec["outputs"] or size is None:
                continue
            got = spec["outputs"][name]["shape_signature"]
            if len(got) != 2 or got[-1] != size:
                what = f"{labels_source} names {size} classes" if name == PROBABILITIES else f"embedding size {size}"
                raise ContractError(f'output "{name}" of "{key}" has shape {got} but {what}')
    batch, samples = wave_in["shape_signature"]
    return SignatureReport(fixed_batch=batch if batch > 0 else None, fixed_samples=samples if samples > 0 else None,
                           has_embedding=has_embedding, mel_signature=mel_key, details=details)
