"""A full disk is one message and exit code 4, never a traceback or a crash, and loses nothing.

The write layer (keras_mgc.io) is tested with ENOSPC injected where the writer would meet
it; the commands are run on real, small tmpfs file systems that fill up (skipped where
mounting is not allowed): the quickstart's data generation, a checkpoint write during
training (then the same command, after freeing space, finishes the run). The export's
staging write and the tagger's output are in tests/test_sample_rate.py, which has a
trained model at hand.
"""

from __future__ import annotations

import errno
import os
import subprocess

import numpy as np
import pytest
import soundfile as sf

from keras_mgc import io as kio
from tests.conftest import run_cli
from tests.test_reliability import QUICKSTART, TINY

FULL = "no space left on device while writing"
#: A quickstart small enough for a few MiB of disk: 20 clips of 3 s, 1 s crops.
SMALL_DATA = ["data.synthetic_clips_per_class=4", "data.synthetic_seconds=3.0", "data.crop_samples=22050",
              "train.batch_size=8", "data.data_cycle=2"]


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --------------------------------------------------------------------------- the write layer


def test_enospc_inside_an_atomic_write_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "results.json"
    kio.write_json(target, {"epoch": 1})
    with pytest.raises(kio.DiskFullError) as info:
        with kio.atomic_path(target) as tmp:
            tmp.write_text("partial")
            _enospc()
    assert info.value.path == target and info.value.errno == errno.ENOSPC
    assert kio.read_json(target) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left


def test_a_writer_that_loses_errno_is_recognised_only_when_the_disk_is_nearly_full(tmp_path, monkeypatch):
    """libsndfile reports a full disk as "System error." (soundfile.LibsndfileError)."""
    from keras_mgc.data import synthetic

    def fails(*_args, **_kwargs):
        raise sf.LibsndfileError(2, prefix="")  # SFE_SYSTEM: "System error."

    monkeypatch.setattr(synthetic.sf, "write", fails)
    with pytest.raises(sf.LibsndfileError):  # plenty of space: the writer's own error, not "disk full"
        synthetic.make_synthetic_dataset(tmp_path / "a", clips_per_class=1, seconds=0.1)
    monkeypatch.setattr(kio, "free_bytes", lambda path: 4096)
    with pytest.raises(kio.DiskFullError) as info:
        synthetic.make_synthetic_dataset(tmp_path / "b", clips_per_class=1, seconds=0.1)
    assert info.value.path == tmp_path / "b" / "arpeggio" / "arpeggio.00000.wav"


def test_the_guard_prints_one_message_and_returns_exit_code_4(capsys):
    @kio.disk_full_guard("keras_mgc.train", lambda: "runs/q/fold_01/backup/weights-0003.weights.h5")
    def main() -> int:
        raise kio.DiskFullError("runs/q/fold_01/best.keras")

    assert main() == kio.EXIT_DISK_FULL == 4
    assert capsys.readouterr().err == (
        "keras_mgc.train: error: no space left on device while writing runs/q/fold_01/best.keras; the last complete "
        "checkpoint is runs/q/fold_01/backup/weights-0003.weights.h5; free space and run the same command to continue\n")

    @kio.disk_full_guard("keras_mgc.tag", checkpoints=False)
    def quota() -> int:
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "out.json")
        except OSError as exc:
            raise RuntimeError("while writing the results") from exc

    assert quota() == 4
    assert capsys.readouterr().err == (
        "keras_mgc.tag: error: disk quota exceeded while writing out.json; free space and run the same command to "
        "continue\n")

    @kio.disk_full_guard("x")
    def other() -> int:
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):  # only a full disk is turned into the message
        other()


def test_a_checkpoint_that_cannot_fit_is_refused_before_hdf5_writes_anything(tmp_path, monkeypatch):
    """HDF5 segfaults closing a file whose writes failed with ENOSPC: it must never start one."""
    import keras

    from keras_mgc.fold_trainer import save_model

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    monkeypatch.setattr(kio, "free_bytes", lambda path: 100_000)
    with pytest.raises(kio.DiskFullError) as info:
        save_model(model, tmp_path / "backup" / "weights-0002.weights.h5", weights_only=True)
    assert info.value.path == tmp_path / "backup" / "weights-0002.weights.h5"
    assert not list(tmp_path.rglob("*.h5"))
    monkeypatch.undo()
    save_model(model, tmp_path / "backup" / "weights-0002.weights.h5", weights_only=True)
    assert (tmp_path / "backup" / "weights-0002.weights.h5").stat().st_size > 0


def test_a_full_disk_cache_stops_the_run_instead_of_skipping_tracks(tmp_path, monkeypatch):
    from keras_mgc.data import pipeline
    from keras_mgc.data.datasets import Track

    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(4000, np.float32), 22050)
    monkeypatch.setattr(pipeline.np, "save", _enospc)
    store = pipeline.ClipStore([Track(str(path), "a", "a/a")], cache="disk", cache_dir=tmp_path / "cache")
    with pytest.raises(kio.DiskFullError) as info:
        store.prepare()
    assert info.value.path.parent == tmp_path / "cache" and info.value.path.suffix == ".npy"


def test_tensorboard_on_a_full_disk_is_named_by_the_guard(small_tmpfs, capsys):
    """TensorFlow's event writer reports ENOSPC as a ResourceExhaustedError naming its file."""
    import tensorflow as tf

    disk = small_tmpfs("64k")

    @kio.disk_full_guard("keras_mgc.train", lambda: None)
    def main() -> int:
        writer = tf.summary.create_file_writer(str(disk / "tensorboard"))
        with writer.as_default():
            for step in range(200):
                tf.summary.histogram("h", np.linspace(0, 1, 5000) + step, step=step)
            writer.flush()
        return 0

    assert main() == 4
    err = capsys.readouterr().err
    assert err.startswith(f"keras_mgc.train: error: {FULL} {disk}/tensorboard/events.out.tfevents."), err


# --------------------------------------------------------------------------- the commands, on a disk that fills up


def _check_clean_exit(proc: subprocess.CompletedProcess) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 4, text[-3000:]
    assert "Traceback" not in text and "Segmentation fault" not in text and "Exception ignored" not in text, text[-3000:]
    lines = [line for line in proc.stderr.splitlines() if FULL in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].endswith("free space and run the same command to continue")
    return lines[0]


def test_quickstart_data_generation_on_a_full_disk(small_tmpfs):
    disk = small_tmpfs("1m")
    proc = run_cli("keras_mgc.train", "--recipe", QUICKSTART, "--output-dir", str(disk), "--set", *SMALL_DATA, *TINY)
    line = _check_clean_exit(proc)
    data = disk / "quickstart" / "synthetic_data"
    assert f"{FULL} {data}/" in line and ".wav;" in line
    assert "the last complete checkpoint is none yet" in line
    written = sorted(data.rglob("*.wav"))
    assert written and not list(data.rglob(".*tmp*"))  # finished clips only, no partial file
    for wav in written:
        assert sf.info(wav).frames == 3 * 22050
    assert not (disk / "quickstart" / "run.lock").exists()  # the lock went with the process
