"""Re-evaluate a run's saved best checkpoints without training.

    python -m keras_mgc.evaluate --run runs/gtzan_cv [--modes whole,tta] [--folds 1,3]
        [--data-dir DIR] [--tta-crops 16]

Reads the run's recipe.yaml, prepares the same data (same split, same seeds), loads each
fold's `best.keras` (rebuilt in float32) and rewrites the fold's test metrics, its
confusion matrices and the run's results.json / results.md. Exit codes as the trainer's.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from keras_mgc.config import RecipeError, load_recipe


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m keras_mgc.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run folder written by keras_mgc.train")
    parser.add_argument("--modes", help="comma-separated: whole, tta (default: the recipe's eval.modes)")
    parser.add_argument("--folds", help="comma-separated fold numbers (default: every trained fold)")
    parser.add_argument("--data-dir", help="the dataset folder, if it moved since training")
    parser.add_argument("--tta-crops", type=int, help="crops for TTA (default: the recipe's eval.tta_crops)")
    args = parser.parse_args(argv)

    run_dir = Path(args.run)
    overrides = [f"output_dir={run_dir.parent}"]
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    if args.modes:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        overrides += [f"eval.modes=[{','.join(modes)}]", f"eval.headline={modes[0]}"]
    if args.tta_crops:
        overrides.append(f"eval.tta_crops={args.tta_crops}")
    try:
        if not (run_dir / "recipe.yaml").is_file():
            raise RecipeError(f"{run_dir}: not a run folder (no recipe.yaml)")
        recipe = load_recipe(run_dir / "recipe.yaml", overrides)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import keras

    from keras_mgc.data.datasets import DatasetError
    from keras_mgc.data.prepare import prepare_data
    from keras_mgc.data.splits import SplitError
    from keras_mgc.scoring import summarise_run, evaluate_checkpoint
    from keras_mgc.io import read_json, write_json

    keras.mixed_precision.set_global_policy("float32")
    try:
        data = prepare_data(recipe.data, run_dir, recipe.seed)
    except (DatasetError, SplitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wanted = {int(k) for k in args.folds.split(",")} if args.folds else None
    records, status = [], 0
    for fold in data.folds:
        fold_dir = run_dir / fold.name
        record_path = fold_dir / "fold.json"
        if not (fold_dir / "best.keras").is_file() or not record_path.is_file():
            print(f"{fold.name}: no finished training, skipped", flush=True)
            continue
        record = read_json(record_path)
        if wanted is None or fold.number in wanted:
            try:
                record["test"] = evaluate_checkpoint(recipe, data, fold, fold_dir)
            except (OSError, ValueError) as exc:
                print(f"error: {fold.name}: cannot load {fold_dir / 'best.keras'}: {exc}", file=sys.stderr)
                status = 1
                records.append(record)
                continue
            write_json(record_path, record)
            print(f"{fold.name}: " + ", ".join(f"{m} {100 * record['test'][m]['accuracy']:.1f}%"
                                              for m in record["test"]), flush=True)
        records.append(record)
    if not records:
        print(f"error: {run_dir}: no fold has a finished checkpoint", file=sys.stderr)
        return 2
    summarise_run(run_dir, recipe, data, records, {"re_evaluated": True})
    return status


if __name__ == "__main__":
    raise SystemExit(main())
