"""``python -m keras_mgc.export``: SavedModel, TFLite and ONNX artifacts from a run, each verified against Keras.

Exit codes: 0 exported and verified; 1 an artifact failed to build or missed its threshold
(the artifacts go to ``<out>.failed/`` with the report); 2 bad arguments or inputs (nothing
written); 3 exported and verified, but some evaluation/representative files were skipped
(each reported on stderr and in the report); 4 the disk filled up (nothing was published;
free space and run the same command); 130 interrupted.

The destination is locked while the export runs (keras_mgc.runlock): inside a run folder
(the default ``<run>/export``) with the run folder's own lock, so a run that is still
training, or another export into it, makes this one stop at once (exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from keras_mgc.export import ExportError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SKIPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _agreements(value: str) -> dict[str, float]:
    out = {}
    for item in _csv(value):
        key, sep, num = item.partition("=")
        try:
            out[key.strip()] = float(num)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected PRECISION=FRACTION pairs, e.g. int8=0.9, got {item!r}") from None
        if not sep or not 0 <= out[key.strip()] <= 1:
            raise argparse.ArgumentTypeError(f"expected PRECISION=FRACTION with a fraction in [0, 1], got {item!r}")
    return out


def _threads(value: str) -> list[int]:
    out = []
    for item in _csv(value):
        n = (os.cpu_count() or 1) if item == "all" else int(item)
        if n < 1:
            raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {item}")
        out.append(n)
    return sorted(set(out))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m keras_mgc.export",
        description="Export a trained genre classifier (SavedModel for TF Serving, TFLite, ONNX) and prove each "
                    "artifact equal to the Keras model on real clips.",
        epilog="Exit codes: 0 ok; 1 an artifact failed (written to OUT.failed/); 2 bad arguments or inputs; "
               "3 ok but some input files were skipped; 4 disk full; 130 interrupted.",
    )
    src = p.add_argument_group("what to export (either --run, or --model with --recipe and --classes)")
    src.add_argument("--run", type=Path, help="run directory written by keras_mgc.train")
    src.add_argument("--fold", type=int, help="fold to export (default: best validation accuracy in results.json)")
    src.add_argument("--model", type=Path, help="a .keras model file")
    src.add_argument("--recipe", type=Path, help="its recipe.yaml (with --model)")
    src.add_argument("--classes", type=Path, help="its classes.json (with --model)")
    p.add_argument("--formats", default="all", help="all, or a comma list of saved_model,tflite,onnx (default all)")
    p.add_argument("--tflite-precisions", default="float32,float16,dynamic_int8,int8",
                   help="comma list of float32,float16,dynamic_int8,int8 (default all four)")
    p.add_argument("--out", type=Path, help="output folder (default <run>/export, or export/ beside --model)")
    p.add_argument("--eval-audio", nargs="+", metavar="FILE_OR_DIR",
                   help="real clips to verify on (default: the recipe's data folder if present, else "
                        "$KERAS_MGC_SHARED_DATA/gtzan-mini, else generated signals, flagged in the report)")
    p.add_argument("--representative-audio", nargs="+", metavar="FILE_OR_DIR",
                   help="real clips for full-int8 calibration (default: the same pool as --eval-audio, other files)")
    p.add_argument("--model-name", help="TF Serving model name (default: the recipe name)")
    p.add_argument("--version", type=int, default=1, help="TF Serving model version (default 1)")
    p.add_argument("--eval-clips", type=int, default=30, help="at most this many evaluation clips (default 30)")
    p.add_argument("--eval-crops-per-clip", type=int, default=2, help="crops per evaluation clip (default 2)")
    p.add_argument("--representative-crops", type=int, default=64, help="calibration crops for int8 (default 64)")
    p.add_argument("--latency-runs", type=int, default=5, help="timed runs per latency figure (0: skip latency)")
    p.add_argument("--latency-threads", type=_threads, default=None,
                   help="comma list of thread counts, 'all' = every CPU (default 1,all)")
    p.add_argument("--max-abs-diff", type=float, default=None,
                   help="max |p - p_keras| for float32 artifacts (default 1e-4)")
    p.add_argument("--min-agreement", type=_agreements, default=None,
                   help="override minimum top-1 agreement, e.g. int8=0.9,float16=0.99")
    p.add_argument("--top-k", type=int, default=3, help="class names returned by the SavedModel (default 3)")
    return p


_SOURCE: list[str] = []  # the checkpoint being exported, for the full-disk message


def _guarded(main: Callable[..., int]) -> Callable[..., int]:
    from keras_mgc.io import disk_full_guard

    return disk_full_guard("export", lambda: _SOURCE[0] if _SOURCE else None)(main)


@_guarded
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def fail(message: str) -> int:
        print(f"export: error: {message}", file=sys.stderr)
        return EXIT_USAGE

    if (args.run is None) == (args.model is None):
        return fail("give either --run DIR or --model FILE.keras (with --recipe and --classes)")
    if args.model is not None and (args.recipe is None or args.classes is None):
        return fail("--model needs --recipe and --classes")
    if args.run is not None and (args.recipe or args.classes):
        return fail("--recipe and --classes go with --model; a run directory has its own")
    formats = ("saved_model", "tflite", "onnx") if args.formats.strip() == "all" else tuple(_csv(args.formats))
    if not formats:
        return fail("--formats is empty")
    for name, value in (("--eval-clips", args.eval_clips - 1), ("--latency-runs", args.latency_runs),
                        ("--eval-crops-per-clip", args.eval_crops_per_clip), ("--top-k", args.top_k - 1),
                        ("--representative-crops", args.representative_crops - 1)):
        if value < 0:
            return fail(f"{name} is too small")

    from keras_mgc.export import run as run_mod
    from keras_mgc.runlock import RunLockedError, lock_for_output

    if args.run is not None and not args.run.is_dir():
        return fail(f"run directory not found: {args.run}")
    out = args.out or (args.run / "export" if args.run is not None else args.model.parent / "export")
    lock = lock_for_output(out, run_mod.command_line(argv), run_dir=args.run)
    try:
        lock.acquire()
    except RunLockedError as exc:
        return fail(str(exc))
    try:
        return _export(args, argv, out, fail, formats)
    finally:
        lock.release()


def _export(args: argparse.Namespace, argv: list[str], out: Path, fail: Callable[[str], int],
            formats: tuple[str, ...]) -> int:
    from keras_mgc.export import run as run_mod
    from keras_mgc.export import trained_model
    from keras_mgc.export import verify

    try:
        if args.run is not None:
            src = trained_model.from_run(args.run, args.fold)
        else:
            src = trained_model.from_files(args.model, args.recipe, args.classes)
        _SOURCE[:] = [str(src.checkpoint)]
        min_agreement = dict(verify.MIN_AGREEMENT) | (args.min_agreement or {})
        unknown = set(min_agreement) - set(verify.MIN_AGREEMENT)
        if unknown:
            return fail(f"--min-agreement: unknown precision(s) {sorted(unknown)}")
        opts = run_mod.ExportOptions(
            source=src, out=out, formats=formats, tflite_precisions=tuple(_csv(args.tflite_precisions)),
            eval_audio=args.eval_audio, representative_audio=args.representative_audio,
            model_name=args.model_name, version=args.version, eval_clips=args.eval_clips,
            eval_crops_per_clip=args.eval_crops_per_clip, representative_crops=args.representative_crops,
            latency_runs=args.latency_runs, top_k=args.top_k,
            max_abs_diff=verify.MAX_ABS_DIFF if args.max_abs_diff is None else args.max_abs_diff,
            min_agreement=min_agreement, command=run_mod.command_line(argv),
        )
        if args.latency_threads:
            opts.latency_threads = tuple(args.latency_threads)
        result = run_mod.run_export(opts)
    except ExportError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("export: interrupted; nothing was published", file=sys.stderr)
        return EXIT_INTERRUPTED

    from keras_mgc.export import report as report_mod

    print(report_mod.table(result.report), end="")
    if result.passed:
        print(f"export: wrote {result.location} (report.md, report.json)")
        if result.skipped_inputs:
            print(f"export: {result.skipped_inputs} input file(s) were skipped (listed above and in the report)",
                  file=sys.stderr)
    else:
        print(f"export: FAILED, {len(result.report['failures'])} problem(s):", file=sys.stderr)
        for failure in result.report["failures"]:
            print(f"  - {failure}", file=sys.stderr)
        print(f"export: the artifacts and report went to {result.location}; {out} was left as it was",
              file=sys.stderr)
    return result.exit_code
