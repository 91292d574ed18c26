"""Re-evaluate a run's saved checkpoints without training.

    python -m keras_mgc.evaluate --run runs/gtzan_cv [--modes whole,tta] [--folds 1,3]
        [--data-dir DIR] [--tta-crops 16] [--checkpoint best|last]

Reads the run's recipe.yaml, prepares the same data (same split, same seeds), loads each
fold's checkpoint (rebuilt in float32): `last.keras` when the recipe's train.monitor is
`last`, else `best.keras` (`--checkpoint` overrides), and rewrites the fold's test
metrics, its confusion matrices and the run's results.json / results.md, each fold
recording which checkpoint was evaluated. Holds the run folder's lock while it writes.
Exit codes as the trainer's.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from keras_mgc.config import RecipeError, load_recipe


_RUN_DIR: Path | None = None  # for the full-disk message


def _guarded(main: Any) -> Any:
    from keras_mgc.io import disk_full_guard

    def checkpoint() -> str | None:
        from keras_mgc.train import last_checkpoint

        return last_checkpoint(_RUN_DIR)

    return disk_full_guard("keras_mgc.evaluate", checkpoint)(main)


@_guarded
def main(argv: list[str] | None = None) -> int:
    global _RUN_DIR
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m keras_mgc.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run folder written by keras_mgc.train")
    parser.add_argument("--modes", help="comma-separated: whole, tta (default: the recipe's eval.modes)")
    parser.add_argument("--folds", help="comma-separated fold numbers (default: every trained fold)")
    parser.add_argument("--data-dir", help="the dataset folder, if it moved since training")
    parser.add_argument("--tta-crops", type=int, help="crops for TTA (default: the recipe's eval.tta_crops)")
    parser.add_argument("--checkpoint", choices=["best", "last"],
                        help="which weights to test (default: last if the recipe's train.monitor is last, else best)")
    args = parser.parse_args(argv)

    run_dir = _RUN_DIR = Path(args.run)
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
    from keras_mgc.runlock import RunLock, RunLockedError

    lock = RunLock(run_dir, "python -m keras_mgc.evaluate " + " ".join(sys.argv[1:] if argv is None else argv))
    try:
        lock.acquire()
    except RunLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _evaluate(args, recipe, run_dir)
    finally:
        lock.release()


def _evaluate(args: argparse.Namespace, recipe: Any, run_dir: Path) -> int:
    from keras_mgc.data.datasets import DatasetError
    from keras_mgc.data.prepare import load_data
    from keras_mgc.data.shard import ShardError
    from keras_mgc.data.splits import SplitError
    from keras_mgc.io import disk_full_cause, read_json, write_json
    from keras_mgc.scoring import evaluate_checkpoint, evaluated_fields, summarise_run

    try:
        data = load_data(recipe.data, run_dir, recipe.seed, sample_rate=recipe.model.frontend.sample_rate)
    except (DatasetError, SplitError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wanted = {int(k) for k in args.folds.split(",")} if args.folds else None
    checkpoint = f"{args.checkpoint}.keras" if args.checkpoint else recipe.train.evaluated_checkpoint
    records, status = [], 0
    for fold in data.folds:
        fold_dir = run_dir / fold.name
        record_path = fold_dir / "fold.json"
        if not record_path.is_file():
            print(f"{fold.name}: no finished training, skipped", flush=True)
            continue
        record = read_json(record_path)
        if wanted is None or fold.number in wanted:
            path = fold_dir / checkpoint
            if not path.is_file():
                hint = " (runs trained before last.keras existed have only best.keras)" \
                    if checkpoint == "last.keras" else ""
                print(f"error: {fold.name}: {path} not found{hint}", file=sys.stderr)
                status = 1
                records.append(record)
                continue
            try:
                record["test"] = evaluate_checkpoint(recipe, data, fold, fold_dir, checkpoint)
            except (OSError, ValueError) as exc:
                if disk_full_cause(exc) is not None:  # writing its pictures, not loading: stop (exit 4)
                    raise
                print(f"error: {fold.name}: cannot load {path}: {exc}", file=sys.stderr)
                status = 1
                records.append(record)
                continue
            record.update(evaluated_fields(fold.name, checkpoint, record, args.checkpoint or recipe.train.monitor))
            write_json(record_path, record)
            print(f"{fold.name}: " + ", ".join(f"{m} {100 * record['test'][m]['accuracy']:.1f}%"
                                              for m in record["test"]), flush=True)
        records.append(record)
    if not records:
        print(f"error: {run_dir}: no fold has a finished checkpoint", file=sys.stderr)
        return 2
    summarise_run(run_dir, recipe, data, records, {"re_evaluated": True, "evaluated_checkpoint": checkpoint})
    return status


if __name__ == "__main__":
    raise SystemExit(main())
