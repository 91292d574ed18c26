"""What is exported: a run directory's chosen fold, or a `.keras` file with its recipe and classes.

A run directory (written by `keras_mgc.train`) holds ``recipe.yaml``, ``classes.json``,
``results.json`` and ``fold_XX/best.keras``. The exported fold is ``--fold K`` or the fold with
the highest validation accuracy in results.json.

The recipe is read without `keras_mgc.config.load_recipe`, which insists that the training
data folder exists: an export or serving machine usually does not have it. The model section
is validated with its pydantic config (the only typed part the export needs); the rest is
read as recorded. This module does not import TensorFlow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from keras_mgc.export import ExportError

__all__ = ["ExportSource", "read_class_names", "read_recipe", "from_run", "from_files"]


@dataclass
class ExportSource:
    """A checkpoint and everything known about it."""

    checkpoint: Path
    model_config: Any  # keras_mgc.config.ECAPAConfig (or another MODEL_CONFIGS class)
    class_names: list[str]
    recipe: dict[str, Any]  # the recipe document as recorded (defaults filled by train)
    recipe_path: Path | None
    run_dir: Path | None = None
    fold: int | None = None
    fold_result: dict[str, Any] = field(default_factory=dict)  # results.json entry of the fold
    results_summary: dict[str, Any] = field(default_factory=dict)
    results_data: dict[str, Any] = field(default_factory=dict)

    @property
    def crop_samples(self) -> int:
        from keras_mgc.config import DataConfig

        data = self.recipe.get("data") or {}
        if data.get("crop_seconds") is not None:  # a crop in seconds is samples at the model's rate
            from keras_mgc.windows import seconds_to_samples

            try:
                return seconds_to_samples(float(data["crop_seconds"]), self.sample_rate)
            except ValueError as exc:
                raise ExportError(f"recipe {self.recipe_path}: data.crop_seconds: {exc}") from None
        value = data.get("crop_samples")
        return int(value if value is not None else DataConfig.model_fields["crop_samples"].default)

    @property
    def sample_rate(self) -> int:
        return int(self.model_config.frontend.sample_rate)

    def training_info(self) -> dict[str, Any]:
        """Dataset, split, folds, recipe name and seed, as published model zoos record them."""
        data = self.recipe.get("data") or {}
        train = self.recipe.get("train") or {}
        info = {
            "recipe": self.recipe.get("name"),
            "paper_ref": self.recipe.get("paper_ref"),
            "description": self.recipe.get("description") or None,
            "seed": self.recipe.get("seed"),
            "dataset": data.get("dataset"),
            "data_root": data.get("root"),
            "split": data.get("split"),
            "folds": data.get("folds"),
            "exported_fold": self.fold,
            "crop_samples": self.crop_samples,
            "epochs": train.get("epochs"),
            "batch_size": train.get("batch_size"),
            "precision": train.get("precision"),
            "checkpoint": str(self.checkpoint),
        }
        if self.results_data:
            info["data"] = self.results_data
        return info

    def metrics(self) -> dict[str, Any]:
        """The exported fold's metrics from results.json, and the cross-validation summary."""
        out: dict[str, Any] = {}
        if self.fold_result:
            out["fold"] = {k: v for k, v in self.fold_result.items() if k not in ("checkpoint",)}
        if self.results_summary:
            out["cross_validation"] = self.results_summary
        return out


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{what} {path} cannot be read: {exc}") from None


def read_class_names(path: Path) -> list[str]:
    """classes.json: a JSON list of unique, non-empty class names in label order."""
    names = _read_json(path, "class list")
    if isinstance(names, dict) and "class_names" in names:
        names = names["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ExportError(f"class list {path}: expected a JSON list of non-empty class names in label order")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ExportError(f"class list {path}: duplicate class names {dupes}")
    if len(names) < 2:
        raise ExportError(f"class list {path}: need at least 2 classes, got {len(names)}")
    return names


def read_recipe(path: Path) -> tuple[dict[str, Any], Any]:
    """The recipe document and its validated model config (data paths are not checked)."""
    from keras_mgc.config import MODEL_CONFIGS

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"recipe not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ExportError(f"recipe {path} cannot be read: {exc}") from None
    if not isinstance(document, dict):
        raise ExportError(f"recipe {path}: the top level must be a mapping")
    model_doc = document.get("model") or {}
    backbone = model_doc.get("backbone", "ecapa_tdnn")
    if backbone not in MODEL_CONFIGS:
        raise ExportError(f"recipe {path}: model.backbone '{backbone}' is unknown (known: {sorted(MODEL_CONFIGS)})")
    try:
        cfg = MODEL_CONFIGS[backbone].model_validate(model_doc)
    except Exception as exc:  # pydantic.ValidationError: one message naming the keys
        raise ExportError(f"recipe {path}: invalid model section: {exc}") from None
    return document, cfg


def _fold_checkpoint(run_dir: Path, entry: dict[str, Any], fold: int) -> Path:
    rel = entry.get("checkpoint") or f"fold_{fold:02d}/best.keras"
    path = Path(rel)
    return path if path.is_absolute() else run_dir / path


def from_run(run_dir: str | os.PathLike[str], fold: int | None = None) -> ExportSource:
    """The source for `fold` of a run directory (default: best validation accuracy)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run directory not found: {run_dir}")
    recipe, cfg = read_recipe(run_dir / "recipe.yaml")
    classes = read_class_names(run_dir / "classes.json")
    results_path = run_dir / "results.json"
    results: dict[str, Any] = {}
    if results_path.exists():
        results = _read_json(results_path, "results")
        if not isinstance(results, dict):
            raise ExportError(f"results {results_path}: expected a JSON object")
    folds = [f for f in results.get("folds", []) if isinstance(f, dict) and "fold" in f]
    entry: dict[str, Any] = {}
    if fold is not None:
        matches = [f for f in folds if int(f["fold"]) == fold]
        entry = matches[0] if matches else {}
        if not entry and not (run_dir / f"fold_{fold:02d}" / "best.keras").exists():
            known = sorted(int(f["fold"]) for f in folds)
            raise ExportError(f"run {run_dir}: fold {fold} has no checkpoint (folds with results: {known or 'none'})")
    elif folds:
        scored = [f for f in folds if isinstance(f.get("val_accuracy"), (int, float))]
        if not scored and len(folds) > 1:
            raise ExportError(f"results {results_path}: no fold has a val_accuracy to choose by; use --fold")
        entry = max(scored, key=lambda f: (f["val_accuracy"], -int(f["fold"]))) if scored else folds[0]
        fold = int(entry["fold"])
    else:
        found = sorted(run_dir.glob("fold_*/best.keras"))
        if len(found) != 1:
            where = "no results.json" if not results else "results.json lists no folds"
            raise ExportError(
                f"run {run_dir}: {where} and {len(found)} checkpoints (fold_*/best.keras); choose one with --fold"
            )
        fold = int(found[0].parent.name.split("_")[-1])
    checkpoint = _fold_checkpoint(run_dir, entry, fold)
    if not checkpoint.is_file():
        raise ExportError(f"run {run_dir}: checkpoint of fold {fold} not found: {checkpoint}")
    return ExportSource(
        checkpoint=checkpoint, model_config=cfg, class_names=classes, recipe=recipe,
        recipe_path=run_dir / "recipe.yaml", run_dir=run_dir, fold=fold, fold_result=entry,
        results_summary=results.get("summary") or {}, results_data=results.get("data") or {},
    )


def from_files(model: str | os.PathLike[str], recipe: str | os.PathLike[str],
               classes: str | os.PathLike[str]) -> ExportSource:
    """The source for a `.keras` file with its recipe and class list."""
    model = Path(model)
    if not model.is_file():
        raise ExportError(f"model file not found: {model}")
    if model.suffix != ".keras":
        raise ExportError(f"model file {model}: expected a .keras file (a full Keras model)")
    document, cfg = read_recipe(Path(recipe))
    return ExportSource(checkpoint=model, model_config=cfg, class_names=read_class_names(Path(classes)),
                        recipe=document, recipe_path=Path(recipe))
