"""The log-mel front end, as a Keras layer that exports everywhere.

It computes what the authors' torchaudio `MelSpectrogram` + `log(x + 1e-6)` + per-bin mean
subtraction computes (BUILD_NOTES.md, "Design facts"), but the DFT is two real matrix products instead
of `tf.signal.rfft`: tf2onnx cannot convert rfft followed by anything but ComplexAbs, while
reshape, matmul, square and log convert to TFLite builtins and to ONNX alike.

Framing trick: torch.stft centres a `win_length` window inside `n_fft` and frames the
reflect-padded signal every `hop_length` samples. Only the `win_length` windowed samples
are non-zero, and they are ``x[t*hop - win/2 : t*hop + win/2]``. With ``win = 2 * hop``
every frame is two consecutive hop-sized blocks of the signal padded by `hop` on each side,
so framing is one reshape and one concatenation (no gather, no strided conv). The DFT
phase offset from the zero padding does not change the power, so the tables need only the
`win_length` non-zero rows.

Precision: the DFT and the power are computed in float64 by default. In float32 the
highest mel bins of loud frames (power ~1e-9 of the frame's, near the 1e-6 log floor)
come out up to 2.3e-4 off in log-mel on real GTZAN clips, whatever the summation order
(BUILD_NOTES.md); float64 costs ~3% of a training step. TFLite has no float64 matmul, so
exported artifacts use `dft_precision="float32"`.

Quantised TFLite models must keep the front end in float (int8 frames or powers wipe out
the quiet mel bins), but the converter has no per-op opt-out for dynamic-range
quantisation and stores every float constant as float16 in float16 mode. With
`table_mode="runtime"` the DFT and mel tables are multiplied by a 1.0 that depends on the
input's shape, which no converter folds, so they stay float32 (`"runtime_split16"`: each
table is a float16 high part plus a float16 low part summed at run time, ~22 bits, for
float16 artifacts). Same numbers as "constant", the default.

Example:
    >>> layer = LogMelSpectrogram()
    >>> layer(np.zeros((2, 44356), "float32")).shape   # 1 + 44356 // 256 frames
    TensorShape([2, 174, 48])
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from keras_mgc.contract import DEFAULT_SAMPLE_RATE

__all__ = ["TABLE_MODES", "hz_to_mel_htk", "mel_to_hz_htk", "mel_filterbank", "dft_tables", "subtract_time_mean",
           "LogMelSpectrogram", "TimeMeanNormalization"]


#: How LogMelSpectrogram holds its DFT and mel tables (see the module docstring).
TABLE_MODES = ("constant", "runtime", "runtime_split16")


def hz_to_mel_htk(freq: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def mel_to_hz_htk(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel_htk`."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int = DEFAULT_SAMPLE_RATE, n_fft: int = 2048, n_mels: int = 48, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Triangular HTK mel filters, shape (n_fft // 2 + 1, n_mels), float64, no area normalisation.

    Same construction as torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk").
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    all_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    f_pts = mel_to_hz_htk(np.linspace(hz_to_mel_htk(f_min), hz_to_mel_htk(f_max), n_mels + 2))
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - all_freqs[:, None]  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


def dft_tables(n_fft: int, win_length: int, bins: slice) -> np.ndarray:
    """Windowed DFT as one real matrix (win_length, 2 * n_bins): [cos | sin] columns.

    Periodic Hann of `win_length` folded in; rows are the non-zero window samples only.
    """
    n = np.arange(win_length, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)  # periodic Hann (torch.hann_window)
    k = np.arange(n_fft // 2 + 1, dtype=np.float64)[bins]
    phase = 2.0 * np.pi * np.outer(n, k) / n_fft
    return np.concatenate([window[:, None] * np.cos(phase), window[:, None] * np.sin(phase)], axis=1)


def subtract_time_mean(features: Any) -> Any:
    """Per-example, per-bin mean subtraction over time (axis 1); no variance normalisation."""
    return features - ops.mean(features, axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package="keras_mgc")
class LogMelSpectrogram(keras.layers.Layer):
    """Waveform (batch, samples) at `sample_rate` -> log-mel (batch, 1 + samples // hop, n_mels).

    Needs more than `hop_length` samples (reflect padding). Always computes in float32,
    whatever the global mixed-precision policy: log of small powers is not a float16 job.
    """

    def __init__(
        self,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        n_fft: int = 2048,
        win_length: int = 512,
        hop_length: int = 256,
        n_mels: int = 48,
        f_min: float = 0.0,
        f_max: float | None = None,
        log_offset: float = 1e-6,
        mean_normalize: bool = True,
        dft_precision: str = "float64",
        table_mode: str = "constant",
        **kwargs: Any,
    ) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if dft_precision not in ("float32", "float64"):
            raise ValueError(f"dft_precision must be 'float32' or 'float64', got {dft_precision!r}")
        if table_mode not in TABLE_MODES:
            raise ValueError(f"table_mode must be one of {TABLE_MODES}, got {table_mode!r}")
        if win_length != 2 * hop_length or win_length > n_fft:
            raise ValueError(
                f"LogMelSpectrogram needs win_length == 2 * hop_length <= n_fft, got "
                f"win_length={win_length}, hop_length={hop_length}, n_fft={n_fft}"
            )
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.f_min = f_min
        self.f_max = f_max
        self.log_offset = log_offset
        self.mean_normalize = mean_normalize
        self.dft_precision = dft_precision
        self.table_mode = table_mode

        fbank = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
        used = np.flatnonzero(fbank.any(axis=1))  # DFT bins that some filter uses
        bins = slice(int(used[0]), int(used[-1]) + 1)
        self._n_bins = bins.stop - bins.start
        # Constants, not weights: they are the definition of the feature, never trained.
        self._dft = dft_tables(n_fft, win_length, bins).astype(dft_precision)
        self._fbank = fbank[bins].astype("float32")

    def _table(self, table: np.ndarray, waveform: Any) -> Any:
        """A constant table, or (table_mode "runtime*") one the converters cannot fold or quantise."""
        if self.table_mode == "constant":
            return ops.convert_to_tensor(table)
        one = ops.cast(ops.shape(waveform)[0] >= 0, table.dtype)  # 1.0, known only at run time
        if self.table_mode == "runtime_split16":
            hi = table.astype(np.float16).astype(table.dtype)
            lo = (table - hi).astype(np.float16).astype(table.dtype)
            return ops.convert_to_tensor(hi) * one + ops.convert_to_tensor(lo) * one
        return ops.convert_to_tensor(table) * one

    def call(self, waveform: Any) -> Any:
        hop = self.hop_length
        waveform = ops.cast(waveform, self.dft_precision)
        n_frames = ops.shape(waveform)[1] // hop + 1
        padded = ops.pad(waveform, [[0, 0], [hop, hop]], mode="reflect")
        blocks = ops.reshape(padded[:, : (n_frames + 1) * hop], [ops.shape(waveform)[0], n_frames + 1, hop])
        frames = ops.concatenate([blocks[:, :-1], blocks[:, 1:]], axis=-1)  # (batch, frames, win)
        spec = ops.matmul(frames, self._table(self._dft, waveform))
        real, imag = spec[..., : self._n_bins], spec[..., self._n_bins :]
        power = ops.cast(real * real + imag * imag, "float32")
        mel = ops.matmul(power, self._table(self._fbank, waveform))
        logmel = ops.log(mel + self.log_offset)
        return subtract_time_mean(logmel) if self.mean_normalize else logmel

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        samples = input_shape[1]
        frames = None if samples is None else samples // self.hop_length + 1
        return (input_shape[0], frames, self.n_mels)

    def flops_per_frame(self) -> int:
        """Multiply-adds x2 of the DFT and mel products for one frame (for FLOP counts)."""
        return 2 * self.win_length * 2 * self._n_bins + 3 * self._n_bins + 2 * self._n_bins * self.n_mels

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            sample_rate=self.sample_rate,
            n_fft=self.n_fft,
            win_length=self.win_length,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            f_min=self.f_min,
            f_max=self.f_max,
            log_offset=self.log_offset,
            mean_normalize=self.mean_normalize,
            dft_precision=self.dft_precision,
            table_mode=self.table_mode,
        )
        config.pop("dtype", None)
        return config


@keras.saving.register_keras_serializable(package="keras_mgc")
class TimeMeanNormalization(keras.layers.Layer):
    """Precomputed mels (batch, frames, bins) -> the same with each bin's time mean removed.

    The mel-input path (Melon ships 48-bin mels) gets the same normalisation as audio.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)

    def call(self, mel: Any) -> Any:
        return subtract_time_mean(ops.cast(mel, "float32"))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("dtype", None)
        return config
