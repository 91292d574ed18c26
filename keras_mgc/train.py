"""The main job: train and evaluate a recipe, fold by fold, and write the results.

    python -m keras_mgc.train --recipe recipes/gtzan_cv.yaml [--data-dir DIR]
        [--set train.epochs=2 model.ccs.stop=512 ...] [--output-dir runs] [--folds 1,2]
        [--allow-missing] [--resume | --overwrite]

The recipe is validated (with the overrides) before anything else happens. A run lives in
`<output_dir>/<recipe name>/`; running the same command again continues it: finished
folds are skipped and an interrupted fold resumes from its last finished epoch. A
different recipe in an existing run folder is an error unless `--overwrite`.

One process per run folder: the command holds `<run folder>/run.lock` while it runs; a
second command on the same folder stops at once naming the first (keras_mgc.runlock).

Exit codes: 0 done; 1 training failed (e.g. NaN loss; finished folds are kept and
reported); 2 bad recipe, arguments or data, or the run folder is in use by another
process; 4 the disk is full (what finished is kept: free space and run the same command).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from keras_mgc.config import Recipe, RecipeError, parse_recipe, read_recipe_document, recipe_to_dict

if TYPE_CHECKING:
    from keras_mgc.runlock import RunLock

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


def open_run(recipe: Recipe, resume: bool, overwrite: bool, lock: "RunLock | None" = None) -> Path:
    """The run folder, checked against an earlier run of another recipe.

    `lock` (the folder's RunLock, not yet taken) is taken before anything in the folder is
    read or changed, so `--overwrite` never deletes a folder another process is writing.
    """
    run_dir = recipe.run_dir()
    saved = run_dir / "recipe.yaml"
    current = recipe_to_dict(recipe)
    if lock is not None:
        lock.acquire()
    if overwrite and run_dir.exists():
        for entry in run_dir.iterdir():  # everything but our own lock
            if lock is None or entry != lock.lock_path:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    if saved.is_file():
        previous = yaml.safe_load(saved.read_text("utf-8"))
        try:  # a run folder written before a key existed has that key's default
            previous = recipe_to_dict(parse_recipe(previous, str(saved)))
        except RecipeError:
            pass
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


def run(recipe: Recipe, run_dir: Path, command: str | None = None, info: Any = None) -> int:
    """Train and evaluate every fold of the recipe; returns the exit code.

    `command` (the command line) is recorded in the results, so a reader sees the overrides
    that the recipe's own description does not mention. `info` (keras_mgc.distributed.TaskInfo)
    is this process's place in a multi-worker job: only the chief evaluates and writes the
    run's files; another worker trains in step with it, writing into a temporary folder.
    """
    import keras
    import tensorflow as tf

    from keras_mgc.data.prepare import load_data
    from keras_mgc.scoring import evaluate_checkpoint, evaluated_fields, summarise_run
    from keras_mgc.io import read_json, write_json
    from keras_mgc.fold_trainer import TrainingDiverged, make_strategy, resolve_precision, train_fold

    if recipe.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(recipe.train.distribute)
    policy = resolve_precision(recipe.train.precision)
    keras.mixed_precision.set_global_policy(policy)
    log.info("precision %s, %d replica(s) (%s)", policy, strategy.num_replicas_in_sync, type(strategy).__name__)

    from keras_mgc.data.datasets import DatasetError
    from keras_mgc.data.shard_input import ShardedData, check_shards_match
    from keras_mgc.distributed import TaskInfo, worker_dir

    info = info or TaskInfo("worker", 0, 1)
    work_dir = worker_dir(run_dir, info)  # the run folder for the chief
    try:
        data = load_data(recipe.data, work_dir, recipe.seed, sample_rate=recipe.model.frontend.sample_rate)
    except DatasetError as exc:  # too many unreadable files: still record which and why
        if getattr(exc, "skipped", None) is None or not info.is_chief:
            raise
        write_json(run_dir / "skipped.json", exc.skipped)
        raise DatasetError(f"{exc} (every skipped file with its reason: {run_dir / 'skipped.json'})") from None
    if isinstance(data, ShardedData):
        check_shards_match(data.shards, recipe.model.input, recipe.model.frontend.sample_rate)
    folds, skipped, flagged = data.folds, data.skipped, data.flagged
    print(f"Training on: {data.description}", flush=True)
    if recipe.model.input != "mel":
        rate = recipe.model.frontend.sample_rate
        print(f"Audio decoded at {rate} Hz (model.frontend.sample_rate); crops of {recipe.data.crop_samples} samples "
              f"= {recipe.data.crop_samples / rate:.3f} s", flush=True)
    if info.is_chief:
        write_json(run_dir / "skipped.json", skipped)
        write_json(run_dir / "classes.json", data.class_names)
    if skipped:
        print(f"{len(skipped)} file(s) skipped, reasons in {run_dir / 'skipped.json'}", flush=True)
    if flagged:
        print(f"{len(flagged)} truncated file(s) kept (decodable part used), listed under data.flagged "
              f"in {run_dir / 'results.json'}", flush=True)
    extra = {"precision": policy, "replicas": strategy.num_replicas_in_sync, **({"command": command} if command else {})}
    records: list[dict[str, Any]] = []
    status = 0
    split_reports = data.report()["folds"]  # each fold's sizes (and missing/skipped tracks)
    for fold in folds:
        fold_dir = run_dir / fold.name
        record_path = fold_dir / "fold.json"
        if record_path.is_file():
            print(f"{fold.name}: already complete, skipped", flush=True)
            records.append(read_json(record_path))
            continue
        split_report = split_reports[fold.name]
        print(f"{fold.name}: " + ", ".join(f"{p} {n}" for p, n in split_report["sizes"].items()) + " tracks",
              flush=True)
        try:
            training = train_fold(recipe, data, fold, work_dir / fold.name, strategy, restore_dir=fold_dir)
        except TrainingDiverged as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            extra["stopped"] = {"fold": fold.name, "reason": str(exc)}
            status = 1
            break
        print(f"{fold.name}: final weights digest {training['weights_digest']} (worker {info.index})", flush=True)
        if not info.is_chief:  # the chief evaluates and publishes
            continue
        checkpoint = recipe.train.evaluated_checkpoint
        test = evaluate_checkpoint(recipe, data, fold, fold_dir, checkpoint)
        record = {"fold": fold.number, "name": fold.name,
                  **evaluated_fields(fold.name, checkpoint, training, recipe.train.monitor),
                  **{k: v for k, v in training.items() if k != "history"}, "split": split_report, "test": test}
        write_json(fold_dir / "history.json", training["history"])
        write_json(record_path, record)
        records.append(record)
        scores = ", ".join(f"{m} {100 * test[m]['accuracy']:.1f}%" for m in test)
        print(f"{fold.name}: best epoch {training['best_epoch']}, test accuracy of {checkpoint} (epoch "
              f"{record['evaluated']['epoch']}) {scores}", flush=True)
    if not info.is_chief:
        shutil.rmtree(work_dir, ignore_errors=True)
        print(f"worker {info.index}: done (the chief writes the results)", flush=True)
        return status
    if records:
        summarise_run(run_dir, recipe, data, records, extra)
    return status


def last_checkpoint(run_dir: str | Path | None) -> str | None:
    """The newest complete checkpoint of a run folder: a fold's committed backup (the resume
    point that state.json names), or its best/last .keras; None if no epoch finished yet."""
    if run_dir is None or not Path(run_dir).is_dir():
        return None
    from keras_mgc.io import read_json

    backups: list[Path] = []
    models: list[Path] = []
    for fold_dir in Path(run_dir).glob("*/"):
        try:
            backups.append(fold_dir / "backup" / read_json(fold_dir / "backup" / "state.json")["weights"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        models += [fold_dir / "last.keras", fold_dir / "best.keras"]
    for found in (backups, models):  # the resume point first
        found = [p for p in found if p.is_file()]
        if found:
            return str(max(found, key=lambda p: p.stat().st_mtime))
    return None


_RUN_DIR: Path | None = None  # the run folder of this command, for the full-disk message


def _guarded(main: Any) -> Any:
    from keras_mgc.io import disk_full_guard

    return disk_full_guard("keras_mgc.train", lambda: last_checkpoint(_RUN_DIR))(main)


@_guarded
def main(argv: list[str] | None = None) -> int:
    global _RUN_DIR
    from keras_mgc.runlock import RunLock, RunLockedError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from keras_mgc.distributed import ClusterError, TaskInfo, configure_cluster

    command = "python -m keras_mgc.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        recipe = recipe_from_args(args)
        info = configure_cluster() if recipe.train.distribute == "multi_worker" else TaskInfo("worker", 0, 1)
    except (RecipeError, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from keras_mgc.data.datasets import DatasetError
    from keras_mgc.data.shard import ShardError
    from keras_mgc.data.splits import SplitError

    _RUN_DIR = recipe.run_dir()
    if not info.is_chief:  # the chief locks, checks and records the run folder (and does --overwrite)
        try:
            return run(recipe, _RUN_DIR, command, info)
        except (DatasetError, SplitError, ShardError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    lock = RunLock(_RUN_DIR, command)
    try:
        run_dir = open_run(recipe, args.resume, args.overwrite, lock)
        return run(recipe, run_dir, command, info)
    except (RecipeError, RunLockedError, DatasetError, SplitError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        lock.release()


if __name__ == "__main__":
    raise SystemExit(main())
