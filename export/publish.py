"""Atomic writes: an export is built in a staging folder and renamed into place when done.

Everything goes to ``<parent>/.<out>.staging-XXXX/`` (same file system as the destination).
Files inside are themselves written under a temporary name and renamed, and directories
(SavedModels) are built under a temporary name and renamed. At the end the staging folder
is renamed to ``<out>`` (verification passed) or ``<out>.failed`` (it did not); an older
folder of that name is moved aside first and deleted after. A crash therefore leaves only
a hidden ``.staging-`` folder, never a complete-looking export; the next export removes
staging folders whose process is gone. This module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_OWNER = ".owner-pid"


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary name in the same folder, fsync, rename);
    a full disk is a keras_mgc.io.DiskFullError naming `path`."""
    from keras_mgc.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")


def to_jsonable(value: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, non-finite floats to None, paths to str."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; when the block succeeds it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        replace_directory(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_directory(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; an existing `dst` is moved aside first and deleted after."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent)) / dst.name
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Staging:
    """The folder an export is built in, published as a whole at the end."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out).absolute()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.removed_stale = self._remove_stale()
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.staging-", dir=self.out.parent))
        (self.dir / _OWNER).write_text(str(os.getpid()))

    @property
    def failed_path(self) -> Path:
        return self.out.with_name(self.out.name + ".failed")

    def _remove_stale(self) -> list[Path]:
        """Staging folders of earlier exports to this destination whose process is gone."""
        removed = []
        for candidate in self.out.parent.glob(f".{self.out.name}.staging-*"):
            try:
                pid = int((candidate / _OWNER).read_text())
            except (OSError, ValueError):
                pid = -1
            if pid > 0 and _pid_alive(pid):
                continue
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
        return removed

    def publish(self, passed: bool) -> Path:
        """Move the finished export to `out` (passed) or `out.failed`; returns where it went."""
        (self.dir / _OWNER).unlink(missing_ok=True)
        target = self.out if passed else self.failed_path
        replace_directory(self.dir, target)
        if passed and self.failed_path.exists():
            shutil.rmtree(self.failed_path, ignore_errors=True)  # an older failure is now stale
        return target

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
