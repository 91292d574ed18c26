"""Export: one real `python -m keras_mgc.export --formats all` of a briefly trained model, checked piece by piece.

The session's export (about a minute on 2 cores) is shared with tests/test_export_serving.py
and tests/test_export_reliability.py through `exported_run` (memoised per process).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

CROP = 44356
PRECISIONS = ("float32", "float16", "dynamic_int8", "int8")
TASK_PRECISIONS = ("float32", "dynamic_int8")  # task-ready TFLite for MediaPipe (tests/test_mediapipe.py)
_MEMO: dict[str, object] = {}


# --------------------------------------------------------------------------- shared fixtures (memoised)


def small_run(tmp_path_factory: pytest.TempPathFactory, gtzan: Path) -> Path:
    """A real run directory (tests/small_run.py): a briefly trained `tiny` model, folds 1 and 2."""
    if "run" not in _MEMO:
        from tests.small_run import build_small_run

        _MEMO["run"] = build_small_run(tmp_path_factory.mktemp("export") / "run", gtzan)
    return _MEMO["run"]  # type: ignore[return-value]


def eval_files(gtzan: Path) -> list[Path]:
    """Track 0 (the full 30 s clip) and track 8 of some genres (in whichever part of the split: verification
    compares each artifact with Keras, not with the labels)."""
    genres = ["blues", "classical", "disco", "hiphop", "metal", "reggae"]
    return [gtzan / g / f"{g}.00000.wav" for g in genres] + [gtzan / g / f"{g}.00008.wav" for g in genres[:3]]


def exported_run(tmp_path_factory: pytest.TempPathFactory, gtzan: Path) -> dict[str, object]:
    """`python -m keras_mgc.export --run RUN --formats all` with one broken evaluation clip among real ones."""
    if "export" not in _MEMO:
        run = small_run(tmp_path_factory, gtzan)
        broken = tmp_path_factory.mktemp("broken") / "broken.wav"
        broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
        representative = [str(gtzan / g.name / f"{g.name}.00002.wav") for g in sorted(gtzan.iterdir()) if g.is_dir()]
        cmd = [sys.executable, "-m", "keras_mgc.export", "--run", str(run), "--formats", "all",
               "--eval-audio", *map(str, eval_files(gtzan)), str(broken),
               "--representative-audio", *representative, "--representative-crops", "20",
               "--eval-crops-per-clip", "2", "--latency-runs", "1", "--latency-threads", "1,2"]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        out = run / "export"
        _MEMO["export"] = {"proc": proc, "out": out, "run": run, "broken": broken, "cmd": cmd,
                           "report": json.loads((out / "report.json").read_text()) if (out / "report.json").exists()
                           else None}
    return _MEMO["export"]  # type: ignore[return-value]


def reference(run: Path) -> dict[str, object]:
    """The reference Keras model (float32, float64 DFT) and its waveform/mel entry graphs."""
    if "reference" not in _MEMO:
        from keras_mgc.export.graphs import ServingModels
        from keras_mgc.export.trained_model import from_run

        src = from_run(run)
        models = ServingModels.load(str(src.checkpoint), src.model_config, len(src.class_names))
        _MEMO["reference"] = {"src": src, "models": models, "waveform": models.waveform("float64"),
                              "mel": models.mel()}
    return _MEMO["reference"]  # type: ignore[return-value]


def keras_probabilities(ref: dict[str, object], x: np.ndarray, entry: str = "waveform") -> np.ndarray:
    from keras import ops

    return np.asarray(ops.softmax(ref[entry](x, training=False)["logits"], axis=-1))


@pytest.fixture(scope="session")
def gtzan(shared_data: Path) -> Path:
    return shared_data / "gtzan-mini"


@pytest.fixture(scope="session")
def export_result(tmp_path_factory: pytest.TempPathFactory, gtzan: Path) -> dict[str, object]:
    result = exported_run(tmp_path_factory, gtzan)
    proc = result["proc"]
    assert result["report"] is not None, f"export wrote no report:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return result


@pytest.fixture(scope="session")
def out(export_result: dict[str, object]) -> Path:
    return export_result["out"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def ref(export_result: dict[str, object]) -> dict[str, object]:
    return reference(export_result["run"])  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def clips(gtzan: Path) -> dict[str, np.ndarray]:
    from keras_mgc.audio import load_audio

    return {"whole": load_audio(gtzan / "rock" / "rock.00000.wav"), "short": load_audio(gtzan / "jazz" / "jazz.00009.wav")}


# --------------------------------------------------------------------------- the command


def test_command_exits_3_and_reports_the_broken_clip_once(export_result):
    proc = export_result["proc"]
    broken = str(export_result["broken"])
    assert proc.returncode == 3, proc.stderr[-4000:]  # published and verified, but an input was skipped
    lines = [line for line in proc.stderr.splitlines() if broken in line]
    assert len(lines) == 1 and lines[0].startswith(f"skipped evaluation audio {broken}: ")
    assert "header" in lines[0]  # the decoder's reason, not a traceback
    report = export_result["report"]
    assert report["status"] == "passed"
    assert [s["path"] for s in report["evaluation"]["skipped"]] == [broken]
    assert report["evaluation"]["source"] == "real" and report["evaluation"]["n_whole"] == 9
    assert "| tflite/model_int8.tflite |" in proc.stdout  # the table goes to stdout


def test_layout_and_side_files(out, export_result):
    classes = json.loads((export_result["run"] / "classes.json").read_text())
    expected = [
        "saved_model/export_test/1/saved_model.pb", "saved_model/export_test/1/variables/variables.index",
        "saved_model/export_test/1/assets.extra/metadata.json", "saved_model/export_test/1/assets.extra/labels.txt",
        "saved_model/models.config", "saved_model/batching_parameters.txt", "saved_model/docker_run.sh",
        "onnx/model.onnx", "onnx/model.json", "onnx/model_mel.onnx", "onnx/model_mel.json", "onnx/labels.txt",
        "tflite/labels.txt", "report.json", "report.md",
    ] + [f"tflite/model_{p}.{ext}" for p in PRECISIONS for ext in ("tflite", "json")] \
      + [f"tflite/model_task_{p}.{ext}" for p in TASK_PRECISIONS for ext in ("tflite", "json")]
    missing = [p for p in expected if not (out / p).is_file()]
    assert not missing
    for labels in out.rglob("labels.txt"):
        assert labels.read_text().splitlines() == classes
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers and not (out.parent / "export.failed").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or p.name.startswith(".")]


def test_metadata_beside_each_artifact(out, export_result):
    run = export_result["run"]
    classes = json.loads((run / "classes.json").read_text())
    folds = json.loads((run / "results.json").read_text())["folds"]
    chosen = max(folds, key=lambda f: (f["val_accuracy"], -f["fold"]))
    best, best_val = chosen["fold"], chosen["val_accuracy"]
    sides = {out / "saved_model/export_test/1/assets.extra/metadata.json": "float32",
             out / "onnx/model.json": "float32", out / "onnx/model_mel.json": "float32"}
    sides.update({out / f"tflite/model_{p}.json": p for p in PRECISIONS})
    for path, precision in sides.items():
        meta = json.loads(path.read_text())
        assert meta["class_names"] == classes and meta["num_classes"] == len(classes)
        assert meta["sample_rate"] == 22050 and meta["crop_samples"] == CROP
        assert meta["precision"] == precision
        fe = meta["frontend"]
        assert (fe["n_fft"], fe["win_length"], fe["hop_length"], fe["n_mels"], fe["f_max"]) == (2048, 512, 256, 48, 11025.0)
        assert fe["dft_precision"] == ("float64" if "saved_model" in str(path) else "float32")
        assert meta["model"]["channels"] == 32 and meta["model"]["ccs"]["stop"] == 16
        training = meta["training"]
        assert training["recipe"] == "export_test" and training["seed"] == 0 and training["exported_fold"] == best
        assert training["dataset"] == "folder" and training["split"] == "kfold" and training["folds"] == [1, 2]
        assert meta["metrics"]["fold"]["val_accuracy"] == best_val  # the fold with the best validation accuracy
        assert meta["keras_mgc_version"] and meta["created"].endswith("Z")
        created = dt.datetime.fromisoformat(meta["created"].replace("Z", "+00:00"))
        assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 3600
        assert meta["outputs"]["probabilities"]["shape"] == ["batch", len(classes)]
        assert meta["verification"]["passed"] is True
    tfl = json.loads((out / "tflite/model_float32.json").read_text())
    assert tfl["input"]["name"] == "waveform" and set(tfl["entry_points"]) == {"serving_default", "classify_mel"}
    assert json.loads((out / "onnx/model_mel.json").read_text())["input"]["name"] == "mel"


def test_report_numbers_meet_their_thresholds(out, export_result):
    report = export_result["report"]
    arts = {a["name"]: a for a in report["artifacts"]}
    assert set(arts) == {"saved_model/export_test/1", "onnx/model.onnx", "onnx/model_mel.onnx",
                         *(f"tflite/model_{p}.tflite" for p in PRECISIONS),
                         *(f"tflite/model_task_{p}.tflite" for p in TASK_PRECISIONS)}
    minimum = report["thresholds"]["min_top1_agreement"]
    for name, art in arts.items():
        assert art["passed"] and art["error"] is None, (name, art["failures"], art["error"])
        assert art["size_bytes"] > 100_000
        for entry, stats in art["entries"].items():
            # whole clips (task models: each clip's consecutive 2.01 s windows) + crops
            assert stats["n"] == (9 if entry != "window" else stats["by_input"]["whole"]["n"]) + 18
            assert entry != "window" or stats["by_input"]["whole"]["n"] >= 9 * 2
            assert stats["top1_agreement"] >= minimum[art["precision"]]
            if art["precision"] == "float32":
                assert stats["max_abs_diff"] <= 1e-4 and stats["top1_agreement"] == 1.0
        assert art["latency_ms"]["1"] > 0 and art["latency_ms"]["2"] > 0
    # float64 DFT in the SavedModel: the same graph as Keras.
    assert arts["saved_model/export_test/1"]["entries"]["waveform"]["max_abs_diff"] < 1e-6
    # The reference's own outputs are far from uniform, so top-1 comparisons mean something.
    md = (out / "report.md").read_text()
    assert md.count("| PASS |") == 9 and "latency 30 s, 1 thread (ms)" in md
    for p in TASK_PRECISIONS:
        assert set(arts[f"tflite/model_task_{p}.tflite"]["entries"]) == {"window"}


def test_task_models_have_fixed_window_one_output_and_metadata(out, export_result, ref, clips):
    """What MediaPipe's AudioClassifier needs (tests/test_mediapipe.py runs it); our tagger runs them too."""
    from keras_mgc.export.tflite import non_builtin_ops, tensor_types
    from keras_mgc.export.tflite_metadata import read
    from keras_mgc.tag import Tagger

    classes = json.loads((export_result["run"] / "classes.json").read_text())
    window = clips["whole"][:CROP][None].astype(np.float32)
    for p in TASK_PRECISIONS:
        path = out / f"tflite/model_task_{p}.tflite"
        data = path.read_bytes()
        assert not non_builtin_ops(data)
        # The fixed input shape must not let the quantiser reach the front end's tables.
        assert not [n for n, t in tensor_types(data).items() if "frontend" in n and t == "INT8"]
        meta = read(data)
        assert meta["name"] == "export_test" and meta["version"] == "1" and meta["labels"] == classes
        assert meta["subgraphs"][0]["inputs"][0]["audio_properties"] == {"sample_rate": 22050, "channels": 1}
        side = json.loads(path.with_suffix(".json").read_text())
        assert side["input"]["shape"] == [1, CROP] and list(side["outputs"]) == ["probabilities"]
        tagger = Tagger(path, threads=1)
        result = tagger.tag(clips["whole"][:CROP], hop=1.0)
        assert result.windows == 1
        expected = keras_probabilities(ref, window)[0]
        tolerance = 1e-4 if p == "float32" else 0.05
        np.testing.assert_allclose(result.window_probabilities[0], expected, atol=tolerance)


def test_task_contract_check_names_what_is_wrong(out, export_result):
    """export.task_model.check_task_contract: the contract's check plus the task model's fixed form."""
    from keras_mgc.export import ExportError
    from keras_mgc.export.task_model import check_task_contract

    n = len(json.loads((export_result["run"] / "classes.json").read_text()))
    data = (out / "tflite/model_task_float32.tflite").read_bytes()
    found = check_task_contract(data, n, CROP)
    assert (found["input_shape"], found["output_shape"], found["labels_file"]) == ([1, CROP], [1, n], "labels.txt")
    with pytest.raises(ExportError, match=rf"task model input has shape signature \[1, {CROP}\], expected fixed "
                                          rf"\[1, {CROP + 1}\]"):
        check_task_contract(data, n, CROP + 1)
    with pytest.raises(ExportError, match=rf'task model: output "probabilities" .* the metadata names {n + 1} classes'):
        check_task_contract(data, n + 1, CROP)
    with pytest.raises(ExportError, match=r"expected only serving_default: waveform -> probabilities \(no embedding"):
        check_task_contract((out / "tflite/model_float32.tflite").read_bytes(), n, CROP)


# --------------------------------------------------------------------------- SavedModel


def test_saved_model_cli_lists_named_signatures(out):
    cli = Path(sys.executable).with_name("saved_model_cli")
    if not cli.exists():
        pytest.skip(f"saved_model_cli not found beside {sys.executable}")
    proc = subprocess.run([str(cli), "show", "--all", "--dir", str(out / "saved_model/export_test/1")],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for line in ("signature_def['serving_default']", "signature_def['classify_mel']", "inputs['waveform']",
                 "inputs['mel']", "outputs['probabilities']", "outputs['top_classes']", "outputs['top_scores']",
                 "outputs['embedding']", "Method name is: tensorflow/serving/predict"):
        assert line in text
    assert "args_0" not in text and "output_0" not in text
    wave = text.split("signature_def['serving_default']")[1]
    assert "dtype: DT_STRING" in wave.split("outputs['top_classes']")[1].split("outputs[")[0]
    assert "shape: (-1, -1)" in wave.split("inputs['waveform']")[1].split("outputs[")[0]


def test_saved_model_equals_keras_and_names_the_top_classes(out, ref, clips):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(out / "saved_model/export_test/1"))
    classes = ref["src"].class_names
    for x in (clips["whole"][None], np.stack([clips["short"][:CROP], clips["whole"][5000 : 5000 + CROP]])):
        got = loaded.signatures["serving_default"](waveform=tf.constant(x))
        want = keras_probabilities(ref, x)
        np.testing.assert_allclose(got["probabilities"].numpy(), want, atol=1e-4)
        top = [[b.decode() for b in row] for row in got["top_classes"].numpy()]
        order = np.argsort(-want, axis=-1)[:, :3]
        assert top == [[classes[i] for i in row] for row in order]
        np.testing.assert_allclose(got["top_scores"].numpy(), np.take_along_axis(want, order, -1), atol=1e-4)
    mel = ref["models"].log_mel(clips["whole"][None])
    got = loaded.signatures["classify_mel"](mel=tf.constant(mel))
    np.testing.assert_allclose(got["probabilities"].numpy(), keras_probabilities(ref, mel, "mel"), atol=1e-4)
    # The mel entry point and the waveform entry point agree on the same audio.
    np.testing.assert_allclose(got["probabilities"].numpy(), keras_probabilities(ref, clips["whole"][None]), atol=1e-4)


# --------------------------------------------------------------------------- TFLite


@pytest.mark.parametrize("precision", PRECISIONS)
def test_tflite_contract_builtins_only_and_resizable(out, ref, clips, precision):
    from ai_edge_litert.interpreter import Interpreter

    from keras_mgc.export.tflite import non_builtin_ops, op_counts

    data = (out / f"tflite/model_{precision}.tflite").read_bytes()
    assert non_builtin_ops(data) == []  # no Flex (Select TF) ops
    ops = op_counts(data)
    assert ops["CONV_2D"] > 0 and not any(op.startswith("CUSTOM") for op in ops)
    interpreter = Interpreter(model_content=data, num_threads=1)
    assert interpreter.get_signature_list() == {
        "classify_mel": {"inputs": ["mel"], "outputs": ["embedding", "probabilities"]},
        "serving_default": {"inputs": ["waveform"], "outputs": ["embedding", "probabilities"]},
    }
    dtypes = {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    if precision == "float16":
        assert "float16" in dtypes
    elif precision.endswith("int8"):
        assert "int8" in dtypes  # really quantised, not a float model under another name
    else:
        assert dtypes.isdisjoint({"int8", "float16"})
    runner = interpreter.get_signature_runner("serving_default")
    tolerance = {"float32": 1e-4, "float16": 2e-3, "dynamic_int8": 0.05, "int8": 0.1}[precision]
    for x in (np.stack([clips["short"][:CROP], clips["whole"][:CROP]]), clips["whole"][None]):  # resized each call
        got = runner(waveform=x.astype(np.float32))
        want = keras_probabilities(ref, x)
        assert got["probabilities"].shape == want.shape
        assert got["embedding"].shape == (len(x), ref["models"].embedding_size)
        np.testing.assert_allclose(got["probabilities"].sum(-1), 1.0, atol=1e-5)
        assert np.abs(got["probabilities"] - want).max() <= tolerance
    mel = ref["models"].log_mel(clips["short"][None])
    got = interpreter.get_signature_runner("classify_mel")(mel=mel)
    assert np.abs(got["probabilities"] - keras_probabilities(ref, mel, "mel")).max() <= tolerance


def test_int8_keeps_front_end_pooling_and_head_in_float(out):
    from keras_mgc.export.tflite import tensor_types

    types = tensor_types((out / "tflite/model_int8.tflite").read_bytes())

    def kinds(scope: str) -> set[str]:
        return {t for name, t in types.items() if f"/{scope}_1/" in name or f"/{scope}/" in name}

    assert kinds("frontend") and "INT8" not in kinds("frontend")  # log-mel stays float
    assert kinds("pooling") and "INT8" not in kinds("pooling")  # attentive pooling stays float
    assert kinds("head") and "INT8" not in kinds("head")
    assert "INT8" in kinds("sub_bands")  # the convolutions are int8


# --------------------------------------------------------------------------- ONNX


def test_onnx_equals_keras(out, ref, clips):
    import onnx
    import onnxruntime as ort

    for name, entry, input_name in (("model.onnx", "waveform", "waveform"), ("model_mel.onnx", "mel", "mel")):
        proto = onnx.load(str(out / "onnx" / name))
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
        session = ort.InferenceSession(str(out / "onnx" / name), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [input_name]
        assert sorted(o.name for o in session.get_outputs()) == ["embedding", "probabilities"]
        for audio in (clips["whole"][None], np.stack([clips["short"][:CROP], clips["whole"][:CROP]])):
            x = audio if entry == "waveform" else ref["models"].log_mel(audio)
            (probs,) = session.run(["probabilities"], {input_name: x.astype(np.float32)})
            np.testing.assert_allclose(probs, keras_probabilities(ref, x, entry), atol=1e-4)


# --------------------------------------------------------------------------- choosing what to export


def test_fold_choice_and_clear_source_errors(tmp_path, export_result):
    from keras_mgc.export import ExportError
    from keras_mgc.export.trained_model import from_files, from_run

    run = export_result["run"]
    folds = json.loads((run / "results.json").read_text())["folds"]
    best = max(folds, key=lambda f: (f["val_accuracy"], -f["fold"]))["fold"]
    assert from_run(run).fold == best and from_run(run).checkpoint.name == "best.keras"
    assert from_run(run, fold=1).checkpoint.parent.name == "fold_01"
    assert from_run(run, fold=2).checkpoint.parent.name == "fold_02"
    with pytest.raises(ExportError, match="fold 7 has no checkpoint"):
        from_run(run, fold=7)
    with pytest.raises(ExportError, match="run directory not found"):
        from_run(tmp_path / "nope")
    (tmp_path / "classes.json").write_text('["rock", "rock"]')
    with pytest.raises(ExportError, match="duplicate class names"):
        from_files(run / "fold_01/best.keras", run / "recipe.yaml", tmp_path / "classes.json")
    src = from_files(run / "fold_01/best.keras", run / "recipe.yaml", run / "classes.json")
    assert src.crop_samples == CROP and src.fold is None


def test_cli_usage_errors_exit_2_with_one_message(tmp_path, capsys):
    from keras_mgc.export.cli import main

    assert main(["--run", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"export: error: run directory not found: {tmp_path / 'missing'}"]
    assert main(["--model", "x.keras"]) == 2
    assert "--model needs --recipe and --classes" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_bad_options_fail_before_anything_is_loaded(tmp_path):
    """Option errors come first: the source below has no clips, checkpoint or recipe to load."""
    import re
    from types import SimpleNamespace

    from keras_mgc.export import ExportError
    from keras_mgc.export.run import ExportOptions, run_export

    source = SimpleNamespace(crop_samples=CROP)
    for options, message in [({"formats": ("coreml",)}, "unknown format(s) ['coreml']"),
                             ({"tflite_precisions": ("int4",)}, "unknown TFLite precision(s) ['int4']"),
                             ({"version": 0}, "--version must be a positive integer"),
                             ({"task_precisions": ("int8",)},
                              "task models exist for float32, dynamic_int8, not ['int8']")]:
        with pytest.raises(ExportError, match=re.escape(message)):
            run_export(ExportOptions(source=source, out=tmp_path / "out", **options), log=lambda msg: None)
    assert not list(tmp_path.iterdir())
