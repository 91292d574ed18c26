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
