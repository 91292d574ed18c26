"""Every baseline through the real pipeline: 2 epochs of `keras_mgc.train`, then `keras_mgc.export`.

Reduced-width presets (`tiny_resnet18`, `tiny_se_resnet34`, `tiny_vgg`, `tiny_bbnn`) on the
package's generated dataset: one training process for all of them (one TensorFlow start-up),
then one export per backbone with the same verification thresholds as the ECAPA models
(the exporter's own: float32 artifacts within 1e-4 of Keras, dynamic int8 top-1 agreement).
VGG is the fixed-length case: its artifacts take exactly one window, and whole-clip
evaluation and the tagger slide windows of that length over longer clips.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from keras_mgc.windows import covering_windows

from tests.conftest import REPO_ROOT, run_cli

BACKBONES = ["resnet18", "se_resnet34", "vgg", "bbnn"]
#: 32 frames: VGG's tiny preset is built for exactly this (the smallest five 2x2 pools allow).
CROP = 31 * 256

TRAIN_ALL = textwrap.dedent("""
    import sys
    from keras_mgc.train import main
    out = sys.argv[1]
    for recipe in sys.argv[2:]:
        code = main(["--recipe", recipe, "--output-dir", out])
        if code:
            raise SystemExit(f"{recipe}: exit {code}")
""")


def _recipe(backbone: str) -> dict:
    return {
        "name": f"tiny_{backbone}", "seed": 5,
        "data": {"dataset": "synthetic", "split": "kfold", "n_folds": 3, "folds": [1],
                 "synthetic_clips_per_class": 3, "synthetic_seconds": 2.0, "data_cycle": 2, "crop_samples": CROP},
        "model": {"backbone": backbone, "preset": f"tiny_{backbone}"},
        "train": {"epochs": 2, "batch_size": 8, "verbose": 0, "precision": "float32"},
        "eval": {"modes": ["whole", "tta"], "tta_crops": 3, "headline": "whole"},
    }


@pytest.fixture(scope="session")
def baseline_runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("baselines")
    recipes = []
    for backbone in BACKBONES:
        path = out / f"tiny_{backbone}.yaml"
        path.write_text(yaml.safe_dump(_recipe(backbone)))
        recipes.append(str(path))
    proc = subprocess.run([sys.executable, "-c", TRAIN_ALL, str(out / "runs"), *recipes], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return {b: out / "runs" / f"tiny_{b}" for b in BACKBONES}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_two_epochs_through_the_training_loop(baseline_runs, backbone):
    run = baseline_runs[backbone]
    results = json.loads((run / "results.json").read_text())
    assert results["recipe"]["model"]["backbone"] == backbone
    history = json.loads((run / "fold_01" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["loss"]) and 0 <= h["val_accuracy"] <= 1 for h in history)
    (fold,) = results["folds"]
    for mode in ("whole", "tta"):
        assert fold["test"][mode]["n"] == fold["split"]["sizes"]["test"] > 0
    assert (run / "fold_01" / "best.keras").is_file()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_export_to_savedmodel_tflite_onnx_within_the_ecapa_thresholds(baseline_runs, backbone):
    run = baseline_runs[backbone]
    proc = run_cli("keras_mgc.export", "--run", str(run), "--formats", "saved_model,tflite,onnx",
                   "--tflite-precisions", "float32,dynamic_int8", "--eval-audio", str(run / "synthetic_data"),
                   "--eval-clips", "6", "--representative-crops", "4", "--latency-runs", "0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    report = json.loads((run / "export" / "report.json").read_text())
    built = {(a["format"], a["precision"]) for a in report["artifacts"]}
    assert {("saved_model", "float32"), ("tflite", "float32"), ("tflite", "dynamic_int8")} <= built
    assert any(fmt == "onnx" for fmt, _ in built)
    assert all(a["passed"] for a in report["artifacts"]), [a["failures"] for a in report["artifacts"]]
    saved_model = next(a for a in report["artifacts"] if a["format"] == "saved_model")
    assert saved_model["thresholds"]["max_abs_diff"] == 1e-4  # the exporter's float32 threshold, as for ECAPA
    if backbone == "vgg":  # the fixed length is declared in the artifacts
        from ai_edge_litert.interpreter import Interpreter

        (tflite,) = [p for p in (run / "export").rglob("model_float32.tflite")]
        runner = Interpreter(model_path=str(tflite)).get_signature_runner("serving_default")
        assert runner.get_input_details()["waveform"]["shape_signature"].tolist() == [-1, CROP]
        # The on-device tagger slides windows of exactly that length (0.36 s) over a 2 s clip.
        song = sorted((run / "synthetic_data").rglob("*.wav"))[0]
        tag = run_cli("keras_mgc.tag", str(song), "--model", str(tflite), "--json", "--hop", "0.36")
        assert tag.returncode == 0, tag.stdout + tag.stderr
        doc = json.loads(tag.stdout)
        assert doc["window"] == pytest.approx(CROP / 22050, abs=1e-5)
        (result,) = doc["results"]
        assert result["windows"] >= 5 and sum(result["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        # Export verification fed each evaluation clip as its covering windows (more rows than clips).
        whole = saved_model["entries"]["waveform"]["by_input"]["whole"]["n"]
        assert whole == 6 * len(covering_windows(np.zeros(2 * 22050), CROP)) > report["evaluation"]["n_clips"] == 6
