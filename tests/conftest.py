"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's real test data (../shared/data, or $KERAS_MGC_SHARED_DATA); skips when absent.

    Users of the toolkit do not have this folder, so tests that need it skip with a reason.
    """
    env = os.environ.get("KERAS_MGC_SHARED_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path} (set KERAS_MGC_SHARED_DATA to its folder)")
    return path.resolve()


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: int = 900) -> "subprocess.CompletedProcess[str]":
    """Run `python -m module args...` as a user would; returns the finished process."""
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


#: A CPU-sized CCS model for end-to-end runs in tests: the `tiny` preset (keras_mgc.presets;
#: tracing a training step costs more than running it on 2 cores, so the graph is kept small).
SMALL_MODEL_OVERRIDES = ["model.preset=tiny"]


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> Path:
    """The README's main job, run once per test session: quickstart on the generated dataset."""
    out = tmp_path_factory.mktemp("quickstart")
    proc = run_cli("keras_mgc.train", "--recipe", str(REPO_ROOT / "recipes" / "quickstart.yaml"),
                   "--output-dir", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (out / "quickstart" / "stdout.txt").write_text(proc.stdout)
    return out / "quickstart"


@pytest.fixture(scope="session")
def gtzan_mini_run(shared_data, tmp_path_factory) -> Path:
    """A 2-fold, 2-epoch run of the headline recipe on the real gtzan-mini clips, small model."""
    out = tmp_path_factory.mktemp("gtzan_mini")
    proc = run_cli("keras_mgc.train", "--recipe", str(REPO_ROOT / "recipes" / "gtzan_cv.yaml"),
                   "--data-dir", str(shared_data / "gtzan-mini"), "--allow-missing", "--folds", "1,2",
                   "--output-dir", str(out), "--set", "train.epochs=2", "train.batch_size=16",
                   "data.data_cycle=2", "train.verbose=2", *SMALL_MODEL_OVERRIDES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (out / "gtzan_cv" / "stdout.txt").write_text(proc.stdout)
    return out / "gtzan_cv"


#: Training steps of the tagger's test model: enough that it tells classical, metal, blues
#: and country apart on unseen GTZAN tracks, which the segment test needs (12 steps did not;
#: 80 found every boundary of four concatenated clips within 0.5 s). About 10 s more CPU.
TAG_MODEL_STEPS = 80


@pytest.fixture(scope="session")
def tag_model(tmp_path_factory, request):
    """The tagger's small TFLite model (tests/tflite_fixtures.py), trained on GTZAN tracks 1-4
    when the shared data is there (random otherwise); tests tag track 0."""
    from tests.tflite_fixtures import build_test_model

    try:
        gtzan = request.getfixturevalue("shared_data") / "gtzan-mini"
    except pytest.skip.Exception:
        gtzan = None
    return build_test_model(tmp_path_factory.mktemp("tag_model"), gtzan, steps=TAG_MODEL_STEPS)


def mount_tmpfs(point: Path, size: str) -> str | None:
    """Mount a fresh tmpfs of `size` (e.g. "4m") at `point`; None when done, else why it cannot be."""
    import subprocess

    point.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
    except OSError as exc:  # no mount command
        return f"cannot mount a tmpfs here: {exc}"
    return f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}" if proc.returncode else None


def unmount(point: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A factory for small tmpfs mounts (a file system that fills up); skips where mounting is not allowed.

    `small_tmpfs("4m")` mounts a fresh 4 MiB tmpfs under tmp_path and returns its path; every
    mount is unmounted at the end of the test.
    """
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs{len(mounts)}"
        problem = mount_tmpfs(point, size)
        if problem:
            pytest.skip(problem)
        mounts.append(point)
        return point

    yield mount
    for point in reversed(mounts):
        unmount(point)
