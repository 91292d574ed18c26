"""Tests of keras_mgc.audio: decoding, mixing, resampling, streaming and every failure mode."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from keras_mgc.audio import (
    AUDIO_EXTENSIONS,
    AudioError,
    TruncatedAudioWarning,
    audio_info,
    check_audio,
    is_audio_file,
    load_audio,
    stream_audio,
)
from keras_mgc.contract import DEFAULT_SAMPLE_RATE as SAMPLE_RATE

RNG = np.random.default_rng(1234)


def write(path: Path, data: np.ndarray, rate: int, **kw) -> Path:
    sf.write(path, data, rate, **kw)
    return path


def noise(frames: int, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    x = RNG.uniform(-amp, amp, size=(frames, channels)).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def truncate(src: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


def peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


def expect_error(path: Path, *fragments: str, **kw) -> AudioError:
    with pytest.raises(AudioError) as info:
        load_audio(path, **kw)
    err = info.value
    assert err.path == str(path)
    assert str(path) in str(err)
    for fragment in fragments:
        assert fragment in err.reason, err.reason
    return err


# --------------------------------------------------------------------------- module contract


@pytest.mark.parametrize("module", ["keras_mgc.audio", "keras_mgc.data.datasets", "keras_mgc.data.splits"])
def test_data_layer_does_not_import_tensorflow(module):
    code = f"import sys, {module}; bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"


def test_audio_extensions_cover_the_libsndfile_formats_gtzan_and_users_need():
    assert SAMPLE_RATE == 22050
    assert {".wav", ".au", ".snd", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif"} <= AUDIO_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in AUDIO_EXTENSIONS)
    assert is_audio_file("x/BLUES.00000.AU") and is_audio_file("a.b.mp3")
    assert not is_audio_file("notes.txt") and not is_audio_file("mel.npy") and not is_audio_file("wav")


def test_audio_error_carries_path_and_reason_and_pickles(tmp_path):
    err = AudioError(tmp_path / "x.wav", "empty file (0 bytes)")
    assert isinstance(err, ValueError)
    assert (err.path, err.reason) == (str(tmp_path / "x.wav"), "empty file (0 bytes)")
    assert str(err) == f"{tmp_path / 'x.wav'}: empty file (0 bytes)"
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.path, back.reason) == (AudioError, err.path, err.reason)


# --------------------------------------------------------------------------- decoding mechanics

# (format, subtype, largest round-trip error): the quantisation step of the format.
PCM_CASES = [
    ("WAV", "PCM_U8", 2 / 256),
    ("AIFF", "PCM_S8", 2 / 256),
    ("WAV", "PCM_16", 2**-15),
    ("WAV", "PCM_24", 2**-23),
    ("WAV", "PCM_32", 2**-24),  # float32 output resolution near 1.0
    ("WAV", "FLOAT", 0.0),
    ("WAV", "DOUBLE", 0.0),
    ("AU", "PCM_16", 2**-15),
    ("AU", "PCM_24", 2**-23),
    ("FLAC", "PCM_16", 2**-15),
    ("FLAC", "PCM_24", 2**-23),
]


@pytest.mark.parametrize("fmt,subtype,step", PCM_CASES, ids=[f"{f}-{s}" for f, s, _ in PCM_CASES])
def test_pcm_and_float_widths_round_trip(tmp_path, fmt, subtype, step):
    x = noise(4000, amp=0.9)
    path = write(tmp_path / f"x.{fmt.lower()}", x, SAMPLE_RATE, format=fmt, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.shape == x.shape
    err = np.abs(y - x).max()
    assert err <= step, (subtype, err)
    if subtype.startswith("PCM") and subtype != "PCM_32":
        assert err > 0  # the check above really sees quantisation


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_channels_are_averaged_to_mono(tmp_path, channels):
    x = noise(3000, channels) if channels > 1 else noise(3000)[:, None]
    x[:, 0] += 0.3  # make the channels differ in mean, so a "take channel 0" bug shows
    path = write(tmp_path / "multi.wav", x, SAMPLE_RATE, subtype="FLOAT")
    y = load_audio(path)
    assert y.shape == (3000,) and y.ndim == 1
    np.testing.assert_allclose(y, x.astype(np.float64).mean(axis=1), atol=1e-7)
    if channels > 1:
        assert np.abs(y - x[:, 0]).max() > 0.1


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000])
def test_resampling_keeps_frequency_length_and_level(tmp_path, rate):
    freq, seconds = 1000.0, 1.0
    path = write(tmp_path / f"sine_{rate}.wav", sine(freq, rate, seconds), rate, subtype="FLOAT")
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - SAMPLE_RATE * seconds) <= 1
    assert abs(peak_hz(y, SAMPLE_RATE) - freq) <= 1.0
    inner = y[2000:-2000]  # away from the edges, the sine's RMS is amp / sqrt(2)
    assert abs(np.sqrt(np.mean(inner**2)) - 0.5 / np.sqrt(2)) < 0.005


def test_resampling_removes_content_above_the_new_nyquist(tmp_path):
    path = write(tmp_path / "hi.wav", sine(15000.0, 96000, 1.0), 96000, subtype="FLOAT")
    y = load_audio(path)
    assert np.sqrt(np.mean(y[2000:-2000] ** 2)) < 1e-3  # no alias of 15 kHz left at 22.05 kHz


def test_other_target_rate_and_bad_rates(tmp_path):
    path = write(tmp_path / "s.wav", sine(440.0, 44100, 0.5), 44100, subtype="FLOAT")
    y = load_audio(path, sample_rate=16000)
    assert len(y) == 8000 and abs(peak_hz(y, 16000) - 440) <= 2
    for bad in (0, -22050, 22050.5, None):
        with pytest.raises(ValueError, match="sample_rate"):
            load_audio(path, sample_rate=bad)


@pytest.mark.parametrize("fmt,subtype", [("OGG", "VORBIS"), ("AIFF", "PCM_16"), ("CAF", "FLOAT")])
def test_other_containers_decode(tmp_path, fmt, subtype):
    x = sine(440.0, 44100, 1.0)
    path = write(tmp_path / f"s.{fmt.lower()}", x, 44100, format=fmt, subtype=subtype)
    y = load_audio(path)
    ref = scipy.signal.resample_poly(x.astype(np.float64), 1, 2)
    assert abs(len(y) - len(ref)) <= 1
    n = min(len(y), len(ref))
    assert np.corrcoef(y[:n], ref[:n])[0, 1] > 0.99


def test_silence_is_valid_and_stays_zero(tmp_path):
    mono = load_audio(write(tmp_path / "quiet.wav", np.zeros(22050, np.int16), SAMPLE_RATE))
    stereo = load_audio(write(tmp_path / "quiet44.wav", np.zeros((44100, 2), np.float32), 44100))
    assert mono.shape == (22050,) and not mono.any()
    assert stereo.shape == (22050,) and not stereo.any()


@pytest.mark.parametrize("rate,frames,expected", [(44100, 441, 220.5), (22050, 220, 220), (22050, 1, 1), (48000, 480, 220.5)])
def test_very_short_clips(tmp_path, rate, frames, expected):
    y = load_audio(write(tmp_path / "short.wav", noise(frames), rate, subtype="FLOAT"))
    assert abs(len(y) - expected) <= 0.5 and np.isfinite(y).all()


@pytest.mark.parametrize("name", ["with space.wav", "música clássica – 日本語.flac", "ünïcödé dir/clip (1).au"])
def test_non_ascii_and_space_file_names(tmp_path, name):
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    x = noise(2205)
    write(path, x, SAMPLE_RATE, subtype="PCM_16")
    assert np.abs(load_audio(path) - x).max() <= 2**-15
    assert audio_info(path).frames == 2205
    bad = path.with_name("kaputt " + path.name)
    bad.write_bytes(b"definitely not audio" * 10)
    expect_error(bad, "not a recognised audio file")


def test_file_name_that_is_not_utf8(tmp_path):
    """Linux names are bytes: one that is not valid UTF-8 (Latin-1 'é' here) still reads."""
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9 latin1.wav")
    x = noise(2205)
    sf.write(raw, x, SAMPLE_RATE, subtype="PCM_16")
    path = Path(os.fsdecode(raw))  # how os.listdir / Path.iterdir hand it to us
    assert path.exists()
    assert np.abs(load_audio(path) - x).max() <= 2**-15
    assert audio_info(path).frames == 2205


# --------------------------------------------------------------------------- failures


def test_missing_file_and_folder(tmp_path):
    expect_error(tmp_path / "nope.wav", "not found")
    (tmp_path / "folder.wav").mkdir()
    expect_error(tmp_path / "folder.wav", "not a regular file")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    expect_error(path, "empty file (0 bytes)")


def test_header_only_wav(tmp_path):
    """Both a valid 0-frame WAV and a WAV cut right after its 44-byte header."""
    expect_error(write(tmp_path / "zero_frames.wav", np.zeros(0, np.int16), SAMPLE_RATE), "no audio frames")
    full = write(tmp_path / "full.wav", noise(1000), SAMPLE_RATE, subtype="PCM_16")
    expect_error(truncate(full, tmp_path / "header_only.wav", 44), "no audio frames")


@pytest.mark.parametrize(
    "name,content",
    [
        ("text.wav", b"This is a README, not a WAV file.\n" * 20),
        ("random.wav", RNG.bytes(6000)),
        ("random.mp3", RNG.bytes(6000)),
        ("random.flac", RNG.bytes(6000)),
        ("random.au", RNG.bytes(6000)),
    ],
)
def test_not_audio(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    expect_error(path, "not a recognised audio file")
    with pytest.raises(AudioError):
        audio_info(path)


def test_wav_cut_inside_its_header(tmp_path):
    full = write(tmp_path / "full.wav", noise(1000), SAMPLE_RATE, subtype="PCM_16")
    expect_error(truncate(full, tmp_path / "cut30.wav", 30), "header")


def test_au_cut_inside_its_header_is_not_taken_for_raw_audio(tmp_path):
    # libsndfile falls back to headerless RAW for this; that must not pass as 10 u-law samples.
    full = write(tmp_path / "full.au", noise(1000), SAMPLE_RATE, subtype="PCM_16")
    expect_error(truncate(full, tmp_path / "cut10.au", 10), "header")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad):
    x = noise(5000)
    x[2205] = bad
    path = write(tmp_path / "bad.wav", x, SAMPLE_RATE, subtype="FLOAT")
    expect_error(path, "non-finite", "frame 2205", "0.100 s")
    info = check_audio(path, decode=False)  # the header alone cannot see it ...
    assert info.frames == 5000
    with pytest.raises(AudioError, match="non-finite"):  # ... a full decode does
        check_audio(path, decode=True)


@pytest.mark.parametrize("fmt,subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("CAF", "PCM_16")])
def test_compressed_or_chunked_files_cut_in_half_are_errors(tmp_path, fmt, subtype):
    full = write(tmp_path / f"full.{fmt.lower()}", sine(440.0, SAMPLE_RATE, 3.0), SAMPLE_RATE, format=fmt, subtype=subtype)
    cut = truncate(full, tmp_path / f"half.{fmt.lower()}", full.stat().st_size // 2)
    expect_error(cut)


@pytest.mark.parametrize("fmt,header", [("WAV", 44), ("AU", 24), ("AIFF", 54)])
def test_truncated_pcm_file_gives_its_prefix_with_a_warning(tmp_path, fmt, header):
    x = noise(10000)
    full = write(tmp_path / f"full.{fmt.lower()}", x, SAMPLE_RATE, format=fmt, subtype="PCM_16")
    cut = truncate(full, tmp_path / f"cut.{fmt.lower()}", header + 2 * 3000)
    with pytest.warns(TruncatedAudioWarning, match="truncated") as record:
        y = load_audio(cut)
    assert str(cut) in str(record[0].message)
    assert len(y) == 3000
    np.testing.assert_array_equal(y, load_audio(full)[:3000])
    assert audio_info(cut).truncated and not audio_info(full).truncated
    assert check_audio(cut, decode=False).truncated
    expect_error(cut, "truncated", strict=True)


def test_truncated_mp3_gives_its_prefix_with_a_warning(tmp_path, shared_data):
    src = shared_data / "other-music" / "afrobeat.mp3"
    whole = load_audio(src)
    cut = truncate(src, tmp_path / "afrobeat_cut.mp3", src.stat().st_size // 3)
    with pytest.warns(TruncatedAudioWarning, match="decoded"):
        y = load_audio(cut)
    assert 0.25 * len(whole) < len(y) < 0.4 * len(whole)
    assert np.corrcoef(y[:-2000], whole[: len(y) - 2000])[0, 1] > 0.99  # ends differ (resampler edge)
    assert check_audio(cut, decode=True).truncated
    assert not check_audio(src, decode=True).truncated
    expect_error(cut, "truncated", strict=True)
    expect_error(truncate(src, tmp_path / "stub.mp3", 300), "not a recognised audio file")


# --------------------------------------------------------------------------- info


def test_audio_info_reports_the_header(tmp_path):
    path = write(tmp_path / "s.wav", noise(48000, 2), 48000, subtype="PCM_24")
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.frames) == (48000, 2, 48000)
    assert info.duration == pytest.approx(1.0)
    assert (info.format, info.subtype, info.truncated) == ("WAV", "PCM_24", False)
    assert info.as_dict()["path"] == str(path)
    assert set(info.as_dict()) == {"path", "sample_rate", "channels", "frames", "duration", "format", "subtype", "truncated"}


# --------------------------------------------------------------------------- streaming


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory) -> Path:
    """Ten minutes of 44.1 kHz mono 16-bit audio (53 MB), written in chunks."""
    path = tmp_path_factory.mktemp("long") / "ten_minutes.wav"
    rng = np.random.default_rng(7)
    chunk = 44100 * 30
    with sf.SoundFile(path, "w", 44100, 1, subtype="PCM_16") as f:
        for i in range(20):
            t = np.arange(chunk) / 44100
            f.write(0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + rng.normal(0, 0.05, chunk))
    return path


def test_stream_long_file_in_bounded_blocks_equals_load(long_wav):
    size = 5 * SAMPLE_RATE
    tracemalloc.start()
    try:
        lengths = []
        first = None
        for block in stream_audio(long_wav, block_seconds=5.0):
            assert block.dtype == np.float32 and block.ndim == 1
            lengths.append(len(block))
            first = block if first is None else first
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    whole = load_audio(long_wav)
    assert len(whole) == 600 * SAMPLE_RATE
    assert sum(lengths) == len(whole)
    assert all(n == size for n in lengths[:-1]) and 0 < lengths[-1] <= size
    assert peak < 10 * 2**20, f"streaming held {peak / 2**20:.1f} MiB (whole clip: {whole.nbytes / 2**20:.0f} MiB)"
    np.testing.assert_allclose(first, whole[:size], atol=1e-6)


def test_stream_concatenation_equals_load(long_wav, tmp_path):
    whole = load_audio(long_wav)
    streamed = np.concatenate(list(stream_audio(long_wav, block_seconds=7.3)))
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    # No resampling: bit-exact, whatever the block size.
    path = write(tmp_path / "stereo22k.wav", noise(100_003, 2), SAMPLE_RATE, subtype="PCM_24")
    blocks = list(stream_audio(path, block_seconds=0.37))
    assert all(len(b) == round(0.37 * SAMPLE_RATE) for b in blocks[:-1])
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(path))


def test_stream_of_real_mp3_equals_load(shared_data):
    src = shared_data / "other-music" / "techno.mp3"
    np.testing.assert_allclose(np.concatenate(list(stream_audio(src, block_seconds=2.0))), load_audio(src), atol=1e-6)


def test_stream_errors(tmp_path):
    x = noise(SAMPLE_RATE * 3)
    x[-10] = np.nan
    path = write(tmp_path / "late_nan.wav", x, SAMPLE_RATE, subtype="FLOAT")
    stream = stream_audio(path, block_seconds=1.0)
    assert len(next(stream)) == SAMPLE_RATE  # blocks before the problem come out ...
    with pytest.raises(AudioError, match="non-finite"):  # ... then the error
        list(stream)
    with pytest.raises(ValueError, match="block_seconds"):
        next(stream_audio(path, block_seconds=0))
    with pytest.raises(AudioError, match="not found"):
        next(stream_audio(tmp_path / "missing.wav"))


# --------------------------------------------------------------------------- real recordings


OTHER_MUSIC = ["afrobeat.mp3", "bossa_nova.mp3", "cumbia.mp3", "samba.mp3", "techno.mp3", "trance.mp3",
               "ballroom-waltz-Media-105901.wav"]


@pytest.mark.parametrize("name", OTHER_MUSIC)
def test_real_44k_music_to_22k_mono(shared_data, name):
    path = shared_data / "other-music" / name
    info = audio_info(path)
    assert info.sample_rate == 44100 and info.channels == (1 if name.endswith(".wav") else 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedAudioWarning)
        y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1 and np.isfinite(y).all()
    assert abs(len(y) - info.duration * SAMPLE_RATE) <= 2
    assert 29 < len(y) / SAMPLE_RATE < 33
    raw, _ = sf.read(path, always_2d=True)
    ref = scipy.signal.resample_poly(raw.mean(axis=1), 1, 2)
    n = min(len(ref), len(y))
    assert abs(len(ref) - len(y)) <= 1
    assert np.corrcoef(ref[:n], y[:n])[0, 1] > 0.99
    assert np.abs(y).max() > 0.05  # real music, not silence


def test_real_gtzan_clips_decode_exactly(shared_data):
    root = shared_data / "gtzan-mini"
    rows = [line.split("\t") for line in (root / "MANIFEST.tsv").read_text().splitlines()[1:] if line.strip()]
    assert len(rows) == 100
    for rel, _genre, rate, channels, seconds, *_ in rows:
        path = root / rel
        y = load_audio(path)
        pcm, sr = sf.read(path, dtype="int16")
        assert (sr, int(rate), int(channels)) == (SAMPLE_RATE, SAMPLE_RATE, 1)
        np.testing.assert_array_equal(y, pcm.astype(np.float32) / 32768)
        assert abs(len(y) / SAMPLE_RATE - float(seconds)) <= 0.011, rel


@pytest.mark.parametrize("fmt,subtype", [("AU", "PCM_16"), ("FLAC", "PCM_16")])
def test_real_clip_converted_to_au_and_flac_decodes_identically(shared_data, tmp_path, fmt, subtype):
    wav = shared_data / "gtzan-mini" / "jazz" / "jazz.00003.wav"
    data, rate = sf.read(wav, dtype="int16")
    converted = write(tmp_path / f"jazz.00003.{fmt.lower()}", data, rate, format=fmt, subtype=subtype)
    np.testing.assert_array_equal(load_audio(converted), load_audio(wav))
