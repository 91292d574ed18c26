"""The main job: train and evaluate a recipe, fold by fold, and write the results.

    python -m keras_mgc.train --recipe recipes/gtzan_cv.yaml [--data-dir DIR]
        [--set train.epochs=2 model.ccs.stop=512 ...] [--output-dir runs] [--folds 1,2]
        [--allow-missing] [--resume | --overwrite]

The recipe is validated (with the overrides) before anything else happens. A run lives in
`<output_dir>/<recipe name>/`; running the same command again continues it: finished
folds are skipped and an interrupted fold resumes from its last finished epoch. A
different recipe in an existing run folder is an error unless `--overwrite`.

Exit codes: 0 done; 1 training failed (e.g. NaN loss; finished folds are kept and
reported); 2 bad recipe, arguments or data.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from keras_mgc.config import Recipe, RecipeError, parse_recipe, read_recipe_document, recipe_to_dict

log = logging.getLogger("keras_mgc")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m keras_mgc.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="YAML recipe (see recipes/)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override recipe keys (may be repeated)")
    parser.add_argument("--data-dir", help="dataset folder (sets data.root; a synthetic recipe then uses it)")
    parser.add_argument("--output-dir", help="where run folders go (sets output_dir)")
    parser.add_argument("--folds", help="comma-separated fold numbers to run (sets data.folds)")
    parser.add_argument("--allow-missing", action="store_true", help="train on the tracks present (data.allow_missing)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="require an existing run to continue")
    group.add_argument("--overwrite", action="store_true", help="delete an existing run folder first")
    return parser.parse_args(argv)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe with command-line overrides applied, validated."""
    document = read_recipe_document(args.recipe)
    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
        if (document.get("data") or {}).get("dataset") == "synthetic":  # real data replaces the generated set
            overrides.append("data.dataset=folder")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.folds:
        overrides.append(f"data.folds=[{args.folds}]")
    if args.allow_missing:
        overrides.append("data.allow_missing=true")
    return parse_recipe(document, args.recipe, overrides)


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{path}.{k}".lstrip("."))]
    return [] if a == b else [f"{path}: {b!r} -> {a!r}"]


def open_run(recipe: Recipe, resume: bool, overwrite: bool) -> Path:
    """The run folder, checked against an earlier run of another recipe."""
    run_dir = recipe.run_dir()
    saved = run_dir / "recipe.yaml"
    current = recipe_to_dict(recipe)
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    if saved.is_file():
        previous = yaml.safe_load(saved.read_text("utf-8"))
        changed = _differences(current, previous)
        if changed:
            raise RecipeError(f"{run_dir} holds a run of a different recipe ({'; '.join(changed[:8])}); "
                              "use --overwrite or another --output-dir / recipe name")
    elif resume:
        raise RecipeError(f"--resume: no run to resume at {run_dir}")
    from keras_mgc.io import write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(saved, yaml.safe_dump(current, sort_keys=False))
    return run_dir


def run(recipe: Recipe, run_dir: Path, command: str | None = None) -> int:
    """Train and evaluate every fold of the recipe; returns the exit code.

    `command` (the command line) is recorded in the results, so a reader sees the overrides
    that the recipe's own description does not mention.
    """
    import keras
    import tensorflow as tf

    from keras_mgc.data.prepare import prepare_data
    from keras_mgc.scoring import summarise_run, evaluate_checkpoint
    from keras_mgc.io import read_json, write_json
    from keras_mgc.fold_trainer import TrainingDiverged, make_strategy, resolve_precision, train_fold

    if recipe.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(recipe.train.distribute)
    policy = resolve_precision(recipe.train.precision)
    keras.mixed_precision.set_global_policy(policy)
    log.info("precision %s, %d replica(s) (%s)", policy, strategy.num_replicas_in_sync, type(strategy).__name__)

    from keras_mgc.data.datasets import DatasetError

    try:
        data = prepare_data(recipe.data, run_dir, recipe.seed)
    except DatasetError as exc:  # too many unreadable files: still record which and why
        if getattr(exc, "skipped", None) is None:
            raise
        write_json(run_dir / "skipped.json", exc.skipped)
        raise DatasetError(f"{exc} (every skipped file with its reason: {run_dir / 'skipped.json'})") from None
    print(f"Training on: {data.description}", flush=True)
    write_json(run_dir / "skipped.json", data.skipped)
    if data.skipped:
        print(f"{len(data.skipped)} file(s) skipped, reasons in {run_dir / 'skipped.json'}", flush=True)
    if data.store.flagged:
        print(f"{len(data.store.flagged)} truncated file(s) kept (decodable part used), listed under data.flagged "
              f"in {run_dir / 'results.json'}", flush=True)
    write_json(run_dir / "classes.json", data.class_names)
    extra = {"precision": policy, "replicas": strategy.num_replicas_in_sync, **({"command": command} if command else {})}
    records: list[dict[str, Any]] = []
    status = 0
    for fold in data.folds:
        fold_dir = run_dir / fold.name
        record_path = fold_dir / "fold.json"
        if record_path.is_file():
            print(f"{fold.name}: already complete, skipped", flush=True)
            records.append(read_json(record_path))
            continue
        print(f"{fold.name}: train {len(fold.train)}, valid {len(fold.valid)}, test {len(fold.test)} tracks", flush=True)
        try:
            training = train_fold(recipe, data, fold, fold_dir, strategy)
        except TrainingDiverged as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            extra["stopped"] = {"fold": fold.name, "reason": str(exc)}
            status = 1
            break
        test = evaluate_checkpoint(recipe, data, fold, fold_dir)
        record = {"fold": fold.number, "name": fold.name, "checkpoint": f"{fold.name}/best.keras",
                  **{k: v for k, v in training.items() if k != "history"}, "split": fold.report(), "test": test}
        write_json(fold_dir / "history.json", training["history"])
        write_json(record_path, record)
        records.append(record)
        scores = ", ".join(f"{m} {100 * test[m]['accuracy']:.1f}%" for m in test)
        print(f"{fold.name}: best epoch {training['best_epoch']}, test accuracy {scores}", flush=True)
    if records:
        summarise_run(run_dir, recipe, data, records, extra)
    return status


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        recipe = recipe_from_args(args)
        run_dir = open_run(recipe, args.resume, args.overwrite)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from keras_mgc.data.datasets import DatasetError
    from keras_mgc.data.splits import SplitError

    try:
        return run(recipe, run_dir, "python -m keras_mgc.train " + shlex.join(sys.argv[1:] if argv is None else argv))
    except (DatasetError, SplitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
