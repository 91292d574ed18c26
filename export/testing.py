"""A small, briefly trained run directory, as `keras_mgc.train` writes one, for tests and demos.

    >>> run = build_small_run(Path("/tmp/run"), Path("../shared/data/gtzan-mini"))
    >>> # run/recipe.yaml, run/classes.json, run/results.json, run/fold_01/best.keras, run/fold_02/best.keras

The model is a small CCS ECAPA (channels 32, stop 16, Res2Net scale 2) trained for a few dozen
steps of random 44,356-sample crops of real clips (tracks 1-6 of each genre folder), enough
for outputs that are far from uniform, so top-1 comparisons mean something. fold_02 is the
same weights with a lower validation accuracy, so the default fold choice is testable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

SMALL_MODEL: dict[str, Any] = dict(channels=32, ccs={"stop": 16}, res2_scale=2, se_channels=8, attention_channels=16)
#: Paper-size system #15 (CCS + FSA, s=512 c=1024), for measurements.
PAPER_15: dict[str, Any] = dict(channels=1024, ccs={"stop": 512}, fsa={"enabled": True})


def genre_folders(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and any(p.glob("*.wav")))


def train_tracks(root: Path) -> list[Path]:
    """Tracks 1-6 of each genre: training material; 0 and 7-9 are left for evaluation."""
    return [p for g in genre_folders(root) for p in sorted(g.glob("*.wav"))[1:7]]


def eval_tracks(root: Path) -> list[Path]:
    return [p for g in genre_folders(root) for i, p in enumerate(sorted(g.glob("*.wav"))) if i == 0 or i >= 7]


def build_small_run(run_dir: Path, gtzan: Path, *, model: dict[str, Any] | None = None, steps: int = 40,
                    batch: int = 16, seed: int = 0, policy: str | None = None, learning_rate: float = 3e-3,
                    recipe_name: str = "export_test") -> Path:
    """Train briefly and write a run directory; `policy` e.g. "mixed_float16" trains under mixed precision."""
    import keras
    import yaml

    from keras_mgc.audio import load_audio
    from keras_mgc.config import ECAPAConfig, parse_recipe, recipe_to_dict
    from keras_mgc.models import build_model

    run_dir = Path(run_dir)
    genres = [g.name for g in genre_folders(gtzan)]
    cfg = ECAPAConfig(**(model or SMALL_MODEL))
    recipe = parse_recipe({"name": recipe_name, "description": "export test run (briefly trained)", "seed": seed,
                           "data": {"dataset": "folder", "root": str(gtzan), "split": "kfold", "n_folds": 2},
                           "model": cfg.model_dump(mode="json"),
                           "train": {"epochs": 1, "batch_size": batch, "precision": policy or "float32"}})
    crop = recipe.data.crop_samples
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy or "float32")
    try:
        keras.utils.set_random_seed(seed)
        net = build_model(cfg, len(genres))
        tracks = train_tracks(gtzan)
        clips = [load_audio(p) for p in tracks]
        labels = np.array([genres.index(p.parent.name) for p in tracks])
        rng = np.random.default_rng(seed)
        net.compile(optimizer=keras.optimizers.Adam(learning_rate),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        history = []
        for _ in range(steps):
            idx = rng.integers(0, len(clips), batch)
            starts = [int(rng.integers(0, len(clips[i]) - crop)) for i in idx]
            x = np.stack([clips[i][s : s + crop] for i, s in zip(idx, starts)]).astype(np.float32)
            history.append(net.train_on_batch(x, labels[idx], return_dict=True))
        (run_dir / "fold_01").mkdir(parents=True, exist_ok=True)
        (run_dir / "fold_02").mkdir(parents=True, exist_ok=True)
        net.save(run_dir / "fold_01" / "best.keras")
        net.save(run_dir / "fold_02" / "best.keras")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    (run_dir / "classes.json").write_text(json.dumps(genres))
    final = history[-1]
    results = {
        "folds": [
            {"fold": 1, "val_accuracy": 0.5, "checkpoint": "fold_01/best.keras",
             "test": {"accuracy": float(final["accuracy"]), "loss": float(final["loss"])}},
            {"fold": 2, "val_accuracy": 0.25, "checkpoint": "fold_02/best.keras",
             "test": {"accuracy": 0.2}},
        ],
        "summary": {"accuracy_mean": 0.35, "folds": 2, "note": "test fixture, not a real result"},
        "data": {"dataset": "gtzan-mini", "train_tracks": len(tracks), "steps": steps, "policy": policy or "float32"},
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return run_dir
