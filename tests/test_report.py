"""`python -m keras_mgc.report`: the paper's table layout from real runs, never a silent comparison."""

from __future__ import annotations

import json
import statistics

import pytest

from keras_mgc import paper
from keras_mgc.report import differences, overrides_of
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def report(quickstart_run, gtzan_mini_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    # gtzan_mini_run named twice: one run, reported once.
    proc = run_cli("keras_mgc.report", str(gtzan_mini_run), str(quickstart_run), str(gtzan_mini_run),
                   "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"out": out, "stdout": proc.stdout, "json": json.loads((out / "report.json").read_text()),
            "md": (out / "report.md").read_text()}


def _fold_accuracies(run_dir, mode):
    results = json.loads((run_dir / "results.json").read_text())
    return [100 * f["test"][mode]["accuracy"] for f in results["folds"]], results


def test_one_row_per_system_in_table_order_with_measured_mean_and_std(report, gtzan_mini_run, quickstart_run):
    rows = report["json"]["rows"]
    assert [r["recipe"] for r in rows] == ["gtzan_cv", "quickstart"]  # #16 first, then runs of no published row
    gtzan, quick = rows
    accuracies, results = _fold_accuracies(gtzan_mini_run, "tta")  # gtzan_cv's headline is TTA (#16)
    assert gtzan["ref"] == "#16" and gtzan["published"] == paper.ROWS["#16"].accuracy == 91.1
    assert gtzan["evaluation"] == results["headline"] == "tta"
    assert gtzan["measured_mean"] == pytest.approx(statistics.mean(accuracies), abs=0.01)
    assert gtzan["measured_std"] == pytest.approx(statistics.stdev(accuracies), abs=0.01)
    assert gtzan["folds"] == [1, 2] and gtzan["n_results"] == 2
    assert gtzan["seeds"] == sorted(results["seeds"]["per_fold"].values())
    assert gtzan["protocol"] == "paper folds"
    q_acc, _ = _fold_accuracies(quickstart_run, "tta")
    assert quick["published"] is None and quick["measured_mean"] == pytest.approx(q_acc[0], abs=0.01)


def test_runs_off_the_papers_protocol_are_marked_and_not_compared(report):
    gtzan, quick = report["json"]["rows"]
    assert gtzan["comparable"] is False and gtzan["difference"] is None
    reasons = " | ".join(gtzan["not_comparable_because"])
    assert "folds 1, 2 of the paper's 10" in reasons
    assert "split entries missing from the data" in reasons  # gtzan-mini holds ~100 of GTZAN's 1,000 tracks
    assert "recipe overridden:" in reasons and "train.epochs=2" in reasons
    assert quick["comparable"] is False and "no published number" in quick["not_comparable_because"][0]
    md = report["md"]
    assert "| #16 | ECAPA-TDNN + CCS + FSA s=512 c=1024 + TTA | gtzan_cv | gtzan | paper folds | 1, 2 |" in md
    assert "| 91.1 |" in md and "no: folds 1, 2 of the paper's 10" in md
    assert md in report["stdout"]


def test_the_picture_is_written(report):
    png = (report["out"] / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_papers_protocol_is_comparable_and_every_difference_is_named():
    row = paper.ROWS["#5"]
    same = {"dataset": "gtzan", "split": "paper_10fold", "name": "paper folds", "folds": list(range(1, 11)),
            "missing_entries": 0}
    assert differences(row, same, "whole") == []
    assert differences(row, {**same, "split": "fault_filtered", "name": "fault-filtered"}, "whole") == [
        "split fault-filtered (paper: the authors' 10 folds (test k, valid k+1, train the other 8), "
        "mean over the 10 test folds)"]
    assert differences(row, same, "tta") == ["evaluation tta (paper: whole)"]
    assert differences(paper.ROWS["#16"], same, "tta") == []
    assert differences(paper.ROWS["#4"], same, "whole")[0].startswith("published number is Liu et al.'s")
    assert overrides_of("python -m keras_mgc.train --recipe r.yaml --set a=1 b=2 --folds 1 --set c=3") == [
        "a=1", "b=2", "c=3"]


def test_a_folder_without_results_is_refused_with_its_name(tmp_path):
    proc = run_cli("keras_mgc.report", str(tmp_path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert f"{tmp_path}: no results.json" in proc.stderr and "Traceback" not in proc.stderr
