"""What a result was produced with: package versions, the machine, the time. Defined once.

- `package_versions`: installed distribution versions (importlib.metadata; no imports, so
  the TF-free exporter metadata and the on-device side can call it);
- `environment`: the record in results.json and the benchmark (imports TensorFlow, which
  the caller has loaded anyway);
- `cpu_model`, `cpu_flags`: what /proc/cpuinfo says; `utc_now`: an ISO timestamp.

>>> sorted(package_versions(["numpy"]))
['numpy', 'python']
>>> utc_now().endswith("Z")
True
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from collections.abc import Iterable
from importlib import metadata as _pkg
from typing import Any

__all__ = ["EXPORT_PACKAGES", "package_versions", "environment", "cpu_model", "cpu_flags", "utc_now"]

#: Distributions recorded beside an exported artifact.
EXPORT_PACKAGES = ("keras-mgc", "tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime",
                   "ai-edge-litert", "numpy")


def package_versions(names: Iterable[str] = EXPORT_PACKAGES) -> dict[str, str | None]:
    """Python's version and each installed distribution's; uninstalled ones are left out."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = _pkg.version(name)
        except _pkg.PackageNotFoundError:
            continue
    return out


def utc_now() -> str:
    """The current UTC time to the second, ISO 8601 with a trailing Z."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else `platform.processor()`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def environment() -> dict[str, Any]:
    """Versions and devices, for the record (results.json, bench.json). Imports TensorFlow."""
    import keras
    import numpy as np
    import soundfile
    import soxr
    import tensorflow as tf

    from keras_mgc import __version__

    return {
        "keras_mgc": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "soundfile": soundfile.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
        "soxr": soxr.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }
