"""A real training run killed with SIGKILL mid-epoch resumes from its last saved epoch and ends
exactly where an uninterrupted run ends; two runs with the same seed are identical, and a
different seed gives different weights.

Four runs of the same command (the quickstart recipe on its generated data, tiny model,
4 epochs of 5 steps) share this module: A uninterrupted, B killed in epoch 3 and restarted,
C a second uninterrupted run (determinism), D with another seed. They run side by side
(which also shows that the results do not depend on the machine's load).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.test_reliability import QUICKSTART, TINY

EPOCHS = 4
COMMAND = ["--recipe", QUICKSTART, "--set", f"train.epochs={EPOCHS}", "data.data_cycle=4", "train.batch_size=8",
           "data.synthetic_clips_per_class=6", "data.synthetic_seconds=3.0", "data.crop_samples=22050", *TINY]


def _start(out: Path, *overrides: str) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    # One thread each: four runs share two cores without oversubscribing them (every run
    # uses the same setting, so the results stay comparable bit for bit).
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", "TF_NUM_INTRAOP_THREADS": "1",
           "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}
    log = open(out / "log.txt", "w")  # noqa: SIM115 - closed by _finish
    proc = subprocess.Popen([sys.executable, "-m", "keras_mgc.train", *COMMAND, *overrides, "--output-dir", str(out)],
                            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    proc.wait(timeout=timeout)
    proc.log.close()  # type: ignore[attr-defined]
    text = Path(proc.log.name).read_text()  # type: ignore[attr-defined]
    assert proc.returncode == 0, text[-4000:]
    return text


def _state_epoch(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "fold_01" / "backup" / "state.json").read_text())["epoch"]
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("resume")
    b = _start(base / "b")
    a = _start(base / "a")
    c = _start(base / "c")
    d = _start(base / "d", "seed=4021")
    b_dir = base / "b" / "quickstart"
    deadline = time.monotonic() + 400
    log = base / "b" / "log.txt"
    while _state_epoch(b_dir) < 2 or f"Epoch 3/{EPOCHS}" not in log.read_text():
        # Two epochs saved, and epoch 3 begun (Keras prints "Epoch 3/N" as it starts).
        assert b.poll() is None and time.monotonic() < deadline, "run B ended or stalled before epoch 3"
        time.sleep(0.02)
    started = time.monotonic()
    time.sleep(0.2)  # an epoch is 5 training steps of 0.15 s or more, then validation
    b.send_signal(signal.SIGKILL)
    b.wait()
    b.log.close()
    killed_after = time.monotonic() - started
    killed_at_epoch = _state_epoch(b_dir)
    killed_log = (base / "b" / "log.txt").read_text()
    resumed = _start(base / "b")  # the same command again
    a_log, resumed_log, c_log = _finish(a), _finish(resumed), _finish(c)
    _finish(d)
    return {"a": base / "a" / "quickstart", "b": b_dir, "c": base / "c" / "quickstart", "d": base / "d" / "quickstart",
            "killed_at_epoch": killed_at_epoch, "killed_after": killed_after, "killed_log": killed_log,
            "resumed_log": resumed_log, "a_log": a_log, "c_log": c_log, "returncode": b.returncode, "b_pid": b.pid}


def _json(path: Path):
    return json.loads(path.read_text())


def _best_weights(run_dir: Path) -> list[np.ndarray]:
    import keras

    import keras_mgc.models  # noqa: F401 - registers the custom layers

    return keras.models.load_model(run_dir / "fold_01" / "best.keras").get_weights()


def test_killed_run_was_killed_mid_epoch_after_two_saved_epochs(runs):
    assert runs["returncode"] == -signal.SIGKILL
    log = runs["killed_log"]
    assert f"Epoch 3/{EPOCHS}" in log  # epoch 3 had begun ...
    assert len(re.findall(r"^\d+/\d+ - .*loss", log, re.MULTILINE)) == 2  # ... and not finished
    assert runs["killed_at_epoch"] == 2 and runs["killed_after"] >= 0.2
    assert "fold_01: best epoch" not in log


def test_restart_resumes_from_the_last_saved_epoch_not_from_scratch(runs):
    log = runs["resumed_log"]
    # The killed run's lock was left behind and is taken over (keras_mgc.runlock).
    assert f"taking over the lock left by pid {runs['b_pid']} on " in log
    assert f"(process {runs['b_pid']} is not running)" in log
    assert "resumed fold_01 after epoch 2" in log
    assert f"fold_01: resuming at epoch 3 of {EPOCHS}" in log
    assert "Epoch 1/" not in log and "Epoch 2/" not in log  # epochs 1-2 were not trained again
    assert f"Epoch 3/{EPOCHS}" in log and f"Epoch {EPOCHS}/{EPOCHS}" in log
    history = _json(runs["b"] / "fold_01" / "history.json")
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))  # each epoch exactly once
    record = _json(runs["b"] / "fold_01" / "fold.json")
    assert record["resumed_from_epoch"] == 2 and record["epochs_run"] == EPOCHS


def test_resumed_run_writes_complete_results_equal_to_the_uninterrupted_run(runs):
    resumed, straight = _json(runs["b"] / "results.json"), _json(runs["a"] / "results.json")
    (fold,) = resumed["folds"]
    assert fold["test"]["whole"]["n"] == fold["split"]["sizes"]["test"] == 10 and fold["epochs_run"] == EPOCHS
    assert resumed["summary"]["whole"]["accuracy"]["n"] == 1
    # The interrupted run ends exactly where the uninterrupted one does: same crops per
    # epoch (planned from seed and epoch), weights and optimizer state (Adam moments and
    # iteration count) restored, the schedule set per epoch, op determinism on.
    assert _json(runs["b"] / "fold_01" / "history.json") == _json(runs["a"] / "fold_01" / "history.json")
    assert fold["test"] == straight["folds"][0]["test"]
    assert fold["best_epoch"] == straight["folds"][0]["best_epoch"]
    assert fold["val_accuracy"] == straight["folds"][0]["val_accuracy"]
    for x, y in zip(_best_weights(runs["b"]), _best_weights(runs["a"])):
        np.testing.assert_array_equal(x, y)


def test_no_partial_file_survives_the_kill(runs):
    import keras

    import keras_mgc.models  # noqa: F401 - registers the custom layers

    leftovers = [p for p in runs["b"].rglob("*") if ".tmp-" in p.name]
    assert not leftovers, leftovers
    for path in runs["b"].rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())  # every JSON file is whole
        elif path.suffix == ".keras":
            keras.models.load_model(path)
    backup = sorted(p.name for p in (runs["b"] / "fold_01" / "backup").iterdir())
    assert backup == ["state.json", f"weights-{EPOCHS:04d}.weights.h5"]


def test_same_seed_gives_identical_metrics_and_weights(runs):
    a, c = _json(runs["a"] / "results.json"), _json(runs["c"] / "results.json")
    assert a["recipe"]["train"]["deterministic"] is True
    assert c["folds"][0]["test"] == a["folds"][0]["test"]
    assert _json(runs["c"] / "fold_01" / "history.json") == _json(runs["a"] / "fold_01" / "history.json")
    for x, y in zip(_best_weights(runs["c"]), _best_weights(runs["a"])):
        np.testing.assert_array_equal(x, y)


def test_a_different_seed_gives_different_weights(runs):
    a, d = _best_weights(runs["a"]), _best_weights(runs["d"])
    assert len(a) == len(d)
    assert any(not np.array_equal(x, y) for x, y in zip(a, d))
    assert _json(runs["d"] / "results.json")["seeds"]["per_fold"] == {"fold_01": 4022}
