"""The benchmark suite runs end to end (--quick): a smoke test, no timing assertions."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def test_quick_benchmark_writes_its_table_and_json(tmp_path):
    proc = run_cli("keras_mgc.bench", "--quick", "--out", str(tmp_path), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    machine = results["machine"]
    assert machine["cpu_count"] >= 1 and machine["tensorflow"] and machine["ai_edge_litert"]
    assert results["peak"]["all"]["gflops"] > 0
    (entry,) = results["configs"].values()
    assert entry["flops"]["clip_gflop"] > entry["flops"]["clip_frontend_gflop"] > 0
    inference = entry["inference"]
    assert set(inference) == {"keras", "saved_model", "tflite_float32", "tflite_float16", "tflite_dynamic_int8",
                              "tflite_int8", "onnx", "authors_pytorch"}
    # The authors' PyTorch model, timed in the same run (or skipped with the reason without torch).
    authors = inference.pop("authors_pytorch")["all"]
    authors_training = entry["training"].pop("authors_pytorch")
    table = (tmp_path / "bench.md").read_text()
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "torch is not installed" in authors["skipped"] and "torch is not installed" in authors_training["skipped"]
        assert "authors' PyTorch rows skipped: torch is not installed" in table
    else:
        assert 0 < authors["clip"]["median"] and authors["tta"]["n"] == 3 and authors_training["crops_per_s"] > 0
        assert "| tiny | authors_pytorch | all |" in table
        keras_row = next(line for line in table.splitlines() if line.startswith("| tiny | keras | all |"))
        assert keras_row.split("|")[8].strip().endswith("x")  # the same-run ratio is filled in
    for runtime, by_threads in inference.items():
        res = by_threads["all"]
        assert "error" not in res, (runtime, res)
        assert 0 < res["clip"]["p10"] <= res["clip"]["median"] <= res["clip"]["p90"]
        assert res["tta"]["n"] == 3 and res["peak_rss_mb"] > 0
        # A TFLite / ONNX figure must be what a device without TensorFlow needs.
        assert res.get("tensorflow_imported", True) == (runtime in ("keras", "saved_model")), runtime
    for precision, res in entry["training"].items():
        assert res["crops_per_s"] > 0, precision
    pipe = results["pipeline"]
    assert pipe["memory"]["cached_crops_per_s"] > 0 and pipe["disk"]["first_epoch_crops_per_s"] > 0
    assert "| tiny | tflite_dynamic_int8 | all |" in table and "Input pipeline" in table


def test_frontend_share_section_times_before_after_and_network_in_one_run(tmp_path):
    proc = run_cli("keras_mgc.bench", "--quick", "--sections", "frontend_share", "--threads", "1", "--out",
                   str(tmp_path), timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    share = json.loads((tmp_path / "bench.json").read_text())["configs"]["tiny"]["frontend_share"]["1"]
    for graph in ("before", "after", "network", "after_fixed_length", "network_fixed_length"):
        assert 0 < share[graph]["p10"] <= share[graph]["median"] <= share[graph]["p90"], graph
        assert share[graph]["n"] >= 5
    for graph in ("before", "after", "after_fixed_length"):
        assert 0 <= share[graph]["frontend_share"] < 1
    assert share["speedup"] == share["before"]["median"] / share["after"]["median"]
    row = next(line for line in (tmp_path / "bench.md").read_text().splitlines() if line.startswith("| tiny | 1 |"))
    assert f"{share['speedup']:.2f}x" in row


def test_bad_thread_counts_are_refused_naming_the_option(tmp_path):
    proc = run_cli("keras_mgc.bench", "--quick", "--threads", "two", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "--threads" in proc.stderr and "two" in proc.stderr
