"""The log-mel front end against the independent float64 NumPy reference, on real GTZAN audio."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from keras_mgc.frontend import LogMelSpectrogram, TimeMeanNormalization, mel_filterbank
from tests.reference_frontend import WORST_FLOAT32, reference_logmel, reference_mel_filterbank

# The full 30 s clip of every genre, all quiet classical clips, and the clips where a float32
# DFT was worst (BUILD_NOTES.md, "front-end precision").
CLIPS = sorted(
    {f"{g}/{g}.00000" for g in "blues classical country disco hiphop jazz metal pop reggae rock".split()}
    | {f"classical/classical.{i:05d}" for i in range(10)}
    | set(WORST_FLOAT32)
)


@pytest.fixture(scope="module")
def frontend() -> LogMelSpectrogram:
    return LogMelSpectrogram()


@pytest.mark.parametrize("clip", CLIPS)
def test_logmel_matches_reference_on_real_gtzan(shared_data, frontend, clip):
    audio, sr = sf.read(shared_data / "gtzan-mini" / f"{clip}.wav", dtype="float64")
    assert sr == 22050
    ours = np.asarray(frontend(audio[None].astype("float32")))[0]
    ref = reference_logmel(audio)
    assert ours.shape == (1 + len(audio) // 256, 48) == ref.shape
    assert np.abs(ours - ref).max() < 1e-4


@pytest.mark.parametrize("spectrum", ["matmul", "dense"])
@pytest.mark.parametrize("clip", WORST_FLOAT32)
def test_matmul_dfts_match_reference_in_float64(shared_data, clip, spectrum):
    """The folded matmul (ONNX, TFLite) and the dense table (the benchmark's "before") compute the FFT's spectrum."""
    audio, _ = sf.read(shared_data / "gtzan-mini" / f"{clip}.wav", dtype="float64")
    ours = np.asarray(LogMelSpectrogram(spectrum=spectrum)(audio[None].astype("float32")))[0]
    assert np.abs(ours - reference_logmel(audio)).max() < 1e-4


@pytest.mark.parametrize("clip", WORST_FLOAT32)
def test_float32_dft_is_within_its_documented_bound(shared_data, clip):
    """The export front end (float32 folded DFT) is off by at most ~1.8e-4 in the loudest-frame top bins."""
    audio, _ = sf.read(shared_data / "gtzan-mini" / f"{clip}.wav", dtype="float64")
    ours = np.asarray(LogMelSpectrogram(dft_precision="float32", spectrum="matmul")(audio[None].astype("float32")))[0]
    err = np.abs(ours - reference_logmel(audio))
    assert err.max() < 2.5e-4
    assert np.median(err) < 1e-5


def test_fft_and_matmul_paths_agree_on_any_length():
    rng = np.random.default_rng(7)
    for n in (600, 44356, 44357):
        audio = (rng.standard_normal((2, n)) * 0.3).astype("float32")
        fft = np.asarray(LogMelSpectrogram(spectrum="fft")(audio))
        for spectrum in ("matmul", "dense"):
            other = np.asarray(LogMelSpectrogram(spectrum=spectrum)(audio))
            np.testing.assert_allclose(fft, other, atol=1e-6, err_msg=f"{spectrum}, {n} samples")


def test_fft_front_end_counts_far_fewer_flops():
    dense, folded = (LogMelSpectrogram(spectrum=s).flops_per_frame() for s in ("dense", "matmul"))
    assert folded > 5 * LogMelSpectrogram().flops_per_frame()
    assert 1.8 * folded < dense < 2.1 * folded  # the folding halves the table's multiply-adds


@pytest.mark.parametrize("n", [1025, 4096, 5000, 44356, 66150])
def test_frame_count_and_batch_independence(frontend, n):
    rng = np.random.default_rng(n)
    batch = (rng.standard_normal((3, n)) * 0.1).astype("float32")
    out = np.asarray(frontend(batch))
    assert out.shape == (3, 1 + n // 256, 48)
    single = np.asarray(frontend(batch[1:2]))
    np.testing.assert_allclose(out[1:2], single, atol=1e-6)
    np.testing.assert_allclose(out[1], reference_logmel(batch[1].astype("float64")), atol=1e-4)


def test_mean_normalisation_is_per_bin_over_time(frontend):
    audio = (np.random.default_rng(1).standard_normal((2, 22050)) * 0.2).astype("float32")
    out = np.asarray(frontend(audio))
    np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-5)
    raw = np.asarray(LogMelSpectrogram(mean_normalize=False)(audio))
    np.testing.assert_allclose(raw - raw.mean(axis=1, keepdims=True), out, atol=1e-5)
    assert raw.std(axis=1).min() > 0.05  # variance is left alone


def test_filterbank_is_htk_unnormalised():
    np.testing.assert_allclose(mel_filterbank(), reference_mel_filterbank(), atol=1e-12)


def test_mel_input_path_normalises_the_same_way():
    mel = np.random.default_rng(2).standard_normal((2, 50, 48)).astype("float32") + 3.0
    out = np.asarray(TimeMeanNormalization()(mel))
    np.testing.assert_allclose(out, mel - mel.mean(axis=1, keepdims=True), atol=1e-5)


def test_config_round_trip_rebuilds_the_same_layer():
    layer = LogMelSpectrogram(n_mels=40, f_max=8000.0, dft_precision="float32", name="fe")
    clone = LogMelSpectrogram.from_config(layer.get_config())
    audio = (np.random.default_rng(3).standard_normal((1, 8000)) * 0.1).astype("float32")
    np.testing.assert_array_equal(np.asarray(layer(audio)), np.asarray(clone(audio)))
    assert clone.get_config() == layer.get_config()


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="win_length == 2 \\* hop_length"):
        LogMelSpectrogram(win_length=400, hop_length=256)
    with pytest.raises(ValueError, match="dft_precision"):
        LogMelSpectrogram(dft_precision="float16")
    with pytest.raises(ValueError, match="spectrum must be one of"):
        LogMelSpectrogram(spectrum="dct")
