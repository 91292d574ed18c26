"""One sample rate from data to device: a 16 kHz run end to end (train, export, tag) agrees with
itself; the run folder is one process's at a time; last.keras is what `train.monitor: last` tests.

One training run (the quickstart at model.frontend.sample_rate=16000, 1 s crops given in
seconds, disk cache, 2 epochs, `train.monitor: last`) serves the whole module. While it
trains, a second identical command and an export into it are started and must be refused.
Then: the run decoded and cached at 16 kHz, its results name last.keras, evaluate honours
it, the export's metadata says 16 kHz, the tagger's probabilities equal the Keras model's on
the same windows, and a full disk under the export's staging folder or the tagger's output
is one message and exit code 4.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from keras_mgc import io as kio
from tests.conftest import REPO_ROOT, mount_tmpfs, run_cli, unmount
from tests.test_reliability import QUICKSTART, TINY

RATE = 16000
ARGS = ["--recipe", QUICKSTART, "--set", f"model.frontend.sample_rate={RATE}", "data.crop_seconds=1.0",
        "train.epochs=2", "train.monitor=last", "data.cache=disk", "data.synthetic_clips_per_class=4",
        "data.synthetic_seconds=3.0", "train.batch_size=8", "data.data_cycle=2", *TINY]


@pytest.fixture(scope="module")
def run16(tmp_path_factory) -> dict:
    """The module's run. On a 64 MiB tmpfs (where mounting is allowed) the disk is filled up
    once epoch 1 is committed: the run stops on its epoch-2 checkpoint, and the same command,
    after freeing space, finishes it."""
    base = tmp_path_factory.mktemp("rate16k")
    out = base / "disk"
    why_not = mount_tmpfs(out, "64m")
    run_dir = out / "quickstart"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "keras_mgc.train", *ARGS, "--output-dir", str(out)]
    first = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    result: dict = {"dir": run_dir, "pid": first.pid, "tmpfs": why_not}
    try:
        deadline = time.monotonic() + 600
        while not (run_dir / "run.lock").is_file():
            assert first.poll() is None and time.monotonic() < deadline, "training ended before taking its lock"
            time.sleep(0.02)
        result["second"] = run_cli("keras_mgc.train", *ARGS, "--output-dir", str(out))
        result["export"] = run_cli("keras_mgc.export", "--run", str(run_dir), "--formats", "tflite",
                                   "--latency-runs", "0")
        result["overlapped"] = first.poll() is None
        if why_not is None:
            state = run_dir / "fold_01" / "backup" / "state.json"
            while not (state.is_file() and json.loads(state.read_text())["epoch"] >= 1):
                assert first.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch"
                time.sleep(0.02)
            # Epoch 1 is committed: leave 256 KiB, less than the next checkpoint needs.
            filler = out / "filler"
            with open(filler, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, max(kio.free_bytes(out) - 256 * 1024, 1))
            stdout, stderr = first.communicate(timeout=600)
            result["full"] = subprocess.CompletedProcess(command, first.returncode, stdout, stderr)
            result["epoch_after_full"] = json.loads(state.read_text())["epoch"]
            filler.unlink()  # free space, run the same command
            again = run_cli("keras_mgc.train", *ARGS, "--output-dir", str(out))
            assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
            result["stdout"] = again.stdout
        else:
            stdout, stderr = first.communicate(timeout=900)
            assert first.returncode == 0, stdout[-2000:] + stderr[-3000:]
            result["stdout"] = stdout
        yield result
    finally:
        if first.poll() is None:
            first.kill()
        if why_not is None:
            unmount(out)


def test_a_second_train_and_an_export_into_a_folder_being_trained_are_refused(run16):
    assert run16["overlapped"], "the first run finished before the others were tried"
    who = f"{run16['dir']} is in use by another process (pid {run16['pid']} on host {socket.gethostname()}"
    for name in ("second", "export"):
        proc = run16[name]
        assert proc.returncode == 2, (name, proc.stdout[-2000:], proc.stderr[-2000:])
        assert who in proc.stderr and "python -m keras_mgc.train" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (run16["dir"] / "export").exists()
    assert not (run16["dir"] / "run.lock").exists()  # released by the run at its end (and by the stopped one)


def test_a_checkpoint_write_on_a_full_disk_stops_cleanly_and_the_same_command_finishes(run16):
    if run16["tmpfs"]:
        pytest.skip(run16["tmpfs"])
    proc = run16["full"]
    text = proc.stdout + proc.stderr
    assert proc.returncode == 4, text[-3000:]
    assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]
    fold = run16["dir"] / "fold_01"
    assert proc.stderr.strip().splitlines()[-1] == (
        f"keras_mgc.train: error: no space left on device while writing {fold}/backup/weights-0002.weights.h5; "
        f"the last complete checkpoint is {fold}/backup/weights-0001.weights.h5; free space and run the same "
        "command to continue")
    assert run16["epoch_after_full"] == 1  # the committed epoch is intact
    record = json.loads((fold / "fold.json").read_text())
    assert record["resumed_from_epoch"] == 1 and record["epochs_run"] == 2  # the rerun went on from there


def test_the_run_decodes_caches_and_crops_at_the_models_rate(run16):
    assert f"Audio decoded at {RATE} Hz (model.frontend.sample_rate); crops of {RATE} samples = 1.000 s" \
        in run16["stdout"]
    results = json.loads((run16["dir"] / "results.json").read_text())
    assert results["recipe"]["model"]["frontend"]["sample_rate"] == RATE
    assert results["recipe"]["data"]["crop_samples"] == RATE
    cached = sorted((run16["dir"] / "cache").glob("*.npy"))
    assert len(cached) == 20  # every clip of the run, 3 s each, written at 22,050 Hz, cached at 16 kHz
    assert {np.load(p, mmap_mode="r").shape for p in cached} == {(3 * RATE,)}


def test_the_cache_key_holds_the_rate(tmp_path):
    from keras_mgc.data.datasets import Track
    from keras_mgc.data.pipeline import ClipStore

    path = tmp_path / "a.wav"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 22050).astype(np.float32), 22050)
    tracks = [Track(str(path), "a", "a/a")]
    lengths = {rate: ClipStore(tracks, "disk", tmp_path / "cache", sample_rate=rate).prepare().lengths[0]
               for rate in (16000, 22050)}
    assert lengths == {16000: 16000, 22050: 22050}
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # one file per rate, none reused across rates


def test_monitor_last_tests_last_keras_and_says_so(run16):
    fold = json.loads((run16["dir"] / "fold_01" / "fold.json").read_text())
    assert fold["checkpoint"] == "fold_01/last.keras"
    assert fold["evaluated"] == {"checkpoint": "last.keras", "epoch": 2, "monitor": "last"}
    assert (run16["dir"] / "fold_01" / "best.keras").is_file()  # kept beside it
    assert "| last.keras (epoch 2) |" in (run16["dir"] / "results.md").read_text()


def _export(run_dir: Path, out: Path, clips: list[str]) -> subprocess.CompletedProcess:
    return run_cli("keras_mgc.export", "--run", str(run_dir), "--out", str(out), "--formats", "tflite",
                   "--tflite-precisions", "float32", "--eval-audio", *clips, "--latency-runs", "0")


@pytest.fixture(scope="module")
def exported(run16, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export16k") / "export"
    clips = [str(p) for p in sorted((run16["dir"] / "synthetic_data").rglob("*.00000.wav"))]
    proc = _export(run16["dir"], out, clips)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out / "tflite" / "model_float32.tflite"


def test_the_export_reads_the_rate_and_checkpoint_from_the_run(run16, exported):
    meta = json.loads(exported.with_suffix(".json").read_text())
    assert meta["sample_rate"] == RATE and meta["crop_samples"] == RATE
    assert meta["training"]["checkpoint"].endswith("fold_01/last.keras")


def test_the_tagger_equals_the_keras_model_on_the_same_windows_at_16k(run16, exported, tmp_path):
    import keras

    from keras_mgc.audio import load_audio
    from keras_mgc.config import load_recipe
    from keras_mgc.models import load_float32
    from keras_mgc.windows import window_starts

    song = tmp_path / "song_44k.wav"  # another rate again: 44.1 kHz, resampled to 16 kHz by the tagger
    t = np.arange(int(4.3 * 44100)) / 44100
    sf.write(song, (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t))).astype(np.float32), 44100)
    proc = run_cli("keras_mgc.tag", str(song), "--model", str(exported), "--json", "--hop", "0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["sample_rate"] == RATE and doc["window"] == 1.0
    tagged = np.array(list(doc["results"][0]["probabilities"].values()))

    recipe = load_recipe(run16["dir"] / "recipe.yaml", [f"output_dir={run16['dir'].parent}"])
    classes = json.loads((run16["dir"] / "classes.json").read_text())
    model = load_float32(str(run16["dir"] / "fold_01" / "last.keras"), recipe.model, len(classes))
    audio = load_audio(song, RATE)
    windows = np.stack([audio[s : s + RATE] for s in window_starts(len(audio), RATE, RATE // 2)])
    assert doc["results"][0]["windows"] == len(windows) == 8
    keras_probs = np.asarray(keras.ops.softmax(model(windows, training=False))).mean(axis=0)
    np.testing.assert_allclose(tagged, keras_probs, atol=1e-4)
    # The same windows decoded at 22,050 Hz give other probabilities: the check can fail.
    wrong = load_audio(song, 22050)
    wrong_windows = np.stack([wrong[s : s + RATE] for s in window_starts(len(wrong), RATE, RATE // 2)])
    assert np.abs(np.asarray(keras.ops.softmax(model(wrong_windows))).mean(axis=0) - tagged).max() > 1e-4


def test_the_tagger_writing_to_a_full_disk_stops_with_one_message(exported, run16):
    song = next((run16["dir"] / "synthetic_data").rglob("*.wav"))
    with open("/dev/full", "w") as full:  # every write fails with ENOSPC
        proc = subprocess.run([sys.executable, "-m", "keras_mgc.tag", str(song), "--model", str(exported), "--json"],
                              cwd=REPO_ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "keras_mgc.tag: error: no space left on device while writing the standard output (/dev/full); "
        "free space and run the same command to continue")
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_an_export_staging_write_on_a_full_disk_publishes_nothing(run16, small_tmpfs):
    disk = small_tmpfs("256k")
    clips = [str(p) for p in sorted((run16["dir"] / "synthetic_data").rglob("*.00000.wav"))]
    proc = _export(run16["dir"], disk / "export", clips)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"export: error: no space left on device while writing {disk}/.export.staging-"), line
    assert f"the last complete checkpoint is {run16['dir'] / 'fold_01' / 'last.keras'};" in line
    assert "Traceback" not in proc.stderr
    assert [p.name for p in disk.iterdir()] == []  # staging removed, nothing published, lock released


def test_evaluate_honours_monitor_last(run16):
    fold_json = run16["dir"] / "fold_01" / "fold.json"
    record = json.loads(fold_json.read_text())
    record["evaluated"] = {"checkpoint": "best.keras", "epoch": 1, "monitor": "val_accuracy"}  # to be rewritten
    fold_json.write_text(json.dumps(record))
    proc = run_cli("keras_mgc.evaluate", "--run", str(run16["dir"]))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    record = json.loads(fold_json.read_text())
    assert record["checkpoint"] == "fold_01/last.keras" and record["evaluated"]["checkpoint"] == "last.keras"
    assert json.loads((run16["dir"] / "results.json").read_text())["evaluated_checkpoint"] == "last.keras"


def test_a_run_folder_written_before_the_rate_keys_existed_still_continues(tmp_path):
    import yaml

    from keras_mgc.config import RecipeError, load_recipe, recipe_to_dict
    from keras_mgc.train import open_run

    recipe = load_recipe(QUICKSTART, [f"output_dir={tmp_path}"])
    older = recipe_to_dict(recipe)
    for key in ("crop_seconds", "mel_sample_rate", "mel_hop_length"):
        del older["data"][key]
    (tmp_path / "quickstart").mkdir()
    (tmp_path / "quickstart" / "recipe.yaml").write_text(yaml.safe_dump(older))
    assert open_run(recipe, resume=True, overwrite=False) == tmp_path / "quickstart"
    with pytest.raises(RecipeError, match=r"model\.frontend\.sample_rate: 22050 -> 16000"):
        open_run(load_recipe(QUICKSTART, [f"output_dir={tmp_path}", f"model.frontend.sample_rate={RATE}"]), False, False)
