"""Atomic file writes: a result, checkpoint or artifact either exists whole or not at all.

Everything is written under a temporary name in the destination's folder (same file
system) and renamed into place with `os.replace`, which is atomic on POSIX. A crash leaves
at most a `.tmp-*` file behind, never a truncated file under the real name.

The one home of atomic writes and JSON cleaning: training, evaluation, data caches and the
exporter (`keras_mgc.export.publish` builds its staging folder on these) all use it.

A full disk (ENOSPC) or an exhausted quota (EDQUOT) while writing is a `DiskFullError`
naming the file being written, whatever the writer (Python, h5py, libsndfile, zipfile);
`disk_full_guard` turns it into one message and exit code at the top of every command.

This module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_directory", "replace_directory", "write_bytes", "write_text", "write_json",
           "read_json", "to_jsonable", "DiskFullError", "disk_full_guard",
           "disk_full_cause", "require_space", "free_bytes"]

#: errno values that mean "the disk is full": no space left, or the user's quota is used up.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Exit code of every command that stopped on a full disk (nothing finished is lost).
EXIT_DISK_FULL = 4
#: A writer that loses errno (libsndfile says only "System error.") is taken to have hit a
#: full disk when its destination has less than this left once it failed.
_NEARLY_FULL_BYTES = 256 * 1024


class DiskFullError(OSError):
    """No space left on the device (or the quota is exceeded) while writing `path`."""

    def __init__(self, path: str | os.PathLike[str], code: int = errno.ENOSPC) -> None:
        super().__init__(code, os.strerror(code), os.fspath(path))
        self.path = Path(path)


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes available to this user on the file system holding `path` (its nearest existing folder)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def require_space(path: str | os.PathLike[str], nbytes: int) -> None:
    """Raise DiskFullError(path) unless `nbytes` fit on `path`'s file system.

    For writers that must not meet a full disk midway: HDF5 (h5py) crashes the process
    with a segmentation fault when it closes a file whose writes failed with ENOSPC.
    """
    free = free_bytes(path)
    if free is not None and free < nbytes:
        raise DiskFullError(path)


def disk_full_cause(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT error behind `exc` (itself, its cause or context), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        text = str(exc)
        if "No space left on device" in text or "Disk quota exceeded" in text:  # e.g. tf.errors (TensorBoard)
            if isinstance(exc, OSError):
                return exc
            code = errno.EDQUOT if "Disk quota exceeded" in text else errno.ENOSPC
            named = re.search(r"(/[^\s;]+); (?:No space left on device|Disk quota exceeded)", text)
            return OSError(code, os.strerror(code), named.group(1) if named else None)
        exc = exc.__cause__ or exc.__context__
    return None


def _as_disk_full(exc: BaseException, path: Path, probe: Path) -> DiskFullError | None:
    """`exc` (raised while writing `path`) as a DiskFullError, if it was one."""
    if isinstance(exc, DiskFullError):
        return exc
    cause = disk_full_cause(exc)
    if cause is not None:
        return DiskFullError(path, cause.errno if cause.errno in DISK_FULL_ERRNOS else errno.ENOSPC)
    if isinstance(exc, Exception) and not isinstance(exc, (ValueError, TypeError, KeyError)):
        free = free_bytes(probe)
        if free is not None and free < _NEARLY_FULL_BYTES:
            return DiskFullError(path)
    return None


def disk_full_message(error: OSError, last_checkpoint: str | os.PathLike[str] | None = None,
                      checkpoints: bool = True) -> str:
    """The one message for a full disk: what was being written, what is safe, what to do."""
    what = "disk quota exceeded" if error.errno == errno.EDQUOT else "no space left on device"
    target = getattr(error, "path", None) or error.filename or "a file"
    text = f"{what} while writing {target}"
    if checkpoints:
        text += f"; the last complete checkpoint is {last_checkpoint or 'none yet (no epoch finished)'}"
    return text + "; free space and run the same command to continue"


def _drain_stdout() -> None:
    """Flush stdout; if it cannot be written (it is a file on the full disk), point it at
    /dev/null so that the interpreter's own flush at exit does not fail a second time."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


def output_name(fd: int = 1) -> str:
    """What file descriptor `fd` writes to (a file name where /proc says it), for messages."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    name = {1: "the standard output", 2: "the standard error"}.get(fd, f"file descriptor {fd}")
    return f"{name} ({target})" if target.startswith("/") else name


def disk_full_guard(prog: str, last_checkpoint: Callable[[], str | os.PathLike[str] | None] | None = None,
                    checkpoints: bool = True) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's `main`: a full disk anywhere below it prints `disk_full_message`
    (no traceback) and returns EXIT_DISK_FULL. `last_checkpoint` is asked at that moment."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def guarded(*args: Any, **kwargs: Any) -> int:
            try:
                return main(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised unless it is a full disk
                cause = disk_full_cause(exc)
                if cause is None:
                    raise
                try:
                    checkpoint = last_checkpoint() if last_checkpoint is not None else None
                except Exception:  # noqa: BLE001 - the message must still come out
                    checkpoint = None
                error = exc if isinstance(exc, DiskFullError) else cause
                _drain_stdout()
                print(f"{prog}: error: {disk_full_message(error, checkpoint, checkpoints)}", file=sys.stderr,
                      flush=True)
                return EXIT_DISK_FULL

        return guarded

    return decorate


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A full disk met while creating a folder or temporary name for `path` names `path`."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(path, exc.errno) from exc
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); on success rename it onto `path`.

    For writers that need a file name (e.g. `model.save`, which checks the `.keras` suffix).
    On error the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    suffix = "".join(path.suffixes) or ".tmp"
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # writers such as h5py want to create the file themselves
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise FileNotFoundError(f"nothing was written to {tmp_path} for {path}")
        _fsync(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as exc:
        full = _as_disk_full(exc, path, tmp_path if tmp_path.exists() else path.parent)
        if full is not None:
            raise full from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; when the block succeeds it replaces `path`.

    For writers that build a directory (a SavedModel). On error the temporary folder is
    removed and `path` is left as it was.
    """
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        replace_directory(tmp, path)
    except BaseException as exc:
        full = _as_disk_full(exc, path, tmp)
        if full is not None:
            raise full from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_directory(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename `src` to `dst`; an existing `dst` is moved aside first and deleted after."""
    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent)) / dst.name
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as indented JSON to `path` atomically (NaN written as null)."""
    write_text(path, json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON document in `path` (UTF-8)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def to_jsonable(value: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, non-finite floats to None, paths to str.

    >>> import numpy as np
    >>> to_jsonable({"a": np.float32(0.5), "b": [float("nan")], "c": Path("x")})
    {'a': 0.5, 'b': [None], 'c': 'x'}
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return to_jsonable(value.tolist())
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
