"""Independent float64 NumPy reference for the model's log-mel front end.

What it mirrors
---------------
The paper authors' PyTorch front end, i.e. ``torchaudio.transforms.MelSpectrogram``
with these arguments (everything else at torchaudio's defaults) followed by a
log and a per-clip, per-mel-bin mean subtraction::

    MelSpectrogram(sample_rate=22050, n_fft=2048, win_length=512,
                   hop_length=256, f_min=0.0, f_max=None (-> 11025),
                   n_mels=48, window_fn=torch.hann_window, power=2.0,
                   center=True, pad_mode="reflect", norm=None,
                   mel_scale="htk")
    feats = log(mel + 1e-6); feats -= feats.mean(over time)

Step by step:

* STFT as ``torch.stft(x, n_fft=2048, hop_length=256, win_length=512,
  window=torch.hann_window(512), center=True, pad_mode="reflect")``:
  - the window is the *periodic* Hann window of 512 samples,
    ``0.5 - 0.5*cos(2*pi*n/512)``, zero-padded *symmetrically* to 2048
    (768 zeros on the left, 768 on the right), exactly as torch.stft does
    when ``win_length < n_fft``;
  - the signal is reflect-padded (edge sample not repeated, like
    ``numpy.pad(mode="reflect")`` / ``torch.nn.functional.pad(mode="reflect")``)
    by ``n_fft // 2 = 1024`` samples on both sides;
  - frame ``t`` is ``padded[256*t : 256*t + 2048]``, so a clip of ``N``
    samples gives ``1 + N // 256`` frames, and frame ``t`` is effectively
    the original samples ``x[256*t - 256 : 256*t + 256]`` (reflected at the
    edges) under the 512-point Hann window;
  - one-sided DFT of length 2048 -> 1025 frequency bins.
* Power spectrum ``|X|**2``.
* HTK mel filterbank as ``torchaudio.functional.melscale_fbanks(n_freqs=1025,
  f_min=0, f_max=11025, n_mels=48, sample_rate=22050, norm=None,
  mel_scale="htk")``: bin frequencies ``linspace(0, sr // 2, 1025)``, mel
  points ``linspace(mel(f_min), mel(f_max), n_mels + 2)`` with
  ``mel(f) = 2595 * log10(1 + f / 700)``, triangular filters that peak at 1.0
  at the centre frequencies, no area ("slaney") normalisation.
* ``mel = power @ fb`` -> (frames, 48); ``log(mel + 1e-6)``; subtract each mel
  bin's mean over the frames of the clip. No variance normalisation.

Why it is independent
---------------------
It is written from the definition above (torch / torchaudio semantics), in
plain float64 NumPy, the straightforward way: explicit reflect padding,
explicit framing with a loop-free gather of 2048-sample frames, explicit
multiplication by the zero-padded window, ``numpy.fft.rfft`` and an explicit
filterbank built from the HTK formula. It shares no code, constants or helper
functions with the project's TensorFlow front end (``keras_mgc``), so tests can
use it to check that front end without checking it against itself. It was
cross-checked once (outside the repository) against torch 2.13.0's
``torch.stft``, torchaudio's ``melscale_fbanks`` and librosa's
``filters.mel(htk=True, norm=None)``.

Shapes: everything here is time-major, ``(frames, ...)``; torch returns
``(freq, frames)``, i.e. the transpose.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 22050
N_FFT = 2048
WIN_LENGTH = 512
HOP_LENGTH = 256
N_MELS = 48
F_MIN = 0.0
F_MAX = SAMPLE_RATE / 2.0  # torchaudio: f_max=None -> float(sample_rate // 2)
LOG_OFFSET = 1e-6

#: The GTZAN clips (under gtzan-mini/) where a float32 DFT is furthest from this reference
#: (BUILD_NOTES.md, "front-end precision"): the precision checks of the front end and of every
#: spectrum candidate (scripts/frontend_candidates.py) use them.
WORST_FLOAT32 = ["rock/rock.00007", "hiphop/hiphop.00003", "hiphop/hiphop.00004", "blues/blues.00006"]

__all__ = [
    "WORST_FLOAT32",
    "SAMPLE_RATE",
    "N_FFT",
    "WIN_LENGTH",
    "HOP_LENGTH",
    "N_MELS",
    "F_MIN",
    "F_MAX",
    "LOG_OFFSET",
    "hz_to_mel_htk",
    "mel_to_hz_htk",
    "periodic_hann",
    "padded_window",
    "num_frames",
    "reference_frames",
    "reference_power_spectrogram",
    "reference_mel_filterbank",
    "reference_logmel",
]


def hz_to_mel_htk(f):
    """HTK mel scale: ``2595 * log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz_htk(m):
    """Inverse of :func:`hz_to_mel_htk`: ``700 * (10**(m / 2595) - 1)``."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def periodic_hann(win_length: int = WIN_LENGTH) -> np.ndarray:
    """``torch.hann_window(win_length)`` (periodic=True) in float64."""
    n = np.arange(win_length, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)


def padded_window(n_fft: int = N_FFT, win_length: int = WIN_LENGTH) -> np.ndarray:
    """The Hann window centred in ``n_fft`` zeros, as torch.stft pads it.

    torch.stft puts ``(n_fft - win_length) // 2`` zeros on the left and the
    rest on the right (768 / 768 for 2048 / 512).
    """
    if win_length > n_fft:
        raise ValueError("win_length must be <= n_fft")
    left = (n_fft - win_length) // 2
    w = np.zeros(n_fft, dtype=np.float64)
    w[left : left + win_length] = periodic_hann(win_length)
    return w


def num_frames(n_samples: int, hop_length: int = HOP_LENGTH) -> int:
    """Frames produced by a centred STFT: ``1 + n_samples // hop_length``."""
    return 1 + int(n_samples) // hop_length


def _as_mono_float64(waveform) -> np.ndarray:
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D mono waveform, got shape {x.shape}")
    return x


def reference_frames(
    waveform: np.ndarray,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
) -> np.ndarray:
    """Reflect-pad by ``n_fft // 2`` and cut ``(frames, n_fft)`` frames.

    No window is applied. Like torch's reflect padding, this requires the
    signal to be longer than the pad (``len(waveform) > n_fft // 2``).
    """
    x = _as_mono_float64(waveform)
    pad = n_fft // 2
    if x.shape[0] <= pad:
        raise ValueError(
            f"reflect padding by {pad} needs more than {pad} samples, got {x.shape[0]}"
        )
    padded = np.pad(x, (pad, pad), mode="reflect")
    n_frames = 1 + (padded.shape[0] - n_fft) // hop_length
    starts = hop_length * np.arange(n_frames)
    idx = starts[:, None] + np.arange(n_fft)[None, :]
    return padded[idx]


def reference_power_spectrogram(
    waveform: np.ndarray,
    n_fft: int = N_FFT,
    win_length: int = WIN_LENGTH,
    hop_length: int = HOP_LENGTH,
) -> np.ndarray:
    """``|torch.stft(...)|**2`` with the front end's parameters, float64.

    Returns an array of shape ``(1 + N // hop_length, n_fft // 2 + 1)``
    (time-major; torch's is the transpose).
    """
    frames = reference_frames(waveform, n_fft=n_fft, hop_length=hop_length)
    windowed = frames * padded_window(n_fft, win_length)[None, :]
    spec = np.fft.rfft(windowed, n=n_fft, axis=-1)
    return spec.real**2 + spec.imag**2


def reference_mel_filterbank(
    n_freqs: int = N_FFT // 2 + 1,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
    n_mels: int = N_MELS,
    sample_rate: int = SAMPLE_RATE,
    freqs: np.ndarray | None = None,
) -> np.ndarray:
    """HTK triangular mel filterbank, ``(n_freqs, n_mels)``, float64, no norm.

    Mirrors ``torchaudio.functional.melscale_fbanks(..., norm=None,
    mel_scale="htk")``. ``freqs`` overrides the frequencies (Hz) at which the
    triangles are evaluated (default: ``linspace(0, sample_rate // 2,
    n_freqs)``, as torchaudio); useful to evaluate the filters exactly at
    their centre frequencies, where each one is 1.0.
    """
    if freqs is None:
        all_freqs = np.linspace(0.0, float(sample_rate // 2), n_freqs)
    else:
        all_freqs = np.asarray(freqs, dtype=np.float64).reshape(-1)
    m_pts = np.linspace(hz_to_mel_htk(f_min), hz_to_mel_htk(f_max), n_mels + 2)
    f_pts = mel_to_hz_htk(m_pts)  # (n_mels + 2,): lower edge, centres, upper edge
    lower = f_pts[:-2][None, :]
    centre = f_pts[1:-1][None, :]
    upper = f_pts[2:][None, :]
    f = all_freqs[:, None]
    rising = (f - lower) / (centre - lower)
    falling = (upper - f) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def reference_logmel(waveform: np.ndarray) -> np.ndarray:
    """Log-mel features ``(1 + N // 256, 48)``, float64, mean-subtracted per bin.

    ``log(power @ fb + 1e-6)`` minus its mean over time (per clip); no
    variance normalisation.
    """
    power = reference_power_spectrogram(waveform)
    mel = power @ reference_mel_filterbank()
    logmel = np.log(mel + LOG_OFFSET)
    return logmel - logmel.mean(axis=0, keepdims=True)
