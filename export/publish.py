"""Staging: an export is built in a staging folder and renamed into place when done.

Everything goes to ``<parent>/.<out>.staging-XXXX/`` (same file system as the destination).
Files inside are themselves written with `keras_mgc.io` (temporary name, then rename), and
directories (SavedModels) with `keras_mgc.io.atomic_directory`. At the end the staging folder
is renamed to ``<out>`` (verification passed) or ``<out>.failed`` (it did not); an older
folder of that name is moved aside first and deleted after. A crash therefore leaves only
a hidden ``.staging-`` folder, never a complete-looking export; the next export removes
staging folders whose process is gone. This module does not import TensorFlow.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from keras_mgc.io import replace_directory

__all__ = ["Staging"]

_OWNER = ".owner-pid"


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
