"""The whole path a user takes: train on real clips -> export -> tag songs with LiteRT."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import run_cli


def test_trained_run_exports_and_its_tflite_tags_real_songs(gtzan_mini_run, shared_data, tmp_path):
    gtzan = shared_data / "gtzan-mini"
    out = tmp_path / "export"
    eval_clips = [str(p) for p in sorted(gtzan.glob("*/*.00000.wav"))]
    proc = run_cli("keras_mgc.export", "--run", str(gtzan_mini_run), "--out", str(out), "--formats", "tflite",
                   "--tflite-precisions", "float32,dynamic_int8", "--eval-audio", *eval_clips,
                   "--representative-audio", *eval_clips, "--latency-runs", "1", "--latency-threads", "1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed"
    model = out / "tflite" / "model_float32.tflite"
    meta = json.loads(model.with_suffix(".json").read_text())
    assert meta["class_names"] == json.loads((gtzan_mini_run / "classes.json").read_text())
    assert meta["training"]["recipe"] == "gtzan_cv"

    songs = [str(p) for p in sorted((shared_data / "other-music").iterdir())] + eval_clips[:2]
    tagged = run_cli("keras_mgc.tag", *songs, "--model", str(model), "--top-k", "3", "--json")
    assert tagged.returncode == 0, tagged.stderr[-2000:]
    doc = json.loads(tagged.stdout)
    assert doc["failed"] == 0 and len(doc["results"]) == len(songs)
    for result in doc["results"]:
        probs = np.array(list(result["probabilities"].values()))
        assert abs(probs.sum() - 1) < 1e-4 and len(result["top"]) == 3
        assert result["windows"] >= int(result["duration"]) - 2  # one window per second of music
    # The phone-sized artifact (dynamic-range int8, verified against Keras by the export) tags them too.
    int8 = run_cli("keras_mgc.tag", *songs, "--model", str(out / "tflite" / "model_dynamic_int8.tflite"), "--json")
    assert int8.returncode == 0, int8.stderr[-2000:]
    assert [r["file"] for r in json.loads(int8.stdout)["results"]] == [r["file"] for r in doc["results"]]
