"""A small, briefly trained run directory, written by the real `python -m keras_mgc.train`.

    >>> run = build_small_run(Path("/tmp/run"), Path("../shared/data/gtzan-mini"))  # doctest: +SKIP
    >>> # run/recipe.yaml, run/classes.json, run/results.json, run/fold_01/best.keras, run/fold_02/best.keras

The run is a real training run (the product's data pipeline, training loop, evaluation and
results.json), just small: the `tiny` preset (or another preset named by `model`), a 3-fold
stratified split of the folder-per-class clips of which folds 1 and 2 are trained, one
epoch of `steps` steps of random 44,356-sample crops at a constant learning rate, whole-clip
evaluation only. That is enough for outputs far from uniform, so top-1 comparisons between
an artifact and Keras mean something; the two folds give the exporter's default fold choice
(best validation accuracy in results.json) something to choose between.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

__all__ = ["build_small_run"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_small_run(run_dir: Path, gtzan: Path, *, model: str = "tiny", steps: int = 40, batch: int = 16,
                    seed: int = 0, policy: str | None = None, learning_rate: float = 3e-3,
                    recipe_name: str = "export_test", timeout: int = 1800) -> Path:
    """Train folds 1 and 2 with `python -m keras_mgc.train` and move the run to `run_dir`; returns it.

    `model` is a preset name (keras_mgc.presets); `policy` e.g. "mixed_float16" trains under
    mixed precision (default float32).
    """
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    recipe = {
        "name": recipe_name, "description": "a small, briefly trained run for tests", "seed": seed,
        "data": {"dataset": "folder", "root": str(gtzan), "split": "kfold", "n_folds": 3, "folds": [1, 2],
                 "cache": "memory"},
        "model": {"preset": model},
        "train": {"epochs": 1, "batch_size": batch, "steps_per_epoch": steps, "precision": policy or "float32",
                  "optimizer": {"learning_rate": learning_rate}, "schedule": {"name": "constant"}, "verbose": 2},
        "eval": {"modes": ["whole"], "headline": "whole"},
    }
    work = run_dir.parent / f".{run_dir.name}.training"
    work.mkdir(exist_ok=True)
    recipe_path = work / f"{recipe_name}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "keras_mgc.train", "--recipe", str(recipe_path),
                           "--output-dir", str(work)], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"training the small run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    os.replace(work / recipe_name, run_dir)  # the run folder is named after the recipe; the caller chose another
    return run_dir
