"""The on-device tagger (keras_mgc.tag): LiteRT model over sliding windows of real music.

The test model (the `tag_model` fixture in tests/conftest.py) is a small CCS ECAPA trained
briefly on real GTZAN crops and converted to TFLite by tests/tflite_fixtures.py (TensorFlow is fine here; the tagger must not use it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_mgc.audio import audio_info, load_audio
from keras_mgc.tag import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Tagger,
    TaggerError,
    load_metadata,
    main,
)
from keras_mgc.windows import Windower, window_starts
from tests.tflite_fixtures import CROP, GENRES, SAMPLE_RATE, build_toy_model, write_metadata

REPO_ROOT = Path(__file__).resolve().parents[1]
MP3S = ["afrobeat", "bossa_nova", "cumbia", "samba", "techno", "trance"]
WALTZ = "ballroom-waltz-Media-105901.wav"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tagger(tag_model):
    return Tagger(tag_model.path)


@pytest.fixture(scope="session")
def any_song(tmp_path_factory, request):
    """A real MP3 (trance, 29.71 s) when the shared data is there, else a generated 29.71 s WAV."""
    try:
        return request.getfixturevalue("shared_data") / "other-music" / "trance.mp3"
    except pytest.skip.Exception:
        t = np.arange(int(29.71 * 44100)) / 44100
        tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2
        stereo = np.stack([tone, np.roll(tone, 300)], axis=1).astype(np.float32)
        return write_clip(tmp_path_factory.mktemp("song") / "generated.wav", stereo, 44100)


@pytest.fixture(scope="session")
def clip(request):
    """clip(genre): GTZAN track 00000 of that genre (30 s, 22,050 Hz) when the shared data is
    there, else 30 s of generated chords and noise bursts (so these tests run anywhere)."""
    try:
        root = request.getfixturevalue("shared_data") / "gtzan-mini"
    except pytest.skip.Exception:
        root = None

    def get(genre: str) -> np.ndarray:
        if root is not None:
            return load_audio(root / genre / f"{genre}.00000.wav")
        rng = np.random.default_rng(GENRES.index(genre))
        t = np.arange(30 * SAMPLE_RATE) / SAMPLE_RATE
        chord = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(110, 880, 3)) / 6
        beats = rng.standard_normal(len(t)) * (np.sin(2 * np.pi * rng.uniform(1, 3) * t) > 0.9) * 0.2
        return (chord + beats).astype(np.float32)

    return get


@pytest.fixture(scope="session")
def music(shared_data):
    return shared_data / "other-music"


@pytest.fixture(scope="session")
def gtzan(shared_data):
    return shared_data / "gtzan-mini"


def run_cli(capsys, *argv):
    """main() in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def expected_windows(n: int, window: int = CROP, hop: int = SAMPLE_RATE) -> int:
    return 1 if n <= window else 1 + math.ceil((n - window) / hop)


def check_result(result, n_classes=len(GENRES)):
    """Probabilities valid, the whole-song mean consistent, top-k sorted."""
    assert result.probabilities.shape == (n_classes,)
    assert result.window_probabilities.shape == (result.windows, n_classes)
    assert (result.window_probabilities >= 0).all() and np.isfinite(result.window_probabilities).all()
    np.testing.assert_allclose(result.window_probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(result.probabilities.sum(), 1.0, atol=1e-5)
    np.testing.assert_allclose(result.probabilities, result.window_probabilities.mean(axis=0), atol=1e-7)
    probs = [p for _, p in result.top]
    assert probs == sorted(probs, reverse=True) and len(probs) == result.top_k
    assert probs[0] == pytest.approx(result.probabilities.max())
    assert {label for label, _ in result.top} <= set(result.class_names)


def write_clip(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, **kw)
    return path


# --------------------------------------------------------------------------- windows


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 5000), window=st.integers(1, 700), hop=st.integers(1, 900))
def test_window_starts_cover_every_sample_and_count_follows_the_rule(n, window, hop):
    starts = window_starts(n, window, hop)
    assert len(starts) == expected_windows(n, window, hop)
    assert starts[0] == 0 and starts == sorted(set(starts))
    if n >= window:
        assert starts[-1] == n - window  # the tail is covered by a window ending at the end
        assert all(s + window <= n for s in starts)
        assert all(b - a == hop for a, b in zip(starts[:-2], starts[1:-1]))
        covered = np.zeros(n, bool)
        for s in starts:
            covered[s : s + window] = True
        assert covered[-window:].all()
        if hop <= window:  # a hop longer than the window leaves gaps by request
            assert covered.all()


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 3000),
    window=st.integers(1, 500),
    hop=st.integers(1, 700),
    cuts=st.lists(st.integers(1, 3000), max_size=8),
)
def test_streamed_windows_equal_the_windows_of_the_whole_signal(n, window, hop, cuts):
    signal = np.arange(n, dtype=np.float32)
    edges = sorted({c for c in cuts if c < n} | {0, n})
    windower = Windower(window, hop)
    got = []
    for a, b in zip(edges[:-1], edges[1:]):
        got += [(s, w.copy()) for s, w in windower.feed(signal[a:b])]
    got += [(s, w.copy()) for s, w in windower.finish()]
    assert [s for s, _ in got] == window_starts(n, window, hop)
    for start, samples in got:
        expected = np.resize(signal, window) if n < window else signal[start : start + window]
        np.testing.assert_array_equal(samples, expected)
    # bounded: never more than a window plus the largest block is held
    assert windower.buffered <= window + max(b - a for a, b in zip(edges[:-1], edges[1:]))


# --------------------------------------------------------------------------- real music


def test_tags_the_real_mp3s_wav_and_gtzan_clips(tagger, music, gtzan):
    files = [music / f"{m}.mp3" for m in MP3S] + [music / WALTZ]
    files += [gtzan / g / f"{g}.00000.wav" for g in ("classical", "metal")] + [gtzan / "jazz" / "jazz.00003.wav"]
    for path in files:
        result = tagger.tag(path, top_k=3)
        check_result(result)
        n = round(result.duration * SAMPLE_RATE)
        assert result.windows == expected_windows(n)
        assert result.duration == pytest.approx(audio_info(path).duration, abs=0.01)
        assert result.window == pytest.approx(CROP / SAMPLE_RATE) and result.hop == 1.0
        assert result.window_starts[-1] == pytest.approx(result.duration - result.window, abs=1e-6)
        assert result.embedding is not None and result.embedding.ndim == 1 and np.isfinite(result.embedding).all()
        assert result.notes == []


def test_same_numbers_as_the_keras_model_on_the_same_windows(tagger, tag_model, gtzan):
    path = gtzan / "rock" / "rock.00000.wav"
    audio = load_audio(path)
    starts = window_starts(len(audio), CROP, SAMPLE_RATE)
    windows = np.stack([audio[s : s + CROP] for s in starts])
    expected = np.concatenate([tag_model.keras_probabilities(windows[i : i + 8]) for i in range(0, len(windows), 8)])
    result = tagger.tag(path)
    np.testing.assert_allclose(result.window_starts * SAMPLE_RATE, starts)
    np.testing.assert_allclose(result.window_probabilities, expected, atol=1e-4)
    np.testing.assert_allclose(result.probabilities, expected.mean(axis=0), atol=1e-4)


def test_streaming_blocks_and_batch_size_do_not_change_the_result(tagger, tag_model, gtzan):
    path = gtzan / "disco" / "disco.00000.wav"
    reference = tagger.tag(load_audio(path))  # one array, one block
    # blocks of 0.7 s: every window straddles several blocks
    streamed = tagger.tag(path, block_seconds=0.7)
    np.testing.assert_allclose(streamed.window_probabilities, reference.window_probabilities, atol=1e-6)
    for batch in (1, 3):
        other = Tagger(tag_model.path, threads=1, batch=batch).tag(path)
        np.testing.assert_allclose(other.window_probabilities, reference.window_probabilities, atol=1e-5)


def test_six_channel_96k_file_is_mixed_and_resampled(tagger, clip, tmp_path):
    import soxr

    mono = clip("blues")[: 5 * SAMPLE_RATE]
    hi = soxr.resample(mono, SAMPLE_RATE, 96000).astype(np.float32)
    channels = np.stack([hi * g for g in (0.2, 0.4, 0.6, 0.8, 1.0, 1.2)], axis=1) * 0.5
    path = write_clip(tmp_path / "six.wav", channels, 96000, subtype="FLOAT")
    assert audio_info(path).channels == 6
    result = tagger.tag(path)
    check_result(result)
    assert result.duration == pytest.approx(5.0, abs=1e-3)
    assert result.windows == expected_windows(5 * SAMPLE_RATE)
    # the channel mean is 0.35 * hi: the same song at 22,050 Hz, quieter
    same = tagger.tag(mono * 0.35)
    np.testing.assert_allclose(result.window_probabilities, same.window_probabilities, atol=2e-3)


def test_array_input_at_another_rate_and_in_channels(tagger, clip):
    import soxr

    mono = clip("pop")[: 6 * SAMPLE_RATE]
    at_44k = soxr.resample(mono, SAMPLE_RATE, 44100)
    result = tagger.tag(np.stack([at_44k, at_44k], axis=1), sample_rate=44100)
    check_result(result)
    assert result.source == "<array>" and result.duration == pytest.approx(6.0, abs=1e-3)
    with pytest.raises(TaggerError, match="empty"):
        tagger.tag(np.zeros(0, np.float32))
    with pytest.raises(TaggerError, match="NaN"):
        tagger.tag(np.full(100, np.nan, np.float32))


# --------------------------------------------------------------------------- lengths


def test_short_clip_is_looped_to_one_window_with_a_note(tagger, clip, tmp_path, capsys):
    short = clip("hiphop")[: int(0.81 * SAMPLE_RATE)]
    path = write_clip(tmp_path / "short.wav", short, subtype="FLOAT")
    result = tagger.tag(path)
    check_result(result)
    assert result.windows == 1 and result.duration == pytest.approx(0.81, abs=1e-4)
    assert result.notes == ["padded: 1.20 s shorter than one 2.01 s window (looped to fill it)"]
    looped = tagger.tag(np.resize(short, CROP))
    np.testing.assert_allclose(result.probabilities, looped.probabilities, atol=1e-6)
    code, out, _ = run_cli(capsys, path, "--model", tagger.model_path)
    assert code == EXIT_OK and "note: padded: 1.20 s shorter than one 2.01 s window" in out
    # a handful of samples is still a song
    assert tagger.tag(short[:300]).windows == 1


def test_long_file_is_streamed_in_bounded_memory(tagger, clip, tmp_path):
    """12 minutes: loading it whole needs 63.5 MB of float32; tagging it must stay far below."""
    minutes = 12
    reggae = clip("reggae")
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as f:
        for _ in range(minutes * 2):  # 30 s per write
            f.write(np.resize(reggae, 30 * SAMPLE_RATE))
    n = minutes * 60 * SAMPLE_RATE
    whole = n * 4

    tracemalloc.start()
    try:
        result = tagger.tag(path, hop=20.0)
        _, tagging_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        load_audio(path)
        _, loading_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    check_result(result)
    assert result.duration == pytest.approx(minutes * 60)
    assert result.windows == expected_windows(n, CROP, 20 * SAMPLE_RATE)
    assert loading_peak >= whole  # the measurement sees a whole-file load
    assert tagging_peak < 8_000_000, f"peak {tagging_peak / 1e6:.1f} MB while tagging a {whole / 1e6:.1f} MB file"


# --------------------------------------------------------------------------- bad files, CLI


def test_bad_files_get_one_message_each_and_the_good_ones_are_tagged(tagger, clip, any_song, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp3"
    text.write_text("these are not the droids you are looking for\n" * 50)
    missing = tmp_path / "missing.flac"
    good = [write_clip(tmp_path / "country.wav", clip("country")), any_song]
    code, out, err = run_cli(capsys, good[0], empty, text, missing, good[1], "--model", tagger.model_path)
    assert code == EXIT_FAILED
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    assert lines[0] == f"keras_mgc.tag: error: {empty}: empty file (0 bytes)"
    assert lines[1].startswith(f"keras_mgc.tag: error: {text}: not a recognised audio file")
    assert lines[2] == f"keras_mgc.tag: error: {missing}: file not found"
    for path in good:
        assert f"{path}: " in out
    assert out.count("window") == 2


def test_truncated_file_is_tagged_with_a_note(tagger, clip, tmp_path):
    path = write_clip(tmp_path / "cut.wav", clip("metal")[: 4 * SAMPLE_RATE], subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2 * SAMPLE_RATE])  # the header still declares 4 s
    result = tagger.tag(path)
    check_result(result)
    assert result.duration == pytest.approx(3.0, abs=1e-3)
    assert len(result.notes) == 1 and result.notes[0].startswith("truncated")


def test_json_output_schema(tagger, music, tmp_path, capsys):
    bad = tmp_path / "bad.ogg"
    bad.write_bytes(b"OggS" + bytes(100))
    code, out, err = run_cli(capsys, music / "techno.mp3", bad, "--model", tagger.model_path, "--json", "--top-k", "4")
    assert code == EXIT_FAILED and err.count("\n") == 1 and str(bad) in err
    doc = json.loads(out)
    assert doc["class_names"] == GENRES and doc["sample_rate"] == SAMPLE_RATE
    assert doc["window"] == pytest.approx(CROP / SAMPLE_RATE) and doc["hop"] == 1.0 and doc["top_k"] == 4
    assert doc["files"] == 2 and doc["failed"] == 1
    ok, failed = doc["results"]
    assert set(ok) == {"file", "duration", "windows", "top", "probabilities", "notes", "seconds", "error"}
    assert ok["file"] == str(music / "techno.mp3") and ok["error"] is None and ok["notes"] == []
    assert ok["duration"] == pytest.approx(29.71, abs=0.01)
    assert ok["windows"] == expected_windows(round(ok["duration"] * SAMPLE_RATE))
    assert [t["label"] for t in ok["top"]] == sorted(ok["probabilities"], key=ok["probabilities"].get, reverse=True)[:4]
    assert sum(ok["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert "timeline" not in ok
    assert failed["file"] == str(bad) and failed["error"] and failed["top"] == [] and failed["windows"] == 0
    assert set(failed) == set(ok)


def test_timeline_text_and_json(tagger, music, capsys):
    path = music / WALTZ  # 31.79 s
    n = round(audio_info(path).duration * SAMPLE_RATE)
    code, out, _ = run_cli(capsys, path, "--model", tagger.model_path, "--timeline", "--hop", "5", "--top-k", "2")
    assert code == EXIT_OK
    rows = out.split("timeline (window start, top 2):\n")[1].splitlines()
    assert len(rows) == expected_windows(n, CROP, 5 * SAMPLE_RATE) == 7
    assert [float(r.split()[0]) for r in rows] == [0, 5, 10, 15, 20, 25, 29.78]
    assert all(len(r.split()) == 2 + 2 * 2 for r in rows)  # start, "s", two (label, probability) pairs
    code, out, _ = run_cli(capsys, path, "--model", tagger.model_path, "--timeline", "--hop", "5", "--json")
    result = json.loads(out)["results"][0]
    starts = [t["start"] for t in result["timeline"]]
    assert starts[:6] == [0, 5, 10, 15, 20, 25] and len(starts) == result["windows"] == 7
    assert starts[-1] == pytest.approx((n - CROP) / SAMPLE_RATE, abs=1e-3)
    for entry in result["timeline"]:
        probs = [t["probability"] for t in entry["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)


def test_directory_arguments_and_odd_file_names(tagger, gtzan, music, tmp_path, capsys):
    folder = tmp_path / "my music" / "Café – 日本 ½"
    folder.mkdir(parents=True)
    names = [folder / "Sigur Rós – Ágætis byrjun.wav", folder / "ünïcødé song (live).mp3"]
    shutil.copy(gtzan / "jazz" / "jazz.00000.wav", names[0])
    shutil.copy(music / "bossa_nova.mp3", names[1])
    (folder / "cover.txt").write_text("not audio")
    code, out, err = run_cli(capsys, tmp_path / "my music", "--model", tagger.model_path, "--json")
    assert code == EXIT_OK and err == ""
    doc = json.loads(out)
    assert [r["file"] for r in doc["results"]] == [str(p) for p in names]
    assert all(r["error"] is None and r["windows"] > 20 for r in doc["results"])
    code, out, err = run_cli(capsys, names[1], "--model", tagger.model_path)
    assert code == EXIT_OK and out.startswith(f"{names[1]}: 29.71 s")
    empty = tmp_path / "nothing here"
    empty.mkdir()
    code, out, err = run_cli(capsys, empty, names[0], "--model", tagger.model_path)
    assert code == EXIT_FAILED and "no audio files" in err and str(names[0]) in out


def test_model_and_usage_errors_exit_2(tag_model, any_song, tmp_path, capsys):
    song = any_song

    def usage(*argv, match):
        code, out, err = run_cli(capsys, song, *argv)
        assert code == EXIT_USAGE and out == "" and match in err, err

    usage("--model", tmp_path / "nope.tflite", match="model not found")
    bare = tmp_path / "bare" / "model.tflite"
    bare.parent.mkdir()
    shutil.copy(tag_model.path, bare)
    usage("--model", bare, match="no class names")
    labels = tmp_path / "genres.txt"
    labels.write_text("\n".join(f"g{i}" for i in range(10)) + "\n")
    code, out, _ = run_cli(capsys, song, "--model", bare, "--labels", labels)
    assert code == EXIT_OK and "g" in out.splitlines()[1]
    (tmp_path / "nine.txt").write_text("\n".join(GENRES[:9]))
    usage("--model", tag_model.path, "--labels", tmp_path / "nine.txt", match="names 9 classes")
    garbage = tmp_path / "garbage" / "model.tflite"
    garbage.parent.mkdir()
    garbage.write_bytes(b"\x00" * 1000)
    write_metadata(garbage, GENRES)
    usage("--model", garbage, match="not a usable TFLite model")
    (bare.with_suffix(".json")).write_text("{not json")
    usage("--model", bare, match="unreadable model metadata")
    for kind, match in [("wrong_signature", "takes ['x']"), ("logits", "not logits"), ("nan", "non-finite")]:
        toy = tmp_path / kind / "model.tflite"
        toy.parent.mkdir()
        write_metadata(build_toy_model(toy, kind), GENRES)
        usage("--model", toy, match=match)
    for bad in (["--hop", "0"], ["--window", "-1"], ["--window", "0.01"], ["--top-k", "0"], ["--hop", "nan"]):
        with pytest.raises(SystemExit) as exc:
            main([str(song), "--model", str(tag_model.path), *bad])
        assert exc.value.code == EXIT_USAGE
        assert bad[0] in capsys.readouterr().err


def test_metadata_falls_back_to_labels_txt(tag_model, tmp_path):
    model = tmp_path / "m.tflite"
    shutil.copy(tag_model.path, model)
    (tmp_path / "labels.txt").write_text("\n".join(GENRES) + "\n\n")
    meta = load_metadata(model)
    assert meta.class_names == tuple(GENRES) and meta.sample_rate == 22050 and meta.crop_samples == CROP
    meta = {"class_names": GENRES, "sample_rate": 16000, "crop_samples": 32000}
    model.with_suffix(".json").write_text(json.dumps(meta))
    meta = load_metadata(model)
    assert meta.sample_rate == 16000 and meta.crop_seconds == 2.0
    model.with_suffix(".json").write_text(json.dumps({"class_names": ["a", "a"]}))
    with pytest.raises(TaggerError, match="duplicate"):
        load_metadata(model)


def test_tagger_runs_without_tensorflow_or_keras(tag_model, any_song, tmp_path):
    """In a fresh interpreter where importing tensorflow or keras fails, the CLI still tags."""
    script = textwrap.dedent(
        """
        import importlib.abc, json, runpy, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tensorflow_core"):
                    raise ImportError(f"blocked: {name}")

        sys.meta_path.insert(0, Block())
        sys.argv = ["keras_mgc.tag", *sys.argv[1:]]
        try:
            runpy.run_module("keras_mgc.tag", run_name="__main__")
        except SystemExit as exc:
            code = exc.code
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(any_song), "--model", str(tag_model.path), "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, proc.stderr
    assert proc.stderr.strip().count("\n") == 0, f"unexpected stderr: {proc.stderr}"  # LiteRT's INFO line is hidden
    assert json.loads(proc.stdout)["results"][0]["windows"] == 29


def test_model_with_fixed_input_shape_still_works(tmp_path):
    """Exported with [2, 44356] instead of [None, None]: fixed batches are filled, the window is fixed."""
    model = tmp_path / "fixed.tflite"
    write_metadata(build_toy_model(model, "fixed"), GENRES)
    tagger = Tagger(model, batch=8)
    assert tagger.batch == 2
    audio = np.linspace(-0.9, 0.9, 5 * SAMPLE_RATE, dtype=np.float32)  # a ramp: every window differs
    result = tagger.tag(audio)
    check_result(result)
    assert result.windows == expected_windows(5 * SAMPLE_RATE) == 4  # an odd last batch was filled
    starts = window_starts(len(audio), CROP, SAMPLE_RATE)
    means = np.array([audio[s : s + CROP].mean() for s in starts])
    logits = -((np.arange(10) - 4.5 - 5 * means[:, None]) ** 2)  # the toy model's rule
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert len(set(expected.argmax(axis=1))) == 4  # every window has its own top class
    np.testing.assert_allclose(result.window_probabilities, expected, atol=1e-5)
    with pytest.raises(TaggerError, match="exactly 44356 samples"):
        tagger.tag(audio, window=3.0)
