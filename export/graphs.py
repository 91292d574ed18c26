"""Serving graphs: the trained backbone and head behind a waveform or a log-mel entry point.

`ServingModels.load` rebuilds the checkpoint in float32 (`keras_mgc.models.load_float32`, so a
model trained under mixed precision exports as float32) and builds entry graphs that share its
weights:

- waveform (batch, samples) at 22,050 Hz -> log-mel front end -> backbone -> head;
- mel (batch, frames, 48) log-mels (log(mel power + 1e-6), not mean-normalised: the model
  removes each bin's time mean itself) -> backbone -> head.

Both return {"probabilities": softmax(logits), "embedding": pooled vector}.

Front-end precision per artifact (BUILD_NOTES.md, "Export"): the reference is the Keras model
with its float64 DFT. SavedModel keeps float64 (TensorFlow runs it; identical to Keras, ~3%
slower). TFLite has no float64 matmul and ONNX Runtime's float64 matmul made the whole
small model 3x slower for no measurable gain (1.6e-6 vs 1.5e-6), so both use float32.
SavedModel computes the spectrum with an FFT (TensorFlow's rfft); TFLite and ONNX with the
folded DFT matmul (`spectrum="matmul"`): TFLite's RFFT2D ran slower than the matmul and
tf2onnx 1.17 cannot convert rfft with a dynamic length (BUILD_NOTES.md "FFT front end").

Quantised TFLite models must keep the front end in float: int8 audio frames or int8 powers
wipe out the quiet mel bins. The converter offers no per-op opt-out for dynamic-range
quantisation and stores every float constant as float16 in float16 mode, so quantised
artifacts build the front end with `LogMelSpectrogram(table_mode="runtime"` or
`"runtime_split16")`, which keeps the DFT and mel tables out of the constant pool
(keras_mgc/frontend.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_mgc.contract import EMBEDDING, MEL_INPUT, PROBABILITIES, WAVEFORM_INPUT
from keras_mgc.frontend import LogMelSpectrogram
from keras_mgc.models.classifier import frontend_params, with_input

__all__ = ["ServingModels", "probabilities_and_embedding"]

@dataclass
class ServingModels:
    """The float32 model rebuilt from a checkpoint, and entry graphs sharing its weights."""

    model: keras.Model  # as trained: its own input kind -> logits (float32, float64 DFT)
    cfg: Any
    num_classes: int

    @classmethod
    def load(cls, checkpoint: str, cfg: Any, num_classes: int) -> "ServingModels":
        from keras_mgc.models import load_float32

        model = load_float32(str(checkpoint), cfg, num_classes)
        for weight in model.weights:
            if weight.dtype != "float32":
                raise ValueError(f"{checkpoint}: weight {weight.path} is {weight.dtype} after the float32 rebuild")
        return cls(model=model, cfg=cfg, num_classes=num_classes)

    def input_shape(self, entry: str) -> list[int | None]:
        """An entry point's input shape: [batch, samples] or [batch, frames, n_mels], None where free.

        Free lengths except for a model built for one input length (VGG's first dense layer):
        its artifacts declare that length (`ModelConfigBase.fixed_frames`).
        """
        if entry == WAVEFORM_INPUT:
            return [None, self.cfg.fixed_samples()]
        if entry == MEL_INPUT:
            return [None, self.cfg.fixed_frames(), self.cfg.frontend.n_mels]
        raise ValueError(f"unknown entry point {entry!r} (expected {WAVEFORM_INPUT!r} or {MEL_INPUT!r})")

    def input_spec(self, entry: str) -> Any:
        """The tf.TensorSpec every exporter declares for an entry point (named as the contract says)."""
        import tensorflow as tf

        return tf.TensorSpec(self.input_shape(entry), tf.float32, name=entry)

    @property
    def embedding_size(self) -> int:
        return int(self.model.get_layer("backbone").output_shape[-1])

    def waveform(self, dft_precision: str = "float64", table_mode: str = "constant",
                 spectrum: str = "fft") -> keras.Model:
        """waveform -> {"logits", "embedding"} with the given front-end precision and spectrum path."""
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")
        try:
            return with_input(self.model, "waveform", self.cfg, dft_precision=dft_precision, table_mode=table_mode,
                              spectrum=spectrum)
        finally:
            keras.mixed_precision.set_global_policy(previous)

    def mel(self) -> keras.Model:
        """log-mel (batch, frames, n_mels) -> {"logits", "embedding"}."""
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")
        try:
            return with_input(self.model, "mel", self.cfg)
        finally:
            keras.mixed_precision.set_global_policy(previous)

    def log_mel(self, waveform: np.ndarray) -> np.ndarray:
        """Log-mels as the mel entry point takes them (float64 DFT, no mean removal)."""
        params = frontend_params(self.cfg) | {"mean_normalize": False}
        layer = getattr(self, "_raw_logmel", None)
        if layer is None:
            layer = self._raw_logmel = LogMelSpectrogram(**params)
        return np.asarray(layer(np.asarray(waveform, np.float32)), np.float32)


def probabilities_and_embedding(outputs: dict[str, Any]) -> dict[str, Any]:
    """The artifacts' outputs from an entry graph's {"logits", "embedding"}."""
    return {PROBABILITIES: ops.softmax(outputs["logits"], axis=-1), EMBEDDING: outputs["embedding"]}
