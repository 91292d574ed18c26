"""Reliability: bad input never crashes a run or loses work; NaN stops keep the last good state;
writes are atomic; hour-long files stream in bounded memory.

The bad-input runs go through the training command (`python -m keras_mgc.train`) on a
generated folder-per-class dataset salted with every kind of bad file the reliability
issue lists; the readers' own unit tests (tests/test_audio.py, test_datasets.py,
test_splits.py, test_config.py) cover the same inputs one by one. Everything binary is
generated here: nothing is committed.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from keras_mgc import io as kio
from keras_mgc.audio import AudioError, load_audio, stream_audio
from keras_mgc.contract import DEFAULT_SAMPLE_RATE as SAMPLE_RATE
from keras_mgc.data.datasets import DatasetError, Track
from tests.conftest import REPO_ROOT, SMALL_MODEL_OVERRIDES, run_cli

QUICKSTART = str(REPO_ROOT / "recipes" / "quickstart.yaml")
#: Smaller still than SMALL_MODEL_OVERRIDES: these runs test mechanics, not learning.
TINY = [*SMALL_MODEL_OVERRIDES, "model.channels=16", "model.ccs.stop=8", "model.se_channels=4",
        "model.attention_channels=8", "eval.modes=[whole]", "eval.headline=whole", "train.verbose=2"]


# --------------------------------------------------------------------------- a dataset with bad files

CLASSES = {"blues": 110.0, "hip hop": 440.0, "música": 1760.0}  # a space and a non-ASCII name


def _tone(freq: float, seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    x = 0.4 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32) if channels > 1 else x.astype(np.float32)


def _write(path: Path, data: np.ndarray, rate: int, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, rate, **kw)
    return path


def _cut(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def make_messy_dataset(root: Path) -> dict:
    """A 3-class folder-per-class dataset with good files in odd formats and many bad ones.

    Returns what a run on it must report: the files it must use (by part), the ones it
    must skip (with a reason fragment), the ones it must keep but flag, and the
    discovery-time skips. The split lists put short and silent clips in every part.
    """
    parts = {"train": [], "valid": [], "test": []}
    usable: dict[str, str] = {}   # key -> kind
    bad: dict[str, str] = {}      # key -> reason fragment
    flagged: set[str] = set()

    def good(cls: str, name: str, part: str, kind: str, make) -> None:
        key = f"{cls}/{Path(name).stem}"
        make(root / cls / name)
        parts[part].append(key)
        usable[key] = kind

    def broken(cls: str, name: str, part: str, reason: str, make) -> None:
        key = f"{cls}/{Path(name).stem}"
        path = root / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)
        parts[part].append(key)
        bad[key] = reason

    for i, (cls, freq) in enumerate(CLASSES.items()):
        for n, part in enumerate(["train", "train", "valid", "test"]):
            name = f"café ünï {n}.wav" if cls == "música" else f"{cls} {n}.wav"
            good(cls, name, part, "pcm16", lambda p, f=freq, s=10 * i + n: _write(p, _tone(f, 3.0, SAMPLE_RATE, seed=s),
                                                                                 SAMPLE_RATE, subtype="PCM_16"))
    f = CLASSES["blues"]
    good("blues", "8 bit.wav", "train", "8-bit", lambda p: _write(p, _tone(f, 3.0, 22050), 22050, subtype="PCM_U8"))
    good("blues", "24 bit 44k.wav", "valid", "24-bit 44.1 kHz",
         lambda p: _write(p, _tone(f, 3.0, 44100), 44100, subtype="PCM_24"))
    good("blues", "six channels 96k.wav", "train", "6 channels, 96 kHz float",
         lambda p: _write(p, _tone(f, 3.0, 96000, channels=6), 96000, subtype="FLOAT"))
    good("blues", "cut.wav", "train", "truncated WAV",
         lambda p: _cut(_write(p, _tone(f, 3.0, 22050), 22050, subtype="PCM_16"), 44 + 2 * 22050 * 2))
    flagged.add("blues/cut")
    f = CLASSES["hip hop"]
    good("hip hop", "32 bit 8k.wav", "train", "32-bit 8 kHz", lambda p: _write(p, _tone(f, 3.0, 8000), 8000, subtype="PCM_32"))
    good("hip hop", "float 48k.wav", "valid", "float 48 kHz", lambda p: _write(p, _tone(f, 3.0, 48000), 48000, subtype="FLOAT"))
    good("hip hop", "cut.au", "train", "truncated AU",
         lambda p: _cut(_write(p, _tone(f, 3.0, 22050), 22050, format="AU", subtype="PCM_16"), 24 + 2 * 30000))
    flagged.add("hip hop/cut")
    for name, part in [("silence.wav", "train"), ("silence 2.wav", "test")]:
        good("hip hop", name, part, "silence", lambda p: _write(p, np.zeros(3 * 22050, np.int16), 22050))
    f = CLASSES["música"]
    for name, part in [("ten ms.wav", "train"), ("ten ms 2.wav", "valid"), ("ten ms 3.wav", "test")]:
        good("música", name, part, "10 ms", lambda p: _write(p, _tone(f, 0.01, 22050), 22050, subtype="PCM_16"))
    good("música", "song.mp3", "train", "MP3", lambda p: _write(p, _tone(f, 3.0, 44100, 2), 44100, format="MP3",
                                                                   subtype="MPEG_LAYER_III"))
    good("música", "cut.mp3", "train", "truncated MP3",
         lambda p: _cut(_write(p, _tone(f, 4.0, 44100, 2), 44100, format="MP3", subtype="MPEG_LAYER_III"), 12000))
    flagged.add("música/cut")
    good("música", "other song.flac", "test", "FLAC", lambda p: _write(p, _tone(f, 3.0, 22050), 22050, format="FLAC"))

    header = (root / "blues" / "blues 0.wav").read_bytes()[:44]
    nan = _tone(440.0, 1.0, 22050)
    nan[1000] = np.nan
    inf = _tone(440.0, 1.0, 22050)
    inf[-5] = np.inf
    broken("blues", "empty.wav", "test", "empty file (0 bytes)", lambda p: p.write_bytes(b""))
    broken("blues", "header only.wav", "valid", "no audio frames", lambda p: p.write_bytes(header))
    broken("blues", "readme.wav", "train", "not a recognised audio file",
           lambda p: p.write_text("This is a README, not a WAV file.\n" * 20))
    broken("blues", "au cut in header.au", "test", "not a recognised audio file",
           lambda p: _cut(_write(p, _tone(110.0, 1.0, 22050), 22050, format="AU", subtype="PCM_16"), 10))
    broken("hip hop", "random.wav", "test", "not a recognised audio file",
           lambda p: p.write_bytes(np.random.default_rng(1).bytes(5000)))
    broken("hip hop", "nan.wav", "valid", "non-finite sample (NaN or Inf) at frame 1000",
           lambda p: sf.write(p, nan, 22050, subtype="FLOAT"))
    broken("hip hop", "inf.wav", "train", "non-finite sample (NaN or Inf) at frame 22045",
           lambda p: sf.write(p, inf, 22050, subtype="FLOAT"))
    broken("música", "loud.wav", "test", "beyond +-1e+12",
           lambda p: sf.write(p, np.full(22050, 1e20, np.float32), 22050, subtype="FLOAT"))
    broken("música", "one frame 96k.wav", "valid", "too short: 1 frame(s) at 96000 Hz",
           lambda p: sf.write(p, np.full(1, 0.1, np.float32), 96000, subtype="FLOAT"))
    broken("música", "random.mp3", "train", "not a recognised audio file",
           lambda p: p.write_bytes(np.random.default_rng(2).bytes(5000)))

    # Left out when the dataset is discovered: a genre folder with no audio, audio outside any class.
    (root / "empty genre").mkdir()
    (root / "empty genre" / "notes.txt").write_text("no audio here\n")
    _write(root / "stray.wav", _tone(220.0, 0.5, 22050), 22050)
    discovery = {str(root / "empty genre"): "class folder has no audio files",
                 str(root / "stray.wav"): "audio file outside any class folder"}

    lists = root.parent / "lists"
    lists.mkdir()
    for number, part in [(1, "test"), (2, "valid"), (3, "train")]:  # cv fold 1: test 1, valid 2, train 3
        (lists / f"fold{number}.txt").write_text("# generated by tests/test_reliability.py\n"
                                                 + "\n".join(parts[part]) + "\n", encoding="utf-8")
    return {"parts": parts, "usable": usable, "bad": bad, "flagged": flagged, "discovery": discovery, "lists": lists}


def _train_messy(root: Path, lists: Path, out: Path, *extra: str):
    return run_cli("keras_mgc.train", "--recipe", QUICKSTART, "--data-dir", str(root), "--output-dir", str(out),
                   "--set", "data.split=lists", f"data.split_dir={lists}", "data.folds=[1]", "train.epochs=1",
                   "data.data_cycle=1", "train.batch_size=4", *TINY, *extra)


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("messy")
    plan = make_messy_dataset(base / "data")
    plan["root"] = base / "data"
    return plan


@pytest.fixture(scope="module")
def messy_run(messy, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("messy_run")
    proc = _train_messy(messy["root"], messy["lists"], out, "data.max_skip_fraction=0.5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"dir": out / "quickstart", "stdout": proc.stdout, "stderr": proc.stderr}


def test_bad_files_are_skipped_with_reasons_and_the_run_completes(messy, messy_run):
    run_dir = messy_run["dir"]
    skipped = json.loads((run_dir / "skipped.json").read_text(encoding="utf-8"))
    by_path = {s["path"]: s["reason"] for s in skipped}
    # Every unusable file is listed once, with its reason: decode-time skips (ClipStore) ...
    expected = {str(messy["root"] / (key + suffix)): reason
                for key, reason in messy["bad"].items()
                for suffix in [next(p.suffix for p in (messy["root"] / key).parent.iterdir()
                                    if p.stem == Path(key).name)]}
    assert len(skipped) == len(by_path) == len(expected) + len(messy["discovery"])
    for path, fragment in {**expected, **messy["discovery"]}.items():
        assert path in by_path, f"{path} not in skipped.json"
        assert fragment in by_path[path], (path, by_path[path])
    # ... and the summary line on stdout.
    n = len(skipped)
    assert f"{n} file(s) skipped, reasons in {run_dir / 'skipped.json'}" in messy_run["stdout"]
    assert f"{len(messy['flagged'])} truncated file(s) kept" in messy_run["stdout"]

    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    data = results["data"]
    # The data section counts only the files used.
    assert data["n_files"] == len(messy["usable"]) and data["n_skipped"] == n
    per_class = {c: sum(k.startswith(c + "/") for k in messy["usable"]) for c in CLASSES}
    assert data["files_per_class"] == per_class and data["class_names"] == sorted(CLASSES)
    assert {f["key"] for f in data["flagged"]} == messy["flagged"]
    assert all("truncated" in f["reason"] for f in data["flagged"])
    (fold,) = results["folds"]
    sizes = {p: sum(k in messy["usable"] for k in keys) for p, keys in messy["parts"].items()}
    assert fold["split"]["sizes"] == sizes
    unreadable = fold["split"]["skipped_unreadable"]
    assert sorted(k for keys in unreadable.values() for k in keys) == sorted(messy["bad"])


def test_odd_but_valid_files_really_train_and_evaluate(messy, messy_run):
    """Silence, 10 ms clips, 8/24/32-bit, float, 6 channels at 96 kHz, MP3, FLAC, non-ASCII names:
    in the training part, the validation part and the test part, with finite numbers everywhere."""
    run_dir = messy_run["dir"]
    trained = {messy["usable"][k] for k in messy["parts"]["train"] if k in messy["usable"]}
    assert {"silence", "10 ms", "8-bit", "32-bit 8 kHz", "6 channels, 96 kHz float", "MP3", "truncated MP3"} <= trained
    (epoch,) = json.loads((run_dir / "fold_01" / "history.json").read_text())
    assert math.isfinite(epoch["loss"]) and math.isfinite(epoch["val_loss"])  # a 10 ms clip was validated
    predictions = json.loads((run_dir / "fold_01" / "predictions.json").read_text(encoding="utf-8"))
    tested = {messy["usable"][k] for k in predictions["keys"]}
    assert {"silence", "10 ms", "FLAC"} <= tested
    assert np.isfinite(np.array(predictions["whole"]["scores"], dtype=float)).all()
    assert "música/café ünï 3" in predictions["keys"]


def test_too_many_bad_files_stop_the_run_with_a_clear_error(messy, tmp_path):
    proc = _train_messy(messy["root"], messy["lists"], tmp_path, "data.max_skip_fraction=0.1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    n_bad, n_needed = len(messy["bad"]), len(messy["bad"]) + len(messy["usable"])
    message = proc.stderr
    assert f"error: {n_bad} of {n_needed} files are unreadable, more than data.max_skip_fraction=0.1; first: " in message
    assert message.count(str(messy["root"])) >= 5 and "empty file (0 bytes)" in message
    assert f"(every skipped file with its reason: {tmp_path / 'quickstart' / 'skipped.json'})" in message
    assert "Traceback" not in message
    # The full list is still written, and nothing was trained.
    run_dir = tmp_path / "quickstart"
    assert len(json.loads((run_dir / "skipped.json").read_text())) == n_bad + len(messy["discovery"])
    assert not (run_dir / "fold_01").exists() and not (run_dir / "results.json").exists()


def test_a_class_whose_every_file_is_unreadable_is_an_error(tmp_path):
    from keras_mgc.config import DataConfig
    from keras_mgc.data.prepare import prepare_data

    for n in range(3):
        _write(tmp_path / "data" / "good" / f"{n}.wav", _tone(440.0, 0.5, 22050, seed=n), 22050)
        (tmp_path / "data" / "bad" / f"{n}.wav").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "bad" / f"{n}.wav").write_text("not audio")
    cfg = DataConfig(dataset="folder", root=str(tmp_path / "data"), split="kfold", n_folds=3, folds=[1],
                     max_skip_fraction=1.0)
    with pytest.raises(DatasetError, match=r"every file of class\(es\) \['bad'\] is unreadable") as info:
        prepare_data(cfg, tmp_path, seed=1)
    assert len(info.value.skipped) == 3


def test_bad_melon_mels_are_found_before_training_even_without_a_cache(tmp_path):
    """cache: none (the Melon recipes) used to read only .npy headers when preparing, so a NaN,
    int or transposed mel crashed training mid-epoch (and again on every resume), and a
    1-D or random-bytes file crashed the preparation with IndexError / ValueError."""
    from keras_mgc.data.pipeline import ClipStore, CropSampler, training_dataset

    good = []
    for i in range(4):
        path = tmp_path / f"{i}.npy"
        np.save(path, np.random.default_rng(i).standard_normal((48, 200)).astype(np.float16))
        good.append(Track(str(path), "GN0100", str(i)))
    bad = {
        "nan": np.where(np.eye(48, 200) > 0, np.nan, 0.0).astype(np.float32),
        "int": np.zeros((48, 200), np.int16),
        "transposed": np.zeros((200, 48), np.float32),
        "one_d": np.zeros(48, np.float32),
    }
    tracks = list(good)
    for name, array in bad.items():
        np.save(tmp_path / f"{name}.npy", array)
        tracks.append(Track(str(tmp_path / f"{name}.npy"), "GN0100", name))
    (tmp_path / "junk.npy").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "empty.npy").write_bytes(b"")
    tracks += [Track(str(tmp_path / "junk.npy"), "GN0100", "junk"), Track(str(tmp_path / "empty.npy"), "GN0100", "empty")]
    store = ClipStore(tracks, cache="none").prepare()
    reasons = {s["key"]: s["reason"] for s in store.skipped}
    assert set(reasons) == {"nan", "int", "transposed", "one_d", "junk", "empty"}
    assert "non-finite" in reasons["nan"] and "dtype int16" in reasons["int"] and "time-major" in reasons["transposed"]
    assert [t.key for t in store.tracks] == ["0", "1", "2", "3"] and store.lengths.tolist() == [200] * 4
    sampler = CropSampler(store.lengths, crop=174, data_cycle=3, seed=0, global_batch=4)
    batches = list(training_dataset(store, [0] * 4, sampler).take(sampler.steps_per_epoch).as_numpy_iterator())
    assert len(batches) == 3 and all(np.isfinite(x).all() for x, _ in batches)


# --------------------------------------------------------------------------- readers: what the issue lists, not covered elsewhere


def test_huge_finite_samples_are_rejected_instead_of_training_on_nan(tmp_path):
    """A float WAV with finite samples of 1e20 used to pass the loader; the float32 log-mel
    power overflows to Inf, the time-mean subtraction gives NaN, and training stops."""
    from keras_mgc.frontend import LogMelSpectrogram

    loud = np.full((1, 5000), 1e20, np.float32)
    assert not np.isfinite(np.asarray(LogMelSpectrogram()(loud))).all()  # why it must not get that far
    _write(tmp_path / "loud.wav", loud[0], 22050, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"sample magnitude 1e\+20 at frame 0 \(0.000 s\) is beyond \+-1e\+12"):
        load_audio(tmp_path / "loud.wav")
    # Unnormalised float audio is still fine: integers stored as floats reach 2.1e9.
    scaled = _tone(440.0, 0.5, 22050) * 2**31
    _write(tmp_path / "int32_as_float.wav", scaled, 22050, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "int32_as_float.wav"), scaled, rtol=1e-6)


@pytest.mark.parametrize("frames,rate", [(1, 96000), (2, 96000)])
def test_a_clip_too_short_to_leave_one_sample_after_resampling_is_an_error(tmp_path, frames, rate):
    """It used to decode to an empty array, and cropping it divided by zero in training."""
    path = _write(tmp_path / "short.wav", np.full(frames, 0.1, np.float32), rate, subtype="FLOAT")
    with pytest.raises(AudioError, match=f"too short: {frames} frame"):
        load_audio(path)
    with pytest.raises(AudioError, match="too short"):
        list(stream_audio(path))


def test_one_hour_file_streams_in_bounded_memory(tmp_path):
    """A generated 1-hour 8 kHz 16-bit mono WAV (58 MB): streamed to 22,050 Hz blocks while
    Python's traced memory stays far below the decoded size (317 MB as float32)."""
    path = tmp_path / "one_hour.wav"
    rate, seconds = 8000, 3600
    chunk = rate * 60
    t = np.arange(chunk) / rate
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as f:
        for minute in range(seconds // 60):
            f.write((0.3 * np.sin(2 * np.pi * (200 + 5 * minute) * t)).astype(np.float32))
    assert path.stat().st_size > 57e6
    decoded_bytes = seconds * SAMPLE_RATE * 4
    tracemalloc.start()
    try:
        total, blocks = 0, 0
        for block in stream_audio(path, block_seconds=10.0):
            assert block.dtype == np.float32
            total += len(block)
            blocks += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(total - seconds * SAMPLE_RATE) <= 2 and blocks == 360
    assert peak < 16 * 2**20, f"streaming held {peak / 2**20:.1f} MiB; the decoded hour is {decoded_bytes / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- atomic writes


def test_an_error_inside_an_atomic_write_leaves_the_previous_file_intact(tmp_path):
    target = tmp_path / "results.json"
    kio.write_json(target, {"version": 1})
    with pytest.raises(RuntimeError, match="crash"):
        with kio.atomic_path(target) as tmp:
            tmp.write_text('{"version": 2, "trunc')  # a partial write ...
            raise RuntimeError("crash")  # ... then the writer dies
    assert kio.read_json(target) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_failing_rename_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "fold.json"
    kio.write_json(target, {"version": 1})

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        kio.write_json(target, {"version": 2})
    monkeypatch.undo()
    assert kio.read_json(target) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold.json"]


def test_a_checkpoint_save_that_dies_midway_keeps_the_previous_checkpoint(tmp_path):
    import keras

    from keras_mgc.io import atomic_path

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    best = tmp_path / "best.keras"
    with atomic_path(best) as tmp:
        model.save(tmp)
    before = best.read_bytes()
    model.layers[0].kernel.assign(np.ones((3, 2), np.float32))
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(best) as tmp:
            model.save(tmp)
            tmp.write_bytes(tmp.read_bytes()[:100])  # half-written, then the process is interrupted
            raise KeyboardInterrupt
    assert best.read_bytes() == before
    assert not np.array_equal(keras.models.load_model(best).layers[0].kernel.numpy(), np.ones((3, 2)))
    assert [p.name for p in tmp_path.iterdir()] == ["best.keras"]


WRITER = textwrap.dedent("""
    import json, sys
    from keras_mgc.io import write_json
    target, n = sys.argv[1], 0
    while True:
        n += 1
        write_json(target, {"n": n, "payload": ["x" * 1000] * 4000})  # ~4 MB per write
        print(n, flush=True)
""")


def test_sigkill_during_writes_never_leaves_a_partial_file_under_the_real_name(tmp_path):
    target = tmp_path / "results.json"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    for delay in (0.3, 0.45, 0.6, 0.75):
        proc = subprocess.Popen([sys.executable, str(script), str(target)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "1"  # one complete write exists
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = kio.read_json(target)  # parses: complete, never a prefix
        assert data["n"] >= 1 and len(data["payload"]) == 4000
        for leftover in tmp_path.iterdir():  # only whole files, or temporaries that say so
            assert leftover.name in ("results.json", "writer.py") or leftover.name.startswith(".results.tmp-")


# --------------------------------------------------------------------------- NaN: exact step, end-of-epoch checks


def _tiny_fit(tmp_path, make_batch, epochs=3, steps=5, extra_callbacks=(), lr=0.01):
    """Fit a tiny Dense model with RunState; make_batch(epoch, step) -> (x, y)."""
    import keras
    import tensorflow as tf

    from keras_mgc.fold_trainer import RunState

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def gen():
        for e in range(epochs):
            for s in range(steps):
                yield make_batch(e + 1, s + 1)

    ds = tf.data.Dataset.from_generator(gen, output_signature=(tf.TensorSpec((None, 4), tf.float32),
                                                               tf.TensorSpec((None,), tf.int32)))
    state = RunState(tmp_path / "fold_01", monitor=None)
    model.fit(ds, epochs=epochs, steps_per_epoch=steps, callbacks=[*extra_callbacks, state], verbose=0)
    return model, state


def _batch(epoch, step, bad=None):
    rng = np.random.default_rng([epoch, step])
    x = rng.standard_normal((8, 4)).astype(np.float32)
    if bad == (epoch, step):
        x[3, 1] = np.nan
    return x, (x[:, 0] > 0).astype(np.int32)


@pytest.mark.parametrize("step", [1, 3, 5])
def test_nan_loss_is_caught_at_its_first_step_and_the_last_good_epoch_is_kept(tmp_path, step):
    """Keras passes the epoch's running mean as logs['loss']; one NaN step makes it NaN at
    once, so the step reported is the first bad one, not the end of the epoch."""
    import keras

    model, state = _tiny_fit(tmp_path, lambda e, s: _batch(e, s, bad=(2, step)))
    assert state.diverged is not None
    assert re.search(rf"fold_01: loss became nan at epoch 2, step {step}; training stopped\. "
                     r"Last good state: epoch 1, kept in .*backup; best checkpoint: .*best\.keras", state.diverged)
    saved = json.loads((tmp_path / "fold_01" / "backup" / "state.json").read_text())
    assert saved["epoch"] == 1 and [h["epoch"] for h in saved["history"]] == [1]
    best = keras.models.load_model(tmp_path / "fold_01" / "best.keras")
    assert all(np.isfinite(w).all() for w in best.get_weights())
    assert sorted(p.name for p in (tmp_path / "fold_01" / "backup").iterdir()) == ["state.json", "weights-0001.weights.h5"]


def test_nan_weights_or_validation_at_the_end_of_an_epoch_stop_without_saving_it(tmp_path):
    """A huge step can leave the training loss finite while the weights, or the model in
    inference mode, are already NaN: the epoch is not saved as a good state or as best."""
    import keras

    class PoisonAfterEpoch2(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.layers[0].kernel
                kernel.assign(np.where(np.eye(*kernel.shape) > 0, np.inf, kernel.numpy()))

    _, state = _tiny_fit(tmp_path / "w", _batch, extra_callbacks=[PoisonAfterEpoch2()])
    assert "weights became non-finite (NaN or Inf) during epoch 2" in state.diverged
    assert json.loads((tmp_path / "w" / "fold_01" / "backup" / "state.json").read_text())["epoch"] == 1

    class NanValidation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = float("nan") if epoch == 2 else 0.5

    _, state = _tiny_fit(tmp_path / "v", _batch, epochs=4, extra_callbacks=[NanValidation()])
    assert "val_loss became nan at the end of epoch 3" in state.diverged
    assert json.loads((tmp_path / "v" / "fold_01" / "backup" / "state.json").read_text())["epoch"] == 2


def test_best_checkpoint_is_published_only_after_the_state_that_records_it(tmp_path):
    """A kill between saving a new best and committing state.json must not leave best.keras
    holding an epoch that state.json does not know (it would be evaluated as the best)."""
    import keras

    from keras_mgc.fold_trainer import RunState

    _tiny_fit(tmp_path, _batch, epochs=2, steps=2)
    fold = tmp_path / "fold_01"
    backup = fold / "backup"
    committed = json.loads((backup / "state.json").read_text())
    assert committed["best_epoch"] == 2 and not list(backup.glob("best-*"))
    best_bytes = (fold / "best.keras").read_bytes()
    # Killed during epoch 3 after its best was staged but before state.json was replaced:
    (backup / "best-0003.keras").write_bytes(b"the epoch that never committed")
    (backup / ".state.tmp-abc.json").write_text('{"epoch": 3, "hist')  # and mid-way through the state write
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    state = RunState(fold, monitor=None)
    state.set_model(model)
    state.on_train_begin()
    assert (fold / "best.keras").read_bytes() == best_bytes  # still the committed best (epoch 2)
    assert sorted(p.name for p in backup.iterdir()) == ["state.json", "weights-0002.weights.h5"]
    # Killed after state.json committed epoch 3 as the best, before the rename: the resume finishes it.
    staged = backup / "best-0003.keras"
    model.save(staged)
    (backup / "weights-0003.weights.h5").write_bytes((backup / "weights-0002.weights.h5").read_bytes())
    kio.write_json(backup / "state.json", {**committed, "epoch": 3, "best_epoch": 3, "weights": "weights-0003.weights.h5"})
    resumed = RunState(fold, monitor=None)
    resumed.set_model(model)
    resumed.on_train_begin()
    assert not staged.exists() and (fold / "best.keras").read_bytes() != best_bytes
    assert resumed.best_epoch == 3
    keras.models.load_model(fold / "best.keras")


# --------------------------------------------------------------------------- NaN in a real training run

FAULT = textwrap.dedent("""
    # The trainer as `python -m keras_mgc.train` runs it, except that fold 2's recipe ramps its
    # learning rate from 1e-3 (epoch 1) to 5e7 (epoch 2) - a warm-up gone wrong - so that fold 1
    # completes and fold 2 diverges after one good epoch, in the same run.
    import sys
    import keras_mgc.fold_trainer as T
    from keras_mgc.train import main

    train_fold = T.train_fold

    def faulty(recipe, data, fold, fold_dir, strategy, **kwargs):
        if fold.number == 2:
            schedule = recipe.train.schedule.model_copy(update={"min_learning_rate": 1e8})
            recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"schedule": schedule})})
        return train_fold(recipe, data, fold, fold_dir, strategy, **kwargs)

    T.train_fold = faulty
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("nan_run")
    script = out / "faulty_train.py"
    script.write_text(FAULT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), "--recipe", QUICKSTART, "--output-dir", str(out / "runs"), "--set",
         "train.epochs=2", "data.folds=[1,2]", "data.data_cycle=2", "train.batch_size=4",
         "data.synthetic_clips_per_class=3", "data.synthetic_seconds=3.0", *TINY],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    return {"dir": out / "runs" / "quickstart", "proc": proc}


def test_nan_loss_stops_the_run_naming_epoch_and_step_with_exit_code_1(nan_run):
    proc = nan_run["proc"]
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert re.search(r"error: fold_02: loss became nan at epoch 2, step 2; training stopped\. "
                     r"Last good state: epoch 1, kept in \S+fold_02/backup; best checkpoint: \S+fold_02/best\.keras",
                     proc.stderr), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "fold_01: best epoch" in proc.stdout


def test_nan_stop_keeps_the_last_good_state_and_best_checkpoint_loadable(nan_run):
    import keras

    from keras_mgc.config import load_recipe
    from keras_mgc.models import build_model

    fold = nan_run["dir"] / "fold_02"
    state = json.loads((fold / "backup" / "state.json").read_text())
    assert state["epoch"] == 1 and state["best_epoch"] == 1 and state["weights"] == "weights-0001.weights.h5"
    assert math.isfinite(state["history"][0]["loss"])
    recipe = load_recipe(nan_run["dir"] / "recipe.yaml")
    model = build_model(recipe.model, 5)
    model.compile(optimizer=keras.optimizers.AdamW(), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    model.load_weights(fold / "backup" / "weights-0001.weights.h5")
    best = keras.models.load_model(fold / "best.keras")
    for a, b in zip(model.get_weights(), best.get_weights()):
        assert np.isfinite(a).all() and np.array_equal(a, b)  # best = epoch 1 = the last good state
    assert not (fold / "fold.json").exists() and not list(fold.rglob(".*tmp-*"))


def test_nan_stop_still_writes_the_results_of_completed_folds(nan_run):
    run_dir = nan_run["dir"]
    results = json.loads((run_dir / "results.json").read_text())
    assert [f["name"] for f in results["folds"]] == ["fold_01"]
    assert results["folds"][0]["epochs_run"] == 2 and results["summary"]["whole"]["accuracy"]["n"] == 1
    assert (run_dir / "fold_01" / "fold.json").is_file() and (run_dir / "fold_01" / "best.keras").is_file()
    assert results["stopped"]["fold"] == "fold_02" and "loss became nan at epoch 2, step 2" in results["stopped"]["reason"]
    table = (run_dir / "results.md").read_text()
    assert "| fold_01 |" in table and "| fold_02 |" not in table
    assert "Stopped: fold_02: loss became nan at epoch 2, step 2" in table


def test_relu_swallows_nan_so_poisoned_weights_are_caught_at_the_end_of_the_epoch(tmp_path):
    """TF's ReLU maps NaN to 0: a NaN input poisons the weights through the gradient while
    the loss stays finite, so the loss check alone never fires. The end-of-epoch weight
    check does, and the poisoned epoch is not saved."""
    import keras
    import tensorflow as tf

    from keras_mgc.fold_trainer import RunState

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = []
    probe = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: losses.append(logs["loss"]))
    batches = [_batch(e, s, bad=(2, 3)) for e in (1, 2, 3) for s in range(1, 6)]
    ds = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=(
        tf.TensorSpec((None, 4), tf.float32), tf.TensorSpec((None,), tf.int32)))
    state = RunState(tmp_path / "fold_01", monitor=None)
    model.fit(ds, epochs=3, steps_per_epoch=5, callbacks=[probe, state], verbose=0)
    assert all(math.isfinite(x) for x in losses)  # the loss never saw it ...
    assert "weights became non-finite (NaN or Inf) during epoch 2" in state.diverged  # ... the weight check did
    assert json.loads((tmp_path / "fold_01" / "backup" / "state.json").read_text())["epoch"] == 1


# --------------------------------------------------------------------------- bad recipes and splits through the command


def _recipe(tmp_path: Path, **sections) -> Path:
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"extends": QUICKSTART, **sections}))
    return path


@pytest.mark.parametrize("sections,message", [
    ({"train": {"epoch": 2}}, "train.epoch: unknown key; did you mean 'epochs'?"),
    ({"train": {"batch_size": "sixty-four"}}, "train.batch_size: Input should be a valid integer"),
    ({"train": {"epochs": -3}}, "train.epochs: Input should be greater than 0 (got -3)"),
    ({"data": {"dataset": "folder", "root": "/no/such/folder"}}, "data.root: path does not exist: /no/such/folder"),
    ({"data": {"dataset": "gtzan"}}, "data.root: dataset 'gtzan' needs a data folder"),
])
def test_bad_recipes_stop_the_command_before_anything_runs(tmp_path, sections, message):
    proc = run_cli("keras_mgc.train", "--recipe", str(_recipe(tmp_path, **sections)), "--output-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_repeated_set_options_all_apply():
    """`--set a=1 --set b=2` used to keep only the last group (argparse's default 'store')."""
    from keras_mgc.train import parse_args, recipe_from_args

    args = parse_args(["--recipe", QUICKSTART, "--set", "train.epochs=2", "seed=7", "--set", "train.batch_size=4"])
    recipe = recipe_from_args(args)
    assert (recipe.train.epochs, recipe.seed, recipe.train.batch_size) == (2, 7, 4)


def test_split_lists_that_leak_a_test_track_into_training_stop_the_command(messy, tmp_path):
    """A test key also in the train list is an error naming it, never a warning (a key twice
    in one list: tests/test_splits.py::test_duplicate_in_a_list_is_an_error_naming_it)."""
    lists = tmp_path / "lists"
    lists.mkdir()
    parts = messy["parts"]
    leaked = parts["test"][0]
    (lists / "train.txt").write_text("\n".join([*parts["train"], leaked]) + "\n", encoding="utf-8")
    (lists / "valid.txt").write_text("\n".join(parts["valid"]) + "\n", encoding="utf-8")
    (lists / "test.txt").write_text("\n".join(parts["test"]) + "\n", encoding="utf-8")
    proc = _train_messy(messy["root"], lists, tmp_path / "runs", "data.max_skip_fraction=0.5", "data.folds=all")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {lists}: 1 keys in both train and test: {leaked}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs" / "quickstart" / "split").exists()
