"""Export reliability: mixed-precision checkpoints, failures and exit codes, bad inputs, crashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.test_export import keras_probabilities, reference, small_run


@pytest.fixture(scope="session")
def gtzan(shared_data: Path) -> Path:
    return shared_data / "gtzan-mini"


@pytest.fixture(scope="session")
def run(tmp_path_factory, gtzan) -> Path:
    return small_run(tmp_path_factory, gtzan)


def _eval(gtzan: Path, n: int = 2) -> list[str]:
    return [str(gtzan / g / f"{g}.00000.wav") for g in ("rock", "classical", "disco")[:n]]


def _quick(run: Path, out: Path, gtzan: Path, *extra: str) -> list[str]:
    return ["--run", str(run), "--formats", "tflite", "--tflite-precisions", "float32", "--out", str(out),
            "--eval-audio", *_eval(gtzan), "--eval-crops-per-clip", "1", "--latency-runs", "0", *extra]


# --------------------------------------------------------------------------- mixed precision


def test_mixed_precision_checkpoint_exports_float32_artifacts(tmp_path, run, gtzan, capsys):
    import keras
    import tensorflow as tf

    from keras_mgc.export.cli import main
    from keras_mgc.export.saved_model import signature_summary
    from keras_mgc.export.trained_model import from_run
    from keras_mgc.export.tflite import tensor_types
    from keras_mgc.models import build_model

    src = from_run(run)
    trained = keras.models.load_model(src.checkpoint, compile=False)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = build_model(src.model_config, len(src.class_names))
        mixed.set_weights(trained.get_weights())
        mixed.save(tmp_path / "mixed.keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    reloaded = keras.models.load_model(tmp_path / "mixed.keras", compile=False)
    assert "float16" in {layer.compute_dtype for layer in reloaded.get_layer("backbone").layers}

    out = tmp_path / "out"
    rc = main(["--model", str(tmp_path / "mixed.keras"), "--recipe", str(run / "recipe.yaml"),
               "--classes", str(run / "classes.json"), "--formats", "saved_model,tflite", "--tflite-precisions",
               "float32", "--out", str(out), "--eval-audio", *_eval(gtzan, 3), "--eval-crops-per-clip", "1",
               "--latency-runs", "0"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed"
    for art in report["artifacts"]:
        assert all(e["max_abs_diff"] <= 1e-4 for e in art["entries"].values())
    name = report["model_name"]
    for signature in signature_summary(out / "saved_model" / name / "1").values():
        dtypes = {t["dtype"] for t in (*signature["inputs"].values(), *signature["outputs"].values())}
        assert dtypes <= {"float32", "string"}
    types = set(tensor_types((out / "tflite/model_float32.tflite").read_bytes()).values())
    assert "FLOAT16" not in types and "FLOAT32" in types
    # The float32 artifacts equal the model trained in float32 (same weights).
    ref = reference(run)
    audio = np.asarray(tf.random.stateless_uniform((2, 44356), (1, 2), -0.5, 0.5))
    loaded = tf.saved_model.load(str(out / "saved_model" / name / "1"))
    got = loaded.signatures["serving_default"](waveform=tf.constant(audio))["probabilities"].numpy()
    np.testing.assert_allclose(got, keras_probabilities(ref, audio), atol=1e-4)


# --------------------------------------------------------------------------- failures and exit codes


def test_missed_threshold_exits_1_and_never_publishes_to_out(tmp_path, run, gtzan, capsys):
    from keras_mgc.export.cli import main

    out = tmp_path / "out"
    rc = main(_quick(run, out, gtzan, "--max-abs-diff", "1e-12"))
    err = capsys.readouterr().err
    assert rc == 1
    assert not out.exists()
    failed = json.loads((tmp_path / "out.failed" / "report.json").read_text())
    assert failed["status"] == "failed"
    assert any("max |p - p_keras|" in f and "> 1e-12" in f for f in failed["failures"])
    assert "export: FAILED" in err and f"{out} was left as it was" in err
    meta = json.loads((tmp_path / "out.failed/tflite/model_float32.json").read_text())
    assert meta["verification"]["passed"] is False


def test_a_converter_error_fails_the_export_and_the_others_go_on(tmp_path, run, gtzan, monkeypatch, capsys):
    import keras_mgc.export.onnx_export
    from keras_mgc.export.cli import main

    convert = keras_mgc.export.onnx_export.convert

    def broken_for_mel(models, entry, *args, **kwargs):
        if entry == "mel":
            raise RuntimeError("tf2onnx exploded")
        return convert(models, entry, *args, **kwargs)

    monkeypatch.setattr(keras_mgc.export.onnx_export, "convert", broken_for_mel)
    out = tmp_path / "out"
    argv = _quick(run, out, gtzan)
    argv[argv.index("tflite")] = "onnx"
    assert main(argv) == 1
    report = json.loads((tmp_path / "out.failed" / "report.json").read_text())
    arts = {a["name"]: a for a in report["artifacts"]}
    assert arts["onnx/model.onnx"]["error"] is None and arts["onnx/model.onnx"]["passed"]
    assert arts["onnx/model_mel.onnx"]["error"] == "RuntimeError: tf2onnx exploded"
    assert report["failures"] == ["onnx/model_mel.onnx: RuntimeError: tf2onnx exploded"]
    assert "FAILED onnx/model_mel.onnx: RuntimeError: tf2onnx exploded" in capsys.readouterr().err
    assert (tmp_path / "out.failed/onnx/model.onnx").exists() and not out.exists()


def test_without_real_clips_the_report_says_generated(tmp_path, run, monkeypatch, capsys):
    import yaml

    from keras_mgc.export.cli import main

    monkeypatch.delenv("KERAS_MGC_SHARED_DATA", raising=False)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["data"]["root"] = str(tmp_path / "not-on-this-machine")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    rc = main(["--model", str(run / "fold_01/best.keras"), "--recipe", str(tmp_path / "recipe.yaml"),
               "--classes", str(run / "classes.json"), "--formats", "tflite", "--tflite-precisions", "float32",
               "--out", str(out), "--eval-clips", "3", "--eval-crops-per-clip", "1", "--latency-runs", "0"])
    assert rc == 0
    assert "using generated signals" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["evaluation"]["source"] == "generated"
    assert any("NO REAL CLIPS" in n for n in report["evaluation"]["notes"])
    assert "NO REAL CLIPS" in (out / "report.md").read_text()
    meta = json.loads((out / "tflite/model_float32.json").read_text())
    assert meta["verification"]["evaluation_source"] == "generated"


def test_bad_inputs_are_reported_once_and_skipped(tmp_path, gtzan):
    import soundfile as sf

    from keras_mgc.export import clips

    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(1000, np.float32), 22050)
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(100))
    (tmp_path / "empty_dir").mkdir()
    files, problems = clips.expand([tmp_path / "missing.wav", tmp_path / "empty_dir", short, corrupt,
                                    gtzan / "pop" / "pop.00001.wav"])
    messages: list[str] = []
    loaded = clips.load(files, purpose="representative", sample_rate=22050, min_samples=44356, limit=None,
                        log=messages.append, problems=problems)
    assert [c.name for c in loaded.clips] == [str(gtzan / "pop" / "pop.00001.wav")]
    reasons = {Path(s["path"]).name: s["reason"] for s in loaded.skipped}
    assert reasons["missing.wav"] == "not found" and reasons["empty_dir"] == "folder holds no audio files"
    assert reasons["short.wav"].startswith("too short: 1000 samples")
    assert "corrupt.flac" in reasons
    assert len(messages) == 4 and all(m.startswith("skipped representative audio ") for m in messages)


# --------------------------------------------------------------------------- atomic publication


def test_a_crash_mid_export_leaves_nothing_complete_looking(tmp_path, run, gtzan, capsys):
    from keras_mgc.export.cli import main

    out = tmp_path / "out"
    argv = _quick(run, out, gtzan)
    argv[argv.index("tflite")] = "tflite,onnx"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import keras_mgc.export.onnx_export
        def crash(*args, **kwargs):  # the process dies while the second format is being built
            os.kill(os.getpid(), signal.SIGKILL)
        keras_mgc.export.onnx_export.convert = crash
        from keras_mgc.export.cli import main
        sys.exit(main({argv!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not out.exists() and not (tmp_path / "out.failed").exists()
    (staging,) = [p for p in tmp_path.iterdir() if p.name.startswith(".out.staging-")]
    assert (staging / "tflite/model_float32.tflite").exists()  # work in progress, hidden, clearly named
    assert not (staging / "report.json").exists()
    # The next export to the same place removes the dead process's staging folder.
    assert main(_quick(run, out, gtzan)) == 0
    assert "removed the staging folder of an interrupted export" in capsys.readouterr().err
    assert not staging.exists() and (out / "report.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_staging_replaces_the_old_export_only_when_finished(tmp_path):
    from keras_mgc import io as kio
    from keras_mgc.export import publish

    out = tmp_path / "export"
    out.mkdir()
    (out / "report.json").write_text("old")
    stage = publish.Staging(out)
    kio.write_text(stage.dir / "report.json", "new")
    assert (out / "report.json").read_text() == "old"  # untouched while the new one is built
    assert stage.publish(passed=False) == tmp_path / "export.failed"
    assert (out / "report.json").read_text() == "old" and (tmp_path / "export.failed/report.json").read_text() == "new"
    stage = publish.Staging(out)
    kio.write_text(stage.dir / "report.json", "newer")
    stage.publish(passed=True)
    assert (out / "report.json").read_text() == "newer" and not (tmp_path / "export.failed").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_atomic_file_keeps_the_old_file_when_writing_fails(tmp_path):
    from keras_mgc.io import atomic_path

    target = tmp_path / "model.tflite"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


def test_default_pool_is_the_recipes_data_folder_in_class_order(tmp_path, gtzan, monkeypatch):
    from keras_mgc.export import clips

    monkeypatch.delenv("KERAS_MGC_SHARED_DATA", raising=False)
    files, origin = clips.default_pool({"data": {"root": str(gtzan)}})
    assert origin == str(gtzan) and len(files) == 100
    assert [f.parent.name for f in files[:10]] == sorted(p.name for p in gtzan.iterdir() if p.is_dir())
    assert clips.default_pool({"data": {"root": str(tmp_path / "absent")}}) == ([], "")
    monkeypatch.setenv("KERAS_MGC_SHARED_DATA", str(gtzan.parent))
    assert clips.default_pool({"data": {"root": None}})[1] == str(gtzan)
