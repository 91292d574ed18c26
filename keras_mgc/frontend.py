"""The log-mel front end, as a Keras layer that exports everywhere.

It computes what the authors' torchaudio `MelSpectrogram` + `log(x + 1e-6)` + per-bin mean
subtraction computes (BUILD_NOTES.md, "Design facts"). The spectrum comes from one of three paths
(`spectrum=`), same numbers any way:

- ``"fft"`` (default): windowed frames through a real 2048-point FFT (`tf.signal.rfft`), which
  TensorFlow runs and the TFLite converter lowers to its builtin RFFT2D. About 35x fewer FLOPs
  than the matmul; Keras, training and the SavedModel use it. TFLite's RFFT2D kernel is not
  delegated to XNNPACK and ran 5x slower than the folded matmul (BUILD_NOTES.md "FFT front end").
- ``"matmul"``: the DFT as two real matrix products over the 512 non-zero window samples, for
  targets without a fast FFT (TFLite, whose RFFT2D is slower) or without one at all (ONNX:
  tf2onnx 1.17 cannot convert rfft followed by anything but ComplexAbs); reshape, matmul,
  square and log convert to ONNX and TFLite alike, and run on XNNPACK. The tables are folded
  on the window's symmetry (`dft_tables`), half the multiply-adds of "dense".
- ``"dense"``: the unfolded table (`dense_dft_table`, one 512 x 2 n_bins product): the front end
  every artifact had before issue 14, kept as the benchmark's "before" row
  (`python -m keras_mgc.bench --sections frontend_share`) and as a cross-check of the folding.

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
`table_mode="runtime"` the DFT and mel tables are multiplied by a 1.0 computed from the
input samples, which no converter folds, so they stay float32 (`"runtime_split16"`: each
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

__all__ = ["TABLE_MODES", "SPECTRUM_MODES", "hz_to_mel_htk", "mel_to_hz_htk", "mel_filterbank", "dft_tables",
           "dense_dft_table", "hop_blocks", "frames_from_blocks", "subtract_time_mean",
           "LogMelSpectrogram", "TimeMeanNormalization"]


#: How LogMelSpectrogram holds its DFT and mel tables (see the module docstring).
TABLE_MODES = ("constant", "runtime", "runtime_split16")
#: How LogMelSpectrogram computes the spectrum (see the module docstring).
SPECTRUM_MODES = ("fft", "matmul", "dense")


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


def dft_tables(n_fft: int, win_length: int, bins: slice) -> tuple[np.ndarray, np.ndarray]:
    """Windowed DFT folded on the window's symmetry: (cos table (half+1, n_bins), sin table (half-1, n_bins)).

    Sample m of the frame relative to its centre (m = n - win/2) has phase 2 pi k m / n_fft
    (the offset from the zero padding is a per-bin phase, invisible in the power). The periodic
    Hann is symmetric about the centre and zero at m = -win/2, so with e[m] = y[m] + y[-m] and
    o[m] = y[m] - y[-m] (m = 1 .. win/2 - 1):
    Re X[k] = y[0] w[0] + sum_m e[m] w[m] cos(.),  Im X[k] = -sum_m o[m] w[m] sin(.),
    half the multiply-adds of the unfolded table. Row 0 of the cos table is the centre sample.
    """
    half = win_length // 2
    window = periodic_hann(win_length)[half:]  # w at m = 0 .. half - 1
    k = np.arange(n_fft // 2 + 1, dtype=np.float64)[bins]
    m = np.arange(half, dtype=np.float64)
    phase = 2.0 * np.pi * np.outer(m, k) / n_fft
    return window[:, None] * np.cos(phase), -(window[:, None] * np.sin(phase))[1:]


def dense_dft_table(n_fft: int, win_length: int, bins: slice) -> np.ndarray:
    """Windowed DFT over all `win_length` frame samples, unfolded: (win_length, 2 n_bins), cos then sin.

    The same spectrum as :func:`dft_tables` with twice the multiply-adds (no use of the window's
    symmetry); sample n of the frame sits at n in the n_fft buffer (a per-bin phase, invisible in
    the power).

    >>> dense_dft_table(2048, 512, slice(1, 1024)).shape
    (512, 2046)
    """
    k = np.arange(n_fft // 2 + 1, dtype=np.float64)[bins]
    phase = 2.0 * np.pi * np.outer(np.arange(win_length, dtype=np.float64), k) / n_fft
    window = periodic_hann(win_length)[:, None]
    return np.concatenate([window * np.cos(phase), -window * np.sin(phase)], axis=1)


def periodic_hann(win_length: int) -> np.ndarray:
    """torch.hann_window(win_length) (periodic), float64."""
    n = np.arange(win_length, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)


def hop_blocks(waveform: Any, hop: int) -> Any:
    """(batch, samples) -> (batch, 1 + samples // hop + 1, hop): the reflect-padded signal in hop-sized blocks.

    Frame t of torch.stft (win = 2 hop, centred) is blocks t and t + 1 (module docstring).

    >>> tuple(hop_blocks(np.zeros((2, 1000), "float32"), 256).shape)
    (2, 5, 256)
    """
    n_frames = ops.shape(waveform)[1] // hop + 1
    padded = ops.pad(waveform, [[0, 0], [hop, hop]], mode="reflect")
    return ops.reshape(padded[:, : (n_frames + 1) * hop], [ops.shape(waveform)[0], n_frames + 1, hop])


def frames_from_blocks(blocks: Any) -> Any:
    """(batch, frames + 1, hop) blocks -> (batch, frames, 2 hop) frames: frame t is blocks t and t + 1."""
    return ops.concatenate([blocks[:, :-1], blocks[:, 1:]], axis=-1)


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
        spectrum: str = "fft",
        **kwargs: Any,
    ) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if dft_precision not in ("float32", "float64"):
            raise ValueError(f"dft_precision must be 'float32' or 'float64', got {dft_precision!r}")
        if table_mode not in TABLE_MODES:
            raise ValueError(f"table_mode must be one of {TABLE_MODES}, got {table_mode!r}")
        if spectrum not in SPECTRUM_MODES:
            raise ValueError(f"spectrum must be one of {SPECTRUM_MODES}, got {spectrum!r}")
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
        self.spectrum = spectrum

        fbank = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
        used = np.flatnonzero(fbank.any(axis=1))  # DFT bins that some filter uses
        bins = slice(int(used[0]), int(used[-1]) + 1)
        self._n_bins = bins.stop - bins.start
        # Constants, not weights: they are the definition of the feature, never trained.
        self._bins = bins
        if spectrum == "matmul":
            self._dft_cos, self._dft_sin = (t.astype(dft_precision) for t in dft_tables(n_fft, win_length, bins))
        elif spectrum == "dense":
            self._dft = dense_dft_table(n_fft, win_length, bins).astype(dft_precision)
        else:
            self._window = periodic_hann(win_length).astype(dft_precision)
        self._fbank = fbank[bins].astype("float32")

    def _table(self, table: np.ndarray, waveform: Any) -> Any:
        """A constant table, or (table_mode "runtime*") one the converters cannot fold or quantise."""
        if self.table_mode == "constant":
            return ops.convert_to_tensor(table)
        # 1.0 known only at run time: 1 + min(|first sample|, 0). A shape-based 1.0 is folded
        # by the converter once the input shape is fixed (the task-ready models), which let the
        # dynamic-range quantiser turn the DFT tables into int8.
        one = 1.0 + ops.sum(ops.minimum(ops.abs(ops.cast(waveform[:1, :1], table.dtype)), 0.0))
        if self.table_mode == "runtime_split16":
            hi = table.astype(np.float16).astype(table.dtype)
            lo = (table - hi).astype(np.float16).astype(table.dtype)
            return ops.convert_to_tensor(hi) * one + ops.convert_to_tensor(lo) * one
        return ops.convert_to_tensor(table) * one

    def call(self, waveform: Any) -> Any:
        hop = self.hop_length
        waveform = ops.cast(waveform, self.dft_precision)
        blocks = hop_blocks(waveform, hop)
        if self.spectrum == "matmul":
            # Frame t is blocks t and t+1; its centre is the first sample of block t+1.
            before, after = ops.flip(blocks[:, :-1, 1:], axis=-1), blocks[:, 1:, 1:]  # y[-m], y[m], m >= 1
            even = ops.concatenate([blocks[:, 1:, :1], after + before], axis=-1)
            real = ops.matmul(even, self._table(self._dft_cos, waveform))
            imag = ops.matmul(after - before, self._table(self._dft_sin, waveform))
        elif self.spectrum == "dense":
            spec = ops.matmul(frames_from_blocks(blocks), self._table(self._dft, waveform))
            real, imag = spec[..., : self._n_bins], spec[..., self._n_bins :]
        else:
            frames = frames_from_blocks(blocks)
            # The window's samples sit at the start of the n_fft buffer instead of its centre:
            # a phase shift per bin, which the power does not see.
            real, imag = ops.rfft(frames * self._table(self._window, waveform), fft_length=self.n_fft)
            start, stop = self._bins.start, self._bins.stop
            real, imag = real[..., start:stop], imag[..., start:stop]
        power = ops.cast(real * real + imag * imag, "float32")
        mel = ops.matmul(power, self._table(self._fbank, waveform))
        logmel = ops.log(mel + self.log_offset)
        return subtract_time_mean(logmel) if self.mean_normalize else logmel

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        samples = input_shape[1]
        frames = None if samples is None else samples // self.hop_length + 1
        return (input_shape[0], frames, self.n_mels)

    def flops_per_frame(self) -> int:
        """FLOPs of the spectrum, power and mel product for one frame (for FLOP counts).

        A real FFT of n points counts as 2.5 n log2 n (half the classic 5 n log2 n of a complex one).
        """
        if self.spectrum == "matmul":
            spectrum = self.win_length + 2 * self.win_length * self._n_bins  # folding, then two half tables
        elif self.spectrum == "dense":
            spectrum = 4 * self.win_length * self._n_bins  # one (win, 2 n_bins) product
        else:
            spectrum = self.win_length + int(2.5 * self.n_fft * np.log2(self.n_fft))
        return spectrum + 3 * self._n_bins + 2 * self._n_bins * self.n_mels

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
            spectrum=self.spectrum,
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
