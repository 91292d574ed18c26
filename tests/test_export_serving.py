"""TF Serving clients (REST and gRPC) against the exported SavedModel, over real sockets.

No TensorFlow Serving binary or Docker engine runs on these machines (BUILD_NOTES.md, "Design facts"):
`tests.serving_emulator.ModelServer` loads the SavedModel in-process and answers REST and
gRPC the way Serving does, so the request/response code is exercised end to end. The gRPC
protos come from `tensorflow-serving-api`, installed with --no-deps beside tensorflow-cpu.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_export import CROP, exported_run, keras_probabilities, reference


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory, shared_data):
    result = exported_run(tmp_path_factory, shared_data / "gtzan-mini")
    if result["report"] is None:
        pytest.fail(f"the export failed:\n{result['proc'].stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def server(export_dir):
    from tests.serving_emulator import ModelServer

    return ModelServer(export_dir["out"] / "saved_model")


@pytest.fixture(scope="session")
def ref(export_dir):
    return reference(export_dir["run"])


@pytest.fixture(scope="session")
def audio(shared_data):
    from keras_mgc.audio import load_audio

    return load_audio(shared_data / "gtzan-mini" / "country" / "country.00000.wav")


@pytest.fixture(scope="session")
def rest_url(server):
    httpd, url = server.serve_rest()
    yield url
    httpd.shutdown()


def _grpc():
    return pytest.importorskip(
        "tensorflow_serving.apis.prediction_service_pb2_grpc",
        reason="tensorflow-serving-api is not installed (pip install --no-deps tensorflow-serving-api==2.21.0)",
    )


@pytest.fixture(scope="session")
def grpc_target(server):
    _grpc()
    grpc_server, target = server.serve_grpc()
    yield target
    grpc_server.stop(None)


def test_tta_crops_make_a_fixed_shape_batch(audio):
    """The client's batch is the pipeline's TTA (keras_mgc.windows): a short clip is wrap-padded, as in evaluation."""
    from keras_mgc.export.serving_client import tta_crops

    batch = tta_crops(audio, CROP, 16)
    assert batch.shape == (16, CROP) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], audio[:CROP])
    np.testing.assert_array_equal(batch[-1], audio[len(audio) - CROP :])
    short = tta_crops(audio[:100], CROP)
    assert short.shape == (16, CROP)
    np.testing.assert_array_equal(short[3], np.resize(audio[:100], CROP))


def test_rest_request_format_is_tf_servings():
    from keras_mgc.export.serving_client import parse_rest_response, predict_url, rest_request

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert rest_request(x) == {"signature_name": "serving_default",
                               "instances": [{"waveform": [0.0, 1.0, 2.0]}, {"waveform": [3.0, 4.0, 5.0]}]}
    assert rest_request({"mel": x[None]}, "classify_mel", row_format=False)["inputs"]["mel"] == [x.tolist()]
    assert predict_url("http://h:8501/", "m", 3) == "http://h:8501/v1/models/m/versions/3:predict"
    parsed = parse_rest_response({"predictions": [{"p": [0.5, 0.5], "top_classes": ["a"]}]})
    assert parsed["p"].dtype == np.float32 and parsed["top_classes"].tolist() == [["a"]]


@pytest.mark.parametrize("row_format", [True, False], ids=["instances", "inputs"])
def test_rest_round_trip_equals_keras(rest_url, ref, audio, row_format):
    from keras_mgc.export.serving_client import rest_predict, tta_crops

    batch = tta_crops(audio, CROP, 4)
    out = rest_predict(rest_url, "export_test", {"waveform": batch}, row_format=row_format)
    want = keras_probabilities(ref, batch)
    np.testing.assert_allclose(out["probabilities"], want, atol=1e-4)
    classes = ref["src"].class_names
    assert out["top_classes"].tolist() == [[classes[i] for i in row] for row in np.argsort(-want, -1)[:, :3]]
    assert out["embedding"].shape == (4, ref["models"].embedding_size)
    mel = ref["models"].log_mel(audio[None, : 10 * 22050])
    out = rest_predict(rest_url, "export_test", mel, signature_name="classify_mel", version=1, row_format=row_format)
    np.testing.assert_allclose(out["probabilities"], keras_probabilities(ref, mel, "mel"), atol=1e-4)


def test_rest_errors_are_reported_like_serving(rest_url, server, audio):
    from keras_mgc.export.serving_client import ServingError, rest_predict

    with pytest.raises(ServingError, match="HTTP 404"):
        rest_predict(rest_url, "no_such_model", audio[None, :CROP])
    with pytest.raises(ServingError, match='HTTP 400: Serving signature key "nope" not found'):
        rest_predict(rest_url, "export_test", audio[None, :CROP], signature_name="nope")
    ragged = json.dumps({"instances": [{"waveform": [0.0] * CROP}, {"waveform": [0.0] * (CROP + 1)}]}).encode()
    status, body = server.handle_rest("POST", "/v1/models/export_test:predict", ragged)
    assert status == 400 and "same shape" in body["error"]
    status, body = server.handle_rest("GET", "/v1/models/export_test", b"")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"


def test_grpc_request_and_response_protos(audio):
    _grpc()
    import tensorflow as tf

    from keras_mgc.export.serving_client import grpc_request

    request = grpc_request({"waveform": audio[None, :CROP]}, "export_test", version=1, output_filter=["probabilities"])
    assert request.model_spec.name == "export_test" and request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 1 and list(request.output_filter) == ["probabilities"]
    tensor = request.inputs["waveform"]
    assert tensor.dtype == tf.float32.as_datatype_enum and [d.size for d in tensor.tensor_shape.dim] == [1, CROP]
    np.testing.assert_array_equal(tf.make_ndarray(tensor), audio[None, :CROP])


def test_grpc_round_trip_equals_keras(grpc_target, ref, audio):
    from keras_mgc.export.serving_client import grpc_predict, tta_crops

    batch = tta_crops(audio, CROP, 16)
    out = grpc_predict(grpc_target, "export_test", {"waveform": batch})
    want = keras_probabilities(ref, batch)
    np.testing.assert_allclose(out["probabilities"], want, atol=1e-4)
    assert out["top_classes"].shape == (16, 3) and isinstance(out["top_classes"][0, 0], str)
    whole = grpc_predict(grpc_target, "export_test", audio[None], output_filter=["probabilities", "top_classes"])
    assert set(whole) == {"probabilities", "top_classes"}
    np.testing.assert_allclose(whole["probabilities"], keras_probabilities(ref, audio[None]), atol=1e-4)


def test_grpc_errors_carry_serving_status_codes(grpc_target, audio):
    from keras_mgc.export.serving_client import ServingError, grpc_predict

    with pytest.raises(ServingError, match="NOT_FOUND"):
        grpc_predict(grpc_target, "export_test", audio[None, :CROP], version=9)
    with pytest.raises(ServingError, match="INVALID_ARGUMENT: input tensor alias not found"):
        grpc_predict(grpc_target, "export_test", {"audio": audio[None, :CROP]})


def test_models_config_and_batching_files(export_dir):
    root = export_dir["out"] / "saved_model"
    text = (root / "models.config").read_text()
    try:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError:
        model_server_config_pb2 = None
    if model_server_config_pb2 is not None:  # the real proto parses it
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
        (model,) = config.model_config_list.config
        assert (model.name, model.base_path, model.model_platform) == ("export_test", "/models/export_test", "tensorflow")
        assert list(model.model_version_policy.specific.versions) == [1]
    assert 'base_path: "/models/export_test"' in text
    batching = (root / "batching_parameters.txt").read_text()
    for line in ("max_batch_size { value: 32 }", "batch_timeout_micros { value: 5000 }",
                 "pad_variable_length_inputs: false"):
        assert line in batching
    docker = export_dir["report"]["serving"]["docker_run"]
    assert docker.startswith("docker run ") and "tensorflow/serving" in docker
    for flag in ("--model_config_file=/models/models.config", "--enable_batching=true",
                 "--batching_parameters_file=/models/batching_parameters.txt", "-p 8501:8501", "-p 8500:8500",
                 f"source={root.absolute()},target=/models"):
        assert flag in docker
