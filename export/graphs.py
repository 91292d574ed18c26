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

Quantised TFLite models must keep the front end in float: int8 audio frames or int8 powers
wipe out the quiet mel bins. The converter offers no per-op opt-out for dynamic-range
quantisation and stores every float constant as float16 in float16 mode, so
`QuantisationSafeLogMel` keeps its DFT and mel tables out of the constant pool: they are
multiplied by a 1.0 that depends on the input's shape, which no converter folds (float16:
the tables are split into a float16 high part and a float16 low part, summed at run time, so
they keep ~22 bits). The math is `LogMelSpectrogram`'s own `call`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_mgc.frontend import LogMelSpectrogram

#: Table modes of `QuantisationSafeLogMel`.
TABLE_MODES = ("constant", "runtime", "runtime_split16")


@keras.saving.register_keras_serializable(package="keras_mgc_export")
class QuantisationSafeLogMel(LogMelSpectrogram):
    """`LogMelSpectrogram` whose tables are computed at run time (see the module docstring)."""

    def __init__(self, table_mode: str = "runtime", **kwargs: Any) -> None:
        if table_mode not in TABLE_MODES:
            raise ValueError(f"table_mode must be one of {TABLE_MODES}, got {table_mode!r}")
        super().__init__(**kwargs)
        self.table_mode = table_mode

    def _runtime_table(self, table: np.ndarray, one: Any) -> Any:
        dtype = table.dtype
        if self.table_mode == "runtime_split16":
            hi = table.astype(np.float16).astype(dtype)
            lo = (table - hi).astype(np.float16).astype(dtype)
            return ops.convert_to_tensor(hi) * one + ops.convert_to_tensor(lo) * one
        return ops.convert_to_tensor(table) * one

    def call(self, waveform: Any) -> Any:
        if self.table_mode == "constant":
            return super().call(waveform)
        # 1.0, but only known at run time: the batch size is never negative.
        one = ops.cast(ops.shape(waveform)[0] >= 0, "float32")
        saved = self._dft, self._fbank
        try:
            self._dft = self._runtime_table(saved[0], ops.cast(one, saved[0].dtype))
            self._fbank = self._runtime_table(saved[1], one)
            return super().call(waveform)
        finally:
            self._dft, self._fbank = saved

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"table_mode": self.table_mode}


def frontend_params(cfg: Any) -> dict[str, Any]:
    """All front-end parameters of a model config, as `LogMelSpectrogram` takes them."""
    fe = cfg.frontend
    return dict(sample_rate=fe.sample_rate, n_fft=fe.n_fft, win_length=fe.win_length, hop_length=fe.hop_length,
                n_mels=fe.n_mels, f_min=fe.f_min, f_max=fe.f_max, log_offset=fe.log_offset,
                mean_normalize=fe.mean_normalize)


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

    @property
    def embedding_size(self) -> int:
        return int(self.model.get_layer("backbone").output_shape[-1])

    def waveform(self, dft_precision: str = "float64", table_mode: str = "constant") -> keras.Model:
        """waveform -> {"logits", "embedding"} with the given front-end precision."""
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")
        try:
            inputs = keras.Input((None,), name="waveform")
            params = frontend_params(self.cfg) | {"dft_precision": dft_precision}
            if table_mode == "constant":
                frontend = LogMelSpectrogram(**params, name="frontend")
            else:
                frontend = QuantisationSafeLogMel(table_mode=table_mode, **params, name="frontend")
            embedding = self.model.get_layer("backbone")(frontend(inputs))
            logits = self.model.get_layer("head")(embedding)
            return keras.Model(inputs, {"logits": logits, "embedding": embedding},
                               name=f"waveform_{dft_precision}_{table_mode}")
        finally:
            keras.mixed_precision.set_global_policy(previous)

    def mel(self) -> keras.Model:
        """log-mel (batch, frames, n_mels) -> {"logits", "embedding"}."""
        from keras_mgc.models import with_input

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
    return {"probabilities": ops.softmax(outputs["logits"], axis=-1), "embedding": outputs["embedding"]}
