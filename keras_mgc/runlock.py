"""One process per run folder: a lock file that names its holder, taken atomically.

`python -m keras_mgc.train`, `python -m keras_mgc.evaluate` and the exporter hold the lock
of the folder they write into for as long as they run:

    with RunLock(run_dir, "python -m keras_mgc.train ..."):
        ...  # train, write checkpoints and results

A second process asking for the same folder gets `RunLockedError` at once, whose message
names the folder, the lock file and the holder (host, pid, start time, command).

How it is taken: ``os.open(path, O_CREAT | O_EXCL | O_WRONLY)`` on ``<folder>/run.lock``,
which either creates the file or fails because it exists, atomically, on every local
file system and on NFSv3/v4 (exclusive create is one server-side operation; it needs no
lock daemon). `fcntl`/`flock` locks would vanish with their process by themselves, but on
NFS they depend on the lock manager: mounted with ``nolock`` (common on clusters) every
client gets the lock and two copies of a job both run, which is the case to stop. The
file also records who holds it, which is what the refusal message needs.

The price of O_EXCL is that a killed process (SIGKILL, a node crash) leaves its file
behind. A lock is therefore *stale*, and taken over, when it was written on this host and
its process is gone: the pid is not running, or is running but started at another time
(pid reuse, from /proc/<pid>/stat), or the host has rebooted since (another boot id). A
lock from another host cannot be checked from here; the message says so and names the
file to delete once that job is known to be gone. Take-over renames the stale file aside
(only one of several racing processes can), re-reads what it moved, and puts it back if
it was not the stale lock it judged.

Multi-worker training (TF_CONFIG): only the chief (task "chief", or worker 0 when the
cluster has no chief) takes the lock; the other workers of the same job share the folder.

This module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

#: The lock's file name inside the folder it guards.
LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the folder's lock; the message names the folder and the holder."""

    def __init__(self, folder: Path, lock_path: Path, holder: dict[str, Any], same_host: bool) -> None:
        self.folder, self.lock_path, self.holder = folder, lock_path, holder
        who = f"pid {holder.get('pid')} on host {holder.get('host')}"
        since = holder.get("started")
        command = holder.get("command")
        text = (f"{folder} is in use by another process ({who}"
                + (f", since {since}" if since else "") + ")"
                + (f": {command}" if command else "") + ". ")
        if same_host:
            text += "Wait for it to finish, or stop it, and run the command again."
        else:
            text += (f"It runs on another host, so this one cannot tell whether it is still alive; if it is gone, "
                     f"delete {lock_path} and run the command again.")
        super().__init__(text)


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), if known."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def is_chief() -> bool:
    """False for a non-chief task of a TF_CONFIG multi-worker cluster (`TaskInfo.is_chief`); True
    otherwise, also for a TF_CONFIG that cannot be used (the lock is taken when in doubt)."""
    from keras_mgc.distributed import ClusterError, task_info

    try:
        return task_info().is_chief
    except ClusterError:
        return True


def describe_self(command: str | None) -> dict[str, Any]:
    """What a lock records about the process taking it."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command if command is not None else " ".join([Path(sys.executable).name, *sys.argv]),
        "boot_id": _boot_id(),
        "start_ticks": _start_ticks(os.getpid()),
        "token": uuid.uuid4().hex,
    }


def stale_reason(holder: dict[str, Any]) -> str | None:
    """Why a lock written on this host is stale (its process is gone), or None if it may be alive.

    Locks of other hosts are never judged stale here (nothing can be checked from here).
    """
    if holder.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if holder.get("boot_id") and boot and holder["boot_id"] != boot:
        return "the host has rebooted since the lock was taken"
    try:
        pid = int(holder.get("pid"))
    except (TypeError, ValueError):
        return "the lock names no valid pid"
    if not _pid_running(pid):
        return f"process {pid} is not running"
    ticks = holder.get("start_ticks")
    now = _start_ticks(pid)
    if ticks is not None and now is not None and int(ticks) != now:
        return f"pid {pid} now belongs to another process (started at another time)"
    return None


def read_lock(lock_path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file; {} for an unreadable or half-written one; None if absent."""
    try:
        text = lock_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """The lock of `folder` (``folder/run.lock``) for this process; a context manager.

    `acquire` raises RunLockedError when a live process holds it, takes over a stale
    lock (logging why on stderr), and returns self. `release` removes the file only if it
    is still this process's lock. `lock_path` overrides where the file lives (for a folder
    that is replaced as a whole, such as an export, the lock sits beside it).
    """

    def __init__(self, folder: str | os.PathLike[str], command: str | None = None,
                 lock_path: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder)
        self.lock_path = Path(lock_path) if lock_path is not None else self.folder / LOCK_NAME
        self.command = command
        self.record: dict[str, Any] | None = None
        self.took_over: str | None = None  # why a stale lock was taken over, if one was

    # ------------------------------------------------------------------ taking
    def _create(self) -> bool:
        """Create the lock file with our record; False if it exists."""
        record = describe_self(self.command)
        try:
            fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            raise
        os.close(fd)
        self.record = record
        return True

    def _remove_stale(self, judged: dict[str, Any]) -> None:
        """Move the stale lock aside; restore it if what was moved is not the one judged stale."""
        aside = self.lock_path.with_name(f".{self.lock_path.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.lock_path, aside)
        except FileNotFoundError:  # another process took it over first
            return
        moved = read_lock(aside)
        if moved != judged:  # a live lock replaced the stale one in between: put it back
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                os.link(aside, self.lock_path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)

    def acquire(self) -> "RunLock":
        if not is_chief():
            return self
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            if self._create():
                return self
            holder = read_lock(self.lock_path)
            if holder is None:  # released between our attempt and the read
                continue
            if not holder:  # empty or half-written: its writer may be between create and write
                time.sleep(0.05)
                holder = read_lock(self.lock_path)
                if holder is None:
                    continue
                if not holder:
                    age = time.time() - self._mtime()
                    if age < 5.0:
                        time.sleep(0.1)
                        continue
                    reason = "the lock file is empty or unreadable and older than 5 s"
                    self._take_over(holder, reason)
                    continue
            reason = stale_reason(holder)
            if reason is None:
                raise RunLockedError(self.folder, self.lock_path, holder,
                                     holder.get("host") == socket.gethostname())
            self._take_over(holder, reason)
        raise RuntimeError(f"could not take the lock {self.lock_path} after 20 attempts (it keeps changing)")

    def _mtime(self) -> float:
        try:
            return self.lock_path.stat().st_mtime
        except OSError:
            return time.time()

    def _take_over(self, holder: dict[str, Any], reason: str) -> None:
        self.took_over = reason
        who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "an unknown process"
        print(f"note: {self.folder}: taking over the lock left by {who} ({reason})", file=sys.stderr, flush=True)
        self._remove_stale(holder)

    # ------------------------------------------------------------------ releasing
    def release(self) -> None:
        """Remove the lock file if it is still ours (never another process's)."""
        if self.record is None:
            return
        current = read_lock(self.lock_path)
        if current is not None and current.get("token") == self.record["token"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)
        self.record = None

    @property
    def held(self) -> bool:
        return self.record is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_for_output(out: str | os.PathLike[str], command: str | None = None,
                    run_dir: str | os.PathLike[str] | None = None) -> RunLock:
    """The lock an exporter takes before writing `out`.

    Inside a run folder (the default ``<run>/export``) it is the run folder's own lock, so
    an export into a run that is still training, and two exports into one run, are
    refused. Elsewhere it is ``.<name>.lock`` beside `out` (the folder itself is replaced
    as a whole when the export is published, so the lock cannot live inside it).
    """
    out = Path(out).absolute()
    if run_dir is not None:
        run = Path(run_dir).absolute()
        if out == run or run in out.parents:
            return RunLock(run, command)
    return RunLock(out, command, lock_path=out.parent / f".{out.name}.lock")

