"""Test-time evaluation: whole clips in one pass and the paper's 16-crop TTA; results files.

`Predictor` wraps a model in one traced function per input kind, so clips of every
length run without retracing. `evaluate_fold` writes a fold's metrics, predictions and
confusion-matrix pictures; `write_results` gathers all folds into results.json (with
the recipe, versions, seeds and data used) and a short results.md table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_mgc.data.pipeline import ClipStore
from keras_mgc.environment import environment
from keras_mgc.io import write_json, write_text
from keras_mgc.metrics import classification_metrics, mean_std, plot_confusion, summarize_folds
from keras_mgc.windows import covering_windows, crop, tta_crops

__all__ = ["MODE_TITLES", "Predictor", "evaluate_fold", "write_results", "evaluate_checkpoint", "summarise_run",
           "results_markdown"]

MODE_TITLES = {"whole": "whole clip", "tta": "16-crop TTA"}


class Predictor:
    """Class probabilities of a model (logits -> softmax) on whole clips or TTA crops.

    A model built for one input length (`fixed_length`, e.g. VGG's 200 frames) cannot take a
    whole clip in one pass: its whole-clip probabilities are the mean over windows of that
    length covering the clip (`keras_mgc.windows.covering_windows`).
    """

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.fixed_length: int | None = model.input.shape[1]
        spec = tf.TensorSpec((None,) + tuple(model.input.shape[1:]), tf.float32)
        self._probs = tf.function(lambda x: tf.nn.softmax(tf.cast(model(x, training=False), tf.float32)),
                                  input_signature=[spec], autograph=False)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self._probs(tf.convert_to_tensor(batch, tf.float32)).numpy()

    def whole(self, store: ClipStore, min_length: int = 0) -> np.ndarray:
        """(n_clips, n_classes): each whole clip in one pass (or, fixed-length model, windows averaged).

        A clip shorter than `min_length` (the training crop) is wrap-padded to it, as training
        and TTA crops are: the front end cannot take a clip of `hop_length` samples or fewer
        (reflect padding), and a 10 ms clip is a valid file.
        """
        if self.fixed_length is not None:
            return np.stack([self.probabilities(covering_windows(np.asarray(store.get(i)), self.fixed_length))
                             .mean(axis=0) for i in range(len(store))])

        def clip(i: int) -> np.ndarray:
            x = np.asarray(store.get(i))
            return crop(x, 0, min_length) if x.shape[0] < min_length else x

        return np.concatenate([self.probabilities(clip(i)[None]) for i in range(len(store))])

    def tta(self, store: ClipStore, crop: int, n_crops: int = 16) -> np.ndarray:
        """(n_clips, n_classes): softmax outputs of `n_crops` crops summed (the paper's TTA).

        A fixed-length model's crops are its input length (a recipe's crop must equal it).
        """
        crop = self.fixed_length or crop
        return np.stack([self.probabilities(tta_crops(np.asarray(store.get(i)), crop, n_crops)).sum(axis=0)
                         for i in range(len(store))])

    def predict(self, store: ClipStore, mode: str, crop: int, n_crops: int = 16) -> np.ndarray:
        if mode == "whole":
            return self.whole(store, crop)
        if mode == "tta":
            return self.tta(store, crop, n_crops)
        raise ValueError(f"unknown evaluation mode {mode!r} (expected 'whole' or 'tta')")


def evaluate_fold(predictor: Predictor, store: ClipStore, labels: Sequence[int], class_names: Sequence[str],
                  modes: Sequence[str], crop: int, n_crops: int, out_dir: str | Path, title: str) -> dict[str, Any]:
    """Metrics per mode for one fold's test clips; writes test_metrics.json, predictions and PNGs."""
    out_dir = Path(out_dir)
    labels = np.asarray(labels)
    results: dict[str, Any] = {}
    predictions: dict[str, Any] = {"keys": [t.key for t in store.tracks], "labels": labels.tolist()}
    for mode in modes:
        probs = predictor.predict(store, mode, crop, n_crops)
        pred = probs.argmax(axis=1)
        metrics = classification_metrics(labels, pred, class_names)
        results[mode] = metrics
        predictions[mode] = {"predicted": pred.tolist(), "scores": np.round(probs, 6).tolist()}
        plot_confusion(metrics["confusion_matrix"], class_names, out_dir / f"confusion_{mode}.png",
                       f"{title}\n{MODE_TITLES[mode]}, accuracy {metrics['accuracy']:.3f}")
    write_json(out_dir / "predictions.json", predictions)
    write_json(out_dir / "test_metrics.json", results)
    return results


def write_results(run_dir: str | Path, recipe: dict[str, Any], data_report: dict[str, Any],
                  folds: list[dict[str, Any]], headline: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """results.json (everything) and results.md (a table) for the folds finished so far."""
    run_dir = Path(run_dir)
    modes = sorted({m for f in folds for m in f.get("test", {})})
    summary = {mode: summarize_folds([f["test"][mode] for f in folds if mode in f.get("test", {})]) for mode in modes}
    summary["val_accuracy"] = mean_std([f.get("val_accuracy") for f in folds])
    results = {
        "recipe": recipe,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "seeds": {"recipe": recipe["seed"], "per_fold": {f["name"]: f.get("seed") for f in folds}},
        "data": data_report,
        "headline": headline,
        "folds": folds,
        "summary": summary,
        **(extra or {}),
    }
    write_json(run_dir / "results.json", results)
    write_text(run_dir / "results.md", results_markdown(results))
    return results


def evaluate_checkpoint(recipe: Any, data: Any, fold: Any, fold_dir: Path,
                        checkpoint: str = "best.keras") -> dict[str, Any]:
    """Evaluate a fold's `checkpoint` (best.keras or last.keras, rebuilt in float32) on the fold's test tracks.

    The one load -> evaluate step of `keras_mgc.train` (after training a fold) and
    `keras_mgc.evaluate` (re-evaluating a finished run). Writes the fold's confusion
    pictures; returns {mode: metrics}. Raises OSError/ValueError when the checkpoint
    cannot be loaded.
    """
    from keras_mgc.models import load_float32
    from keras_mgc.windows import crop_length

    model = load_float32(str(Path(fold_dir) / checkpoint), recipe.model, len(data.class_names))
    store, labels = data.part(fold, "test")  # decoded clips, or streamed from shards
    return evaluate_fold(Predictor(model), store, labels, data.class_names, recipe.eval.modes,
                         crop_length(recipe), recipe.eval.tta_crops, Path(fold_dir), f"{recipe.name} {fold.name}")


def evaluated_epoch(record: dict[str, Any], checkpoint: str) -> int | None:
    """The epoch whose weights `checkpoint` holds, from a fold record (or `train_fold`'s result):
    the last epoch run for last.keras, the best epoch for best.keras."""
    return record.get("epochs_run") if checkpoint == "last.keras" else record.get("best_epoch")


def evaluated_fields(fold_name: str, checkpoint: str, record: dict[str, Any], monitor: str) -> dict[str, Any]:
    """A fold record's "checkpoint" and "evaluated" entries (in that order) for a test of `checkpoint`
    (best.keras or last.keras), chosen by `monitor`; the epoch comes from `record`.

    >>> evaluated_fields("fold_01", "last.keras", {"best_epoch": 3, "epochs_run": 8}, "last")
    {'checkpoint': 'fold_01/last.keras', 'evaluated': {'checkpoint': 'last.keras', 'epoch': 8, 'monitor': 'last'}}
    """
    return {"checkpoint": f"{fold_name}/{checkpoint}",
            "evaluated": {"checkpoint": checkpoint, "epoch": evaluated_epoch(record, checkpoint), "monitor": monitor}}


def summarise_run(run_dir: Path, recipe: Any, data: Any, records: list[dict[str, Any]],
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write results.json / results.md for `records` and print the headline line; returns the results."""
    from keras_mgc.config import recipe_to_dict

    results = write_results(run_dir, recipe_to_dict(recipe), data.report(), records, recipe.eval.headline, extra)
    head = results["summary"][recipe.eval.headline]["accuracy"]
    print(f"{recipe.name}: {recipe.eval.headline} accuracy {100 * head['mean']:.1f} +- {100 * head['std']:.1f} % "
          f"over {head['n']} fold(s); results in {Path(run_dir) / 'results.md'}", flush=True)
    return results


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def _tested(fold: dict[str, Any]) -> str:
    """Which checkpoint the fold's test metrics come from, e.g. "last.keras (epoch 80)"."""
    evaluated = fold.get("evaluated") or {}
    name = evaluated.get("checkpoint") or Path(fold.get("checkpoint") or "best.keras").name
    epoch = evaluated.get("epoch", evaluated_epoch(fold, name))
    return f"{name} (epoch {epoch})" if epoch is not None else name


def results_markdown(results: dict[str, Any]) -> str:
    """A short table: per-fold accuracy per mode, mean +- std, and what the data was."""
    recipe = results["recipe"]
    modes = [m for m in ("whole", "tta") if m in results["summary"]]
    lines = [f"# {recipe['name']}", ""]
    if recipe.get("description"):
        lines += [recipe["description"], ""]
    if results.get("command"):
        lines += [f"Command: `{results['command']}`", ""]
    lines += [f"Data: {results['data']['description']}", ""]
    missing = sum(len(keys) for f in results["data"].get("folds", {}).values() for keys in f.get("missing", {}).values())
    if missing or results["data"].get("n_skipped"):
        lines += [f"Not used: {missing} split entries missing from the data folder (data.allow_missing), "
                  f"{results['data'].get('n_skipped', 0)} files skipped as unreadable (skipped.json).", ""]
    if results.get("stopped"):
        lines += [f"Stopped: {results['stopped']['reason']} Only the folds below finished.", ""]
    if recipe.get("paper_accuracy") is not None:
        lines += [f"Paper: {recipe.get('paper_ref') or ''} {recipe['paper_accuracy']:.1f} % accuracy.", ""]
    lines += ["| fold | best epoch | val acc % | tested weights | "
              + " | ".join(f"test acc % ({MODE_TITLES[m]})" for m in modes) + " |",
              "|---|---|---|---|" + "---|" * len(modes)]
    for f in results["folds"]:
        cells = [_pct(f["test"][m]["accuracy"]) if m in f["test"] else "-" for m in modes]
        lines.append(f"| {f['name']} | {f.get('best_epoch', '-')} | {_pct(f.get('val_accuracy'))} | {_tested(f)} | "
                     + " | ".join(cells) + " |")
    means = []
    for m in modes:
        s = results["summary"][m]["accuracy"]
        means.append(f"**{_pct(s['mean'])} +- {_pct(s['std'])}**")
    val = results["summary"]["val_accuracy"]
    lines.append(f"| mean +- std (n={len(results['folds'])}) | | {_pct(val['mean'])} +- {_pct(val['std'])} | | "
                 + " | ".join(means) + " |")
    lines += ["", "std is the sample standard deviation over folds (ddof=1). Confusion matrices: "
              "`<fold>/confusion_<mode>.png`; everything else: results.json.", ""]
    return "\n".join(lines)
