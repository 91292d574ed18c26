"""One process per run folder (keras_mgc.runlock): a live holder is named and refused, a lock
left by a killed process is taken over, a lock of another host is refused with the way out.

Holders here are real processes (a Python child that takes the lock and sleeps, or is
killed with SIGKILL); the training command itself is refused by one in
`test_a_second_train_on_a_folder_in_use_stops_at_once`, and by a real training run in
tests/test_sample_rate.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keras_mgc.runlock import LOCK_NAME, RunLock, RunLockedError, describe_self, is_chief, lock_for_output
from tests.conftest import REPO_ROOT, run_cli

HOLD = """
import sys, time
from keras_mgc.runlock import RunLock
lock = RunLock(sys.argv[1], "holder for a test").acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(folder: Path, seconds: float = 60) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_the_lock_records_who_holds_it_and_is_removed_on_release(tmp_path):
    with RunLock(tmp_path / "run", "python -m keras_mgc.train --recipe r.yaml") as lock:
        record = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
        assert record["command"] == "python -m keras_mgc.train --recipe r.yaml" and record["started"]
        assert lock.held
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_a_live_holder_is_named_and_refused(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunLockedError) as info:
            RunLock(tmp_path / "run").acquire()
        message = str(info.value)
        assert str(tmp_path / "run") in message
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message and "holder for a test" in message
        # The refused process must not have touched the holder's lock.
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    holder = _holder(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == holder.pid  # left behind
    lock = RunLock(tmp_path / "run").acquire()
    assert lock.took_over == f"process {holder.pid} is not running"
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert [p.name for p in (tmp_path / "run").iterdir()] == [LOCK_NAME]  # nothing left aside
    lock.release()


def test_a_reused_pid_does_not_keep_a_stale_lock_alive(tmp_path):
    """The recorded pid runs again, but it is another process (another start time)."""
    record = describe_self("old run")
    if record["start_ticks"] is None:
        pytest.skip("no /proc/<pid>/stat here: pid reuse cannot be told apart")
    record["start_ticks"] += 1
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    lock = RunLock(tmp_path).acquire()
    assert "another process" in lock.took_over
    lock.release()


def test_a_lock_of_another_host_is_refused_with_the_file_to_delete(tmp_path):
    record = describe_self("python -m keras_mgc.train ...") | {"host": "node-17.cluster", "pid": 4242}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(RunLockedError, match=r"pid 4242 on host node-17\.cluster.*delete .*run\.lock"):
        RunLock(tmp_path).acquire()


def test_release_never_removes_another_process_lock(tmp_path):
    lock = RunLock(tmp_path).acquire()
    (tmp_path / LOCK_NAME).write_text(json.dumps(describe_self("someone else")))  # e.g. after a take-over
    lock.release()
    assert (tmp_path / LOCK_NAME).exists()


def test_an_export_locks_its_run_folder_or_a_file_beside_its_output(tmp_path):
    assert lock_for_output(tmp_path / "run" / "export", run_dir=tmp_path / "run").lock_path == \
        tmp_path / "run" / LOCK_NAME
    elsewhere = lock_for_output(tmp_path / "deploy" / "genre", run_dir=tmp_path / "run")
    assert elsewhere.lock_path == (tmp_path / "deploy" / ".genre.lock").absolute()


@pytest.mark.parametrize("config, chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}, False),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}, True),
])
def test_only_the_chief_of_a_multi_worker_job_takes_the_lock(monkeypatch, config, chief):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert is_chief() is chief


def test_a_second_train_on_a_folder_in_use_stops_at_once(tmp_path):
    run_dir = tmp_path / "runs" / "quickstart"
    holder = _holder(run_dir)
    (run_dir / "fold_01").mkdir()  # the other process's work
    try:
        started = time.monotonic()
        proc = run_cli("keras_mgc.train", "--recipe", str(REPO_ROOT / "recipes" / "quickstart.yaml"),
                       "--output-dir", str(tmp_path / "runs"), "--overwrite")
        assert time.monotonic() - started < 60  # before any data or TensorFlow work
        assert proc.returncode == 2
        assert f"{run_dir} is in use by another process (pid {holder.pid} on host {socket.gethostname()}" \
            in proc.stderr
        assert "Traceback" not in proc.stderr
        assert sorted(p.name for p in run_dir.iterdir()) == ["fold_01", LOCK_NAME]  # --overwrite deleted nothing
    finally:
        holder.kill()
        holder.wait()
