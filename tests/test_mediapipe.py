"""The task-ready TFLite in MediaPipe Tasks' AudioClassifier, on real music, against our own tagger.

An app developer's path: `model_task_<precision>.tflite` given to
`mediapipe.tasks.python.audio.AudioClassifier` (PyPI mediapipe 1.2.2) in both running modes.
MediaPipe cuts the audio into consecutive windows of the model's input length itself; the
project's tagger (`keras_mgc.tag.Tagger`) on the same windows (window = hop = the crop) must
give the same scores within the export's float32 tolerance (1e-4).

MediaPipe runs in a child process (tests/mediapipe_classify.py): with this venv's Python when
it has mediapipe, else with ``.venv-mediapipe/bin/python`` at the repository root; the tests
skip with the reason when neither has it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_mgc.export.verify import MAX_ABS_DIFF
from tests.tflite_fixtures import CROP, GENRES, SAMPLE_RATE

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("mediapipe_classify.py")
#: Real music: GTZAN clips of four genres (30 s) and the first 30 s of two other recordings.
GTZAN_CLIPS = ["blues/blues.00000.wav", "classical/classical.00000.wav", "metal/metal.00000.wav",
               "reggae/reggae.00000.wav"]
OTHER_MUSIC = ["samba.mp3", "ballroom-waltz-Media-105901.wav"]
SECONDS = 30.0
STREAM_BLOCK = 22050  # 1 s at 22,050 Hz: whole milliseconds, as an app's audio callback gives


def _mediapipe_python() -> str | None:
    if importlib.util.find_spec("mediapipe") is not None:
        return sys.executable
    other = REPO_ROOT / ".venv-mediapipe" / "bin" / "python"
    return str(other) if other.exists() else None


@pytest.fixture(scope="module")
def mediapipe_python() -> str:
    python = _mediapipe_python()
    if python is None:
        pytest.skip("mediapipe is not installed here nor in .venv-mediapipe (pip install mediapipe==1.2.2)")
    return python


@pytest.fixture(scope="module")
def task_models(shared_data, tmp_path_factory) -> dict[str, Path]:
    """The session's real export (tests/test_export.py, shared): general float32 TFLite and both task models."""
    from tests.test_export import TASK_PRECISIONS, exported_run

    result = exported_run(tmp_path_factory, shared_data / "gtzan-mini")
    tflite = Path(result["out"]) / "tflite"
    paths = {"general_float32": tflite / "model_float32.tflite"}
    paths |= {p: tflite / f"model_task_{p}.tflite" for p in TASK_PRECISIONS}
    missing = [str(p) for p in paths.values() if not p.exists()]
    assert not missing, f"the export did not write {missing}:\n{result['proc'].stderr[-4000:]}"
    return paths


@pytest.fixture(scope="module")
def music(shared_data, tmp_path_factory) -> dict[str, np.ndarray]:
    """Real recordings at the model's rate (decoded and resampled by keras_mgc.audio), saved as .npy."""
    from keras_mgc.audio import load_audio

    out = tmp_path_factory.mktemp("music")
    files = [shared_data / "gtzan-mini" / c for c in GTZAN_CLIPS] + [shared_data / "other-music" / c for c in OTHER_MUSIC]
    audio = {}
    for path in files:
        if not path.exists():
            pytest.skip(f"{path} is missing from the shared data")
        samples = load_audio(path, SAMPLE_RATE)[: int(SECONDS * SAMPLE_RATE)].astype(np.float32)
        npy = out / f"{path.stem}.npy"
        np.save(npy, samples)
        audio[str(npy)] = samples
    return audio


def _classify(python: str, model: Path, mode: str, files: list[str]) -> dict[str, list[dict]]:
    proc = subprocess.run([python, str(SCRIPT), "--model", str(model), "--mode", mode, "--sample-rate",
                           str(SAMPLE_RATE), "--block", str(STREAM_BLOCK), *files],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def _full_windows(results: list[dict], n_samples: int) -> np.ndarray:
    """Scores of the windows that lie wholly inside the audio (MediaPipe zero-pads the last one)."""
    n_full = n_samples // CROP
    assert len(results) >= n_full
    for k, result in enumerate(results[:n_full]):
        assert abs(result["timestamp_ms"] - k * CROP * 1000 / SAMPLE_RATE) <= 1.0
    return np.asarray([r["scores"] for r in results[:n_full]], np.float64)


def _tagger_windows(model_path: Path, samples: np.ndarray) -> np.ndarray:
    from keras_mgc.tag import Tagger

    result = Tagger(model_path, threads=1).tag(samples, window=CROP / SAMPLE_RATE, hop=CROP / SAMPLE_RATE)
    n_full = len(samples) // CROP
    np.testing.assert_array_equal(result.window_starts[:n_full], np.arange(n_full) * CROP / SAMPLE_RATE)
    return result.window_probabilities[:n_full].astype(np.float64)


@pytest.mark.parametrize("mode", ["clips", "stream"])
def test_mediapipe_audio_classifier_scores_equal_our_tagger(mediapipe_python, task_models, music, mode):
    n_classes = len(read_labels(task_models["general_float32"]))
    for precision in ("float32", "dynamic_int8"):
        path = task_models[precision]
        found = _classify(mediapipe_python, path, mode, list(music))
        # float32: against the general artifact (resizable, the tagger's usual model);
        # dynamic int8: against the tagger running the same task file (its quantisation is its own).
        reference_model = task_models["general_float32"] if precision == "float32" else path
        for npy, samples in music.items():
            ours = _tagger_windows(reference_model, samples)
            theirs = _full_windows(found[npy], len(samples))
            assert theirs.shape == ours.shape == (len(samples) // CROP, n_classes)
            np.testing.assert_allclose(theirs.sum(axis=1), 1.0, atol=1e-5)
            diff = np.abs(theirs - ours).max()
            assert diff <= MAX_ABS_DIFF, f"{precision} {mode} {Path(npy).stem}: max |dp| {diff:.2e}"
            assert (theirs.argmax(1) == ours.argmax(1)).all()


def read_labels(model: Path) -> list[str]:
    return (model.parent / "labels.txt").read_text().splitlines()


def test_metadata_reads_the_same_with_mediapipes_generated_schema(tmp_path):
    """Our writer and reader against MediaPipe's own generated classes for metadata_schema.fbs."""
    from keras_mgc.export.tflite_metadata import TENSOR_AXIS_LABELS, AudioClassifierMetadata, attach, read
    from tests.tflite_fixtures import build_toy_model

    schema = _mediapipe_schema()
    if schema is None:
        pytest.skip("mediapipe (its metadata_schema_py_generated.py) is not installed in this venv")
    toy = build_toy_model(tmp_path / "toy.tflite", "fixed").read_bytes()
    meta = AudioClassifierMetadata(name="keras_mgc_test", labels=GENRES, sample_rate=SAMPLE_RATE, version="3",
                                   author="someone", license="Apache-2.0",
                                   calibration_lines=["1.0,1.0,0.0"] * len(GENRES), default_score=0.25)
    data = attach(toy, meta)
    ours = read(data)
    assert ours["name"] == "keras_mgc_test" and ours["version"] == "3" and ours["license"] == "Apache-2.0"
    assert ours["author"] == "someone" and ours["min_parser_version"] == "1.3.0"
    (graph,) = ours["subgraphs"]
    assert graph["inputs"][0]["audio_properties"] == {"sample_rate": SAMPLE_RATE, "channels": 1}
    assert graph["outputs"][0]["associated_files"][0] == {"name": "labels.txt", "type": TENSOR_AXIS_LABELS}
    assert graph["outputs"][0]["process_units"] == [
        {"score_calibration": {"score_transformation": "IDENTITY", "default_score": 0.25}}]
    assert ours["labels"] == GENRES and sorted(ours["files"]) == ["labels.txt", "score_calibration.txt"]

    from ai_edge_litert import schema_py_generated as tfl

    model = tfl.Model.GetRootAsModel(data, 0)
    (entry,) = [model.Metadata(i) for i in range(model.MetadataLength())
                if model.Metadata(i).Name() == b"TFLITE_METADATA"]
    buffer = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    theirs = schema.ModelMetadataT.InitFromPackedBuf(buffer, 0)
    assert theirs.name == b"keras_mgc_test" and theirs.minParserVersion == b"1.3.0" and theirs.author == b"someone"
    tensor = theirs.subgraphMetadata[0].inputTensorMetadata[0]
    assert tensor.content.contentPropertiesType == schema.ContentProperties.AudioProperties
    assert (tensor.content.contentProperties.sampleRate, tensor.content.contentProperties.channels) == (SAMPLE_RATE, 1)
    output = theirs.subgraphMetadata[0].outputTensorMetadata[0]
    assert [(f.name, f.type) for f in output.associatedFiles] == [
        (b"labels.txt", schema.AssociatedFileType.TENSOR_AXIS_LABELS),
        (b"score_calibration.txt", schema.AssociatedFileType.TENSOR_AXIS_SCORE_CALIBRATION)]
    (unit,) = output.processUnits
    assert unit.optionsType == schema.ProcessUnitOptions.ScoreCalibrationOptions
    assert unit.options.defaultScore == pytest.approx(0.25)
    # The model itself is untouched: LiteRT loads it and the zip does not disturb it.
    from ai_edge_litert.interpreter import Interpreter

    Interpreter(model_content=data).allocate_tensors()


def _mediapipe_schema():
    """MediaPipe's generated metadata classes (pure Python), imported without MediaPipe's native parts."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "tasks" / "metadata" / "metadata_schema_py_generated.py"
    if not path.exists():
        return None
    module_spec = importlib.util.spec_from_file_location("_mediapipe_metadata_schema", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
