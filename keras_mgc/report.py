"""The paper's tables from finished runs: published accuracy beside measured, protocol checked.

    python -m keras_mgc.report RUN_DIR... [--out DIR] [--mode whole|tta]

Reads the results.json of each run folder (what `python -m keras_mgc.train` writes) and
writes, in --out (default: report/):

- report.md: one row per system in the paper's table order (Table 2 GTZAN, then Table 3
  Melon, then runs of no published system): the published accuracy, the measured mean
  +- std over test folds, the folds and seeds used, the protocol (the authors' folds,
  fault-filtered, k-fold, lists);
- report.json: the same rows with every number;
- report.png: measured (mean +- std) beside published, one pair of bars per row.

A run is compared with its published number only when it used the paper's protocol:
the same dataset, split and folds, the whole data (no missing split entries) and the same
evaluation (whole clip, or TTA for #16). Anything else is marked "not comparable" with the
reasons (e.g. "folds 1, 2 of the paper's 10") and its difference is left empty; in the
picture its bar is hatched. Runs of one recipe (same name, protocol and evaluation, e.g.
two seeds) are pooled into one row: the mean and std are then over every fold result.

The published numbers come from keras_mgc.paper (by the recipe's `paper_ref`).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Any

from keras_mgc import paper

PROTOCOL_NAMES = {"paper_10fold": "paper folds", "fault_filtered": "fault-filtered", "kfold": "k-fold",
                  "lists": "split lists"}


class ReportError(ValueError):
    """A run folder that cannot be reported (the message names the file and what is wrong)."""


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The results.json of a run folder, checked for the keys the report needs."""
    path = Path(run_dir)
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise ReportError(f"{run_dir}: no results.json (is it a run folder of python -m keras_mgc.train?)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot be read as JSON ({exc})") from None
    for key in ("recipe", "folds", "summary", "headline"):
        if not isinstance(results, dict) or key not in results:
            raise ReportError(f"{path}: not a results file of keras_mgc.train (no '{key}')")
    results["_path"] = str(path)
    return results


def protocol_of(results: dict[str, Any]) -> dict[str, Any]:
    """Dataset, split, folds and data coverage of one run."""
    data = results["recipe"]["data"]
    split = data["split"]
    name = PROTOCOL_NAMES.get(split, split)
    if split == "kfold":
        name = f"{data['n_folds']}-fold (stratified, seeded)"
    # A track absent from the data folder (data.allow_missing) or unreadable is listed by every fold using it.
    missing = {key for f in results["folds"] for part in ("missing", "skipped_unreadable")
               for keys in (f.get("split", {}).get(part) or {}).values() for key in keys}
    return {"dataset": data["dataset"], "split": split, "name": name,
            "n_folds": data.get("n_folds") if split == "kfold" else None,
            "folds": sorted(int(f["fold"]) for f in results["folds"]), "missing_entries": len(missing),
            "n_files": results.get("data", {}).get("n_files")}


def overrides_of(command: str | None) -> list[str]:
    """The `--set KEY=VALUE` overrides of a recorded train command line (they change the recipe's protocol)."""
    if not command:
        return []
    words, out, taking = shlex.split(command), [], False
    for word in words:
        if word.startswith("--"):
            taking = word == "--set"
        elif taking:
            out.append(word)
    return out


def differences(row: paper.PaperRow | None, protocol: dict[str, Any], mode: str,
                overrides: list[str] | None = None) -> list[str]:
    """Why a run is not the paper's measurement of `row` (empty: comparable)."""
    if row is None:
        return ["no published number (recipe has no paper_ref of the paper's tables)"]
    want = paper.PAPER_PROTOCOL[row.dataset]
    out = []
    if row.note.startswith("Liu et al."):
        out.append("published number is Liu et al.'s, with their own protocol")
    if protocol["dataset"] != row.dataset:
        out.append(f"dataset {protocol['dataset']} (paper: {row.dataset})")
    if protocol["split"] != want["split"]:
        out.append(f"split {protocol['name']} (paper: {want['text']})")
    elif want["folds"] is not None and protocol["folds"] != want["folds"]:
        used = ", ".join(map(str, protocol["folds"]))
        out.append(f"folds {used} of the paper's {len(want['folds'])}")
    if protocol["missing_entries"]:
        out.append(f"{protocol['missing_entries']} split entries missing from the data")
    if mode != row.eval_mode:
        out.append(f"evaluation {mode} (paper: {row.eval_mode})")
    if overrides:
        out.append("recipe overridden: " + " ".join(overrides))
    return out


def _group_key(results: dict[str, Any], mode: str) -> tuple:
    p = protocol_of(results)
    return (results["recipe"]["name"], results["recipe"].get("paper_ref"), p["dataset"], p["split"],
            tuple(p["folds"]), mode)


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def build_rows(runs: list[dict[str, Any]], mode: str | None = None) -> list[dict[str, Any]]:
    """One row per system (runs of one recipe and protocol pooled), in the paper's table order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for results in runs:
        run_mode = mode or results["headline"]
        if run_mode not in results["summary"]:
            raise ReportError(f"{results['_path']}: no '{run_mode}' evaluation in this run "
                              f"(it has {', '.join(k for k in results['summary'] if k != 'val_accuracy')})")
        groups.setdefault(_group_key(results, run_mode), []).append(results)
    rows = []
    for (name, ref, *_rest, run_mode), members in groups.items():
        first = members[0]
        published = paper.find(ref)
        protocol = protocol_of(first)
        accuracies = [100 * f["test"][run_mode]["accuracy"] for r in members for f in r["folds"]
                      if run_mode in f.get("test", {})]
        mean, std = _mean_std(accuracies)
        seeds = sorted({s for r in members for s in (r.get("seeds", {}).get("per_fold") or {}).values() if s is not None})
        overrides = sorted({o for r in members for o in overrides_of(r.get("command"))})
        why = differences(published, protocol, run_mode, overrides)
        rows.append({
            "ref": published.ref if published else (ref or ""),
            "system": published.system if published else name,
            "recipe": name,
            "runs": [r["_path"] for r in members],
            "dataset": protocol["dataset"],
            "protocol": protocol["name"],
            "folds": protocol["folds"],
            "n_results": len(accuracies),
            "seeds": seeds,
            "evaluation": run_mode,
            "published": published.accuracy if published else None,
            "measured_mean": round(mean, 2),
            "measured_std": round(std, 2),
            "comparable": not why,
            "difference": round(mean - published.accuracy, 2) if published and not why else None,
            "not_comparable_because": why,
        })
    order = {r.ref: i for i, r in enumerate(paper.rows())}
    rows.sort(key=lambda r: (order.get(r["ref"], len(order)), r["recipe"]))
    return rows


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as the paper's table layout, with a column saying whether each is comparable."""
    lines = ["# Published vs measured accuracy", "",
             "Accuracy in %. Measured: mean +- sample std (ddof=1) over the test folds of the run(s). "
             "A difference is given only where the run used the paper's protocol.", "",
             "| # | system | recipe | dataset | protocol | folds | seeds | eval | published | measured | difference "
             "| comparable |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        folds = ", ".join(map(str, r["folds"]))
        seeds = ", ".join(map(str, r["seeds"])) or "-"
        comparable = "yes" if r["comparable"] else "no: " + "; ".join(r["not_comparable_because"])
        lines.append(f"| {r['ref'] or '-'} | {r['system']} | {r['recipe']} | {r['dataset']} | {r['protocol']} | {folds} | {seeds} | "
                     f"{r['evaluation']} | {_fmt(r['published'])} | {r['measured_mean']:.1f} +- {r['measured_std']:.1f} "
                     f"(n={r['n_results']}) | {_fmt(r['difference'], True)} | {comparable} |")
    lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Measured (mean +- std) beside published, one pair of bars per row; hatched bars: not comparable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.patches import Patch

    n = len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * n + 2), 4.8))
    width = 0.38
    for x, r in enumerate(rows):
        if r["published"] is not None:
            ax.bar(x - width / 2, r["published"], width, color="#9db4d3")
            ax.text(x - width / 2, r["published"] + 1, f"{r['published']:.1f}", ha="center", fontsize=7)
        else:
            ax.text(x - width / 2, 1, "no published", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.bar(x + width / 2, r["measured_mean"], width, yerr=r["measured_std"], capsize=3,
               color="#e07b39" if r["comparable"] else "white", edgecolor="#e07b39",
               hatch=None if r["comparable"] else "//")
        ax.text(x + width / 2, r["measured_mean"] + r["measured_std"] + 1, f"{r['measured_mean']:.1f}",
                ha="center", fontsize=7)
    labels = [f"{r['ref']} {r['system']}" if r["ref"] else r["recipe"] for r in rows]
    ax.set_xticks(range(n))
    ax.set_xticklabels([textwrap.fill(label, 16) for label in labels], rotation=0 if n <= 6 else 45,
                       ha="center" if n <= 6 else "right", fontsize=7)
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("Published vs measured accuracy (measured: mean +- std over folds)", fontsize=10)
    ax.legend(handles=[Patch(color="#9db4d3", label="published"),
                       Patch(color="#e07b39", label="measured, paper's protocol"),
                       Patch(facecolor="white", edgecolor="#e07b39", hatch="//",
                             label="measured, other protocol (not comparable)")],
              fontsize=7, loc="upper center", ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def write_report(run_dirs: list[str | Path], out_dir: str | Path, mode: str | None = None) -> list[dict[str, Any]]:
    """Read the runs and write report.md, report.json and report.png into `out_dir`; returns the rows."""
    from keras_mgc.io import write_json, write_text

    if not run_dirs:
        raise ReportError("no run folders given")
    runs: dict[str, dict[str, Any]] = {}
    for d in run_dirs:  # a folder named twice is one run
        results = read_run(d)
        runs.setdefault(str(Path(results["_path"]).resolve()), results)
    rows = build_rows(list(runs.values()), mode)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.md", markdown(rows))
    write_json(out / "report.json", {"rows": rows, "paper_protocol": paper.PAPER_PROTOCOL})
    plot(rows, out / "report.png")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (or their results.json)")
    parser.add_argument("--out", default="report", help="folder for report.md, report.json, report.png")
    parser.add_argument("--mode", choices=["whole", "tta"], help="evaluation to report (default: each run's headline)")
    args = parser.parse_args(argv)
    try:
        write_report(args.runs, args.out, args.mode)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    print(f"written: {Path(args.out) / 'report.md'}, report.json, report.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
