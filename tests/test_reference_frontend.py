"""Tests of the NumPy reference front end against facts that do not depend on it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.reference_frontend import (
    HOP_LENGTH,
    N_FFT,
    N_MELS,
    SAMPLE_RATE,
    WIN_LENGTH,
    num_frames,
    reference_frames,
    reference_logmel,
    reference_mel_filterbank,
    reference_power_spectrogram,
)

N_FREQS = N_FFT // 2 + 1
BIN_HZ = SAMPLE_RATE / N_FFT


def _htk_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _htk_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def _htk_points():
    """Edges and centres of the 48 HTK filters over 0..11025 Hz (50 points)."""
    return _htk_hz(np.linspace(0.0, _htk_mel(SAMPLE_RATE / 2), N_MELS + 2))


# --------------------------------------------------------------------------- framing


@pytest.mark.parametrize("n", [1025, 1100, 2048, 4096, 5000, 22050, 22050 * 3 + 17])
def test_frame_count_is_one_plus_n_floordiv_hop(n):
    x = np.random.default_rng(n).standard_normal(n)
    expected = 1 + n // 256
    assert num_frames(n) == expected
    assert reference_power_spectrogram(x).shape == (expected, 1025)
    assert reference_logmel(x).shape == (expected, 48)


def test_thirty_second_clip_frame_count():
    # GTZAN clips are ~30 s at 22,050 Hz: 661,500 samples -> 2584 frames.
    assert num_frames(661_500) == 2584
    assert num_frames(661_794) == 2586


def test_too_short_for_reflect_padding_raises():
    with pytest.raises(ValueError):
        reference_power_spectrogram(np.zeros(1024))
    with pytest.raises(ValueError):
        reference_power_spectrogram(np.zeros((2, 4096)))


def test_frames_are_centred_with_reflect_padding():
    # Frame t covers original samples 256*t - 1024 .. 256*t + 1023, reflected
    # at the edges without repeating the edge sample (x[-k] -> x[k]).
    n = 3000
    x = np.arange(n, dtype=np.float64)
    frames = reference_frames(x)
    assert frames.shape == (1 + n // 256, 2048)
    for t in range(frames.shape[0]):
        idx = np.arange(256 * t - 1024, 256 * t + 1024)
        idx = np.where(idx < 0, -idx, idx)
        idx = np.where(idx > n - 1, 2 * (n - 1) - idx, idx)
        np.testing.assert_array_equal(frames[t], x[idx])


def test_power_matches_explicit_dft_of_centred_hann_segment():
    # Frame t's windowed samples are x[256t-256 : 256t+256] * periodic Hann(512),
    # sitting at offset 768 of a 2048-point frame. Check one-sided |DFT|^2 with
    # an explicit DFT sum (no FFT) for an interior and an edge frame.
    rng = np.random.default_rng(0)
    n = 4000
    x = rng.standard_normal(n)
    power = reference_power_spectrogram(x)
    m = np.arange(512)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * m / 512)
    k = np.arange(N_FREQS)
    basis = np.exp(-2j * np.pi * np.outer(k, m + 768) / N_FFT)
    for t in (0, 7):
        idx = np.abs(np.arange(256 * t - 256, 256 * t + 256))  # reflect at 0
        seg = x[idx] * hann
        expected = np.abs(basis @ seg) ** 2
        np.testing.assert_allclose(power[t], expected, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- power


def test_parseval_on_white_noise():
    rng = np.random.default_rng(1)
    sigma = 0.3
    n = SAMPLE_RATE * 2
    x = sigma * rng.standard_normal(n)
    power = reference_power_spectrogram(x)
    # Full-spectrum energy from the one-sided spectrum (DC and Nyquist once).
    full = power[:, 0] + power[:, -1] + 2.0 * power[:, 1:-1].sum(axis=1)
    m = np.arange(512)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * m / 512)
    # Exact Parseval, frame by frame (interior frames: no reflection involved).
    for t in range(1, power.shape[0] - 4):
        seg = x[256 * t - 256 : 256 * t + 256] * hann
        assert full[t] == pytest.approx(N_FFT * np.sum(seg**2), rel=1e-10)
    # Statistical: E[sum_k |X_k|^2] = n_fft * sigma^2 * sum(w^2) = 2048*sigma^2*192.
    assert np.sum(hann**2) == pytest.approx(192.0)
    expected_mean = N_FFT * sigma**2 * 192.0
    assert full[1:-4].mean() == pytest.approx(expected_mean, rel=0.03)


def test_power_is_nonnegative_and_float64():
    x = np.random.default_rng(2).standard_normal(5000).astype(np.float32)
    power = reference_power_spectrogram(x)
    assert power.dtype == np.float64
    assert np.all(power >= 0.0)


# --------------------------------------------------------------------------- sine


@pytest.mark.parametrize("k", [40, 100, 233, 500, 900])
def test_bin_centre_sine(k):
    f = k * BIN_HZ
    amp = 0.5
    n = SAMPLE_RATE
    t = np.arange(n) / SAMPLE_RATE
    x = amp * np.sin(2 * np.pi * f * t)
    power = reference_power_spectrogram(x)
    interior = power[4:-4]
    # Peak at bin k, with |X_k| = amp/2 * sum(hann) = amp/2 * 256.
    assert np.all(np.argmax(interior, axis=1) == k)
    np.testing.assert_allclose(interior[:, k], (amp * 128.0) ** 2, rtol=1e-6)

    # The mel energy lands in the filter(s) whose HTK edges contain f, and most
    # of it in the filter whose centre is closest (in mel) to f.
    pts = _htk_points()
    mel = interior @ reference_mel_filterbank()
    containing = [i for i in range(N_MELS) if pts[i] < f < pts[i + 2]]
    expected = containing[np.argmin(np.abs(_htk_mel(pts[1:-1][containing]) - _htk_mel(f)))]
    assert np.all(np.argmax(mel, axis=1) == expected)
    # Hann(512) in a 2048-point DFT has a main lobe of +-8 bins. Filters whose
    # support [edge_lo, edge_hi] stays more than 8 bins away from f only see
    # side-lobe leakage, which is tiny. (Filters near f, especially at low
    # frequencies where they are narrower than the main lobe, legitimately get
    # some energy.)
    far = [i for i in range(N_MELS) if pts[i + 2] < f - 8 * BIN_HZ or pts[i] > f + 8 * BIN_HZ]
    assert len(far) >= N_MELS - 6
    assert mel[:, far].max() < 1e-3 * mel[:, expected].min()


# --------------------------------------------------------------------------- filterbank


def test_filterbank_shape_dtype_and_range():
    fb = reference_mel_filterbank()
    assert fb.shape == (N_FREQS, N_MELS)
    assert fb.dtype == np.float64
    assert fb.min() >= 0.0
    assert fb.max() <= 1.0
    # Every filter catches at least one FFT bin (no empty filters for 48 mels).
    assert np.all(fb.max(axis=0) > 0.8)


def test_filterbank_rows_are_unnormalised_triangles_at_htk_points():
    pts = _htk_points()
    lower, centre, upper = pts[:-2], pts[1:-1], pts[2:]
    # Evaluated exactly at the centres the filterbank is the identity: peak 1.0.
    at_centres = reference_mel_filterbank(freqs=centre)
    np.testing.assert_allclose(at_centres, np.eye(N_MELS), atol=1e-12)
    # Zero at and beyond the edges.
    np.testing.assert_allclose(np.diag(reference_mel_filterbank(freqs=lower)), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.diag(reference_mel_filterbank(freqs=upper)), 0.0, atol=1e-12)
    # Linear in Hz on both sides: half height half way up and half way down.
    np.testing.assert_allclose(
        np.diag(reference_mel_filterbank(freqs=(lower + centre) / 2)), 0.5, atol=1e-12
    )
    np.testing.assert_allclose(
        np.diag(reference_mel_filterbank(freqs=(centre + upper) / 2)), 0.5, atol=1e-12
    )
    # On the FFT grid (0 .. 11025 Hz, 1025 points), compare with the triangle formula.
    grid = np.linspace(0.0, SAMPLE_RATE // 2, N_FREQS)
    fb = reference_mel_filterbank()
    for j in range(N_MELS):
        tri = np.clip(
            np.minimum(
                (grid - lower[j]) / (centre[j] - lower[j]),
                (upper[j] - grid) / (upper[j] - centre[j]),
            ),
            0.0,
            None,
        )
        np.testing.assert_allclose(fb[:, j], tri, atol=1e-12)
        # The biggest weight is at the FFT bin nearest the centre frequency.
        assert np.argmax(fb[:, j]) == int(np.argmin(np.abs(grid - centre[j])))
    # Known values: first centre ~ 41.4 Hz, last edge exactly 11025 Hz.
    assert centre[0] == pytest.approx(41.4, abs=0.1)
    assert upper[-1] == pytest.approx(11025.0)


def test_filterbank_matches_librosa_if_available():
    librosa = pytest.importorskip(
        "librosa", reason="librosa not installed (optional cross-check, not a project dependency)"
    )
    fb_librosa = librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=SAMPLE_RATE / 2,
        htk=True, norm=None, dtype=np.float64,
    )
    np.testing.assert_allclose(reference_mel_filterbank().T, fb_librosa, atol=1e-10)


# --------------------------------------------------------------------------- log-mel


def test_logmel_definition_and_mean_subtraction():
    rng = np.random.default_rng(3)
    x = 0.1 * rng.standard_normal(SAMPLE_RATE)
    feats = reference_logmel(x)
    assert feats.shape == (1 + SAMPLE_RATE // HOP_LENGTH, N_MELS)
    assert feats.dtype == np.float64
    np.testing.assert_allclose(feats.mean(axis=0), 0.0, atol=1e-10)
    # Variance is NOT normalised.
    assert not np.allclose(feats.std(axis=0), 1.0)
    raw = np.log(reference_power_spectrogram(x) @ reference_mel_filterbank() + 1e-6)
    np.testing.assert_allclose(feats, raw - raw.mean(axis=0), atol=1e-12)


def test_logmel_of_silence_is_zero_and_gain_only_shifts():
    # Silence: log(0 + 1e-6) everywhere -> zero after mean subtraction.
    np.testing.assert_array_equal(reference_logmel(np.zeros(4096)), 0.0)
    # A gain g adds log(g^2) to every log-mel value (when mel >> 1e-6), which the
    # per-bin mean subtraction removes.
    rng = np.random.default_rng(4)
    x = rng.standard_normal(8000)
    np.testing.assert_allclose(reference_logmel(10.0 * x), reference_logmel(x), atol=1e-6)


def test_constants():
    assert (SAMPLE_RATE, N_FFT, WIN_LENGTH, HOP_LENGTH, N_MELS) == (22050, 2048, 512, 256, 48)
