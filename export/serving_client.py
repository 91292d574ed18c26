"""Clients for the SavedModel under TensorFlow Serving: REST (JSON) and gRPC (PredictRequest).

REST (TF Serving's REST API, https://www.tensorflow.org/tfx/serving/api_rest)::

    POST http://HOST:8501/v1/models/<name>[/versions/<v>]:predict
    {"signature_name": "serving_default", "instances": [{"waveform": [...]}, ...]}   # row format
    {"signature_name": "serving_default", "inputs": {"waveform": [[...], ...]}}     # columnar
    -> {"predictions": [{"probabilities": [...], "top_classes": [...], ...}, ...]}  # row format
    -> {"outputs": {"probabilities": [[...]], ...}}                                 # columnar

gRPC: ``tensorflow.serving.PredictionService/Predict`` with a PredictRequest (model_spec name,
version, signature_name; inputs as TensorProtos) -> PredictResponse (outputs as TensorProtos).
The protos come from ``tensorflow-serving-api``, installed with ``--no-deps`` beside
tensorflow-cpu (it pins the full ``tensorflow`` wheel, but its modules only need TF's protos
and grpcio); the gRPC helpers import it lazily.

Audio is large in JSON (30 s = 661,500 numbers, ~8 MB): prefer gRPC (raw float32 bytes), or
send crops. Every row of one request (and of one server-side batch) must have the same length:
`tta_crops` cuts a clip into the paper's 16 evenly spaced crops, a fixed [16, 44356] batch whose
summed probabilities give the paper's test-time-augmentation decision.

Example::

    batch = tta_crops(load_audio("song.mp3"))  # keras_mgc.windows.tta_crops, [16, 44356]
    out = rest_predict("http://localhost:8501", "gtzan_cv", {"waveform": batch})
    genre = class_names[out["probabilities"].sum(0).argmax()]
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from keras_mgc.contract import SIGNATURE, SIGNATURES, WAVEFORM_INPUT
from keras_mgc.windows import tta_crops  # re-exported: the client's 16-crop batch (wrap-pads short clips)

__all__ = ["tta_crops", "ServingError", "predict_url", "rest_request", "parse_rest_response", "rest_predict", "grpc_request",
           "parse_grpc_response", "grpc_predict"]



class ServingError(RuntimeError):
    """The server answered with an error (HTTP status / gRPC code and its message)."""


# --------------------------------------------------------------------------- REST


def predict_url(base: str, model_name: str, version: int | None = None) -> str:
    """http://host:8501/v1/models/<name>[/versions/<v>]:predict"""
    base = base.rstrip("/")
    path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version is not None else "")
    return f"{base}{path}:predict"


def _as_inputs(inputs: dict[str, np.ndarray] | np.ndarray, signature_name: str) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict):
        return {k: np.asarray(v, np.float32) for k, v in inputs.items()}
    return {SIGNATURES.get(signature_name, WAVEFORM_INPUT): np.asarray(inputs, np.float32)}


def rest_request(inputs: dict[str, np.ndarray] | np.ndarray, signature_name: str = SIGNATURE,
                 row_format: bool = True) -> dict[str, Any]:
    """The JSON body of a predict request. Row format: one object per example ("instances")."""
    tensors = _as_inputs(inputs, signature_name)
    sizes = {len(v) for v in tensors.values()}
    if len(sizes) != 1:
        raise ValueError(f"all inputs need the same batch size, got {sorted(sizes)}")
    if row_format:
        n = sizes.pop()
        instances = [{name: value[i].tolist() for name, value in tensors.items()} for i in range(n)]
        return {"signature_name": signature_name, "instances": instances}
    return {"signature_name": signature_name, "inputs": {k: v.tolist() for k, v in tensors.items()}}


def _decode_value(value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind in "US":
        return array.astype(object)
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def parse_rest_response(body: dict[str, Any]) -> dict[str, np.ndarray]:
    """Named output arrays from a predict response in either format."""
    if "error" in body:
        raise ServingError(str(body["error"]))
    if "predictions" in body:
        rows = body["predictions"]
        if rows and isinstance(rows[0], dict):
            return {k: _decode_value([r[k] for r in rows]) for k in rows[0]}
        return {"output": _decode_value(rows)}  # a signature with one unnamed output
    if "outputs" in body:
        outputs = body["outputs"]
        if isinstance(outputs, dict):
            return {k: _decode_value(v) for k, v in outputs.items()}
        return {"output": _decode_value(outputs)}
    raise ServingError(f"not a predict response: keys {sorted(body)}")


def rest_predict(base: str, model_name: str, inputs: dict[str, np.ndarray] | np.ndarray,
                 signature_name: str = SIGNATURE, version: int | None = None, row_format: bool = True,
                 timeout: float = 60.0) -> dict[str, np.ndarray]:
    """POST a predict request to TF Serving's REST API and return the named outputs."""
    body = json.dumps(rest_request(inputs, signature_name, row_format)).encode("utf-8")
    request = urllib.request.Request(predict_url(base, model_name, version), data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except json.JSONDecodeError:
            pass
        raise ServingError(f"HTTP {exc.code}: {detail}") from None
    return parse_rest_response(payload)


# --------------------------------------------------------------------------- gRPC


def grpc_request(inputs: dict[str, np.ndarray] | np.ndarray, model_name: str,
                 signature_name: str = SIGNATURE, version: int | None = None,
                 output_filter: list[str] | None = None) -> Any:
    """A tensorflow.serving.PredictRequest with float32 TensorProtos."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in _as_inputs(inputs, signature_name).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=tf.float32))
    if output_filter:
        request.output_filter.extend(output_filter)
    return request


def parse_grpc_response(response: Any) -> dict[str, np.ndarray]:
    """Named output arrays of a PredictResponse (strings as Python str)."""
    import tensorflow as tf

    out = {}
    for name, proto in response.outputs.items():
        array = tf.make_ndarray(proto)
        if array.dtype == object:
            array = np.vectorize(lambda b: b.decode("utf-8") if isinstance(b, bytes) else b, otypes=[object])(array)
        out[name] = array
    return out


def grpc_predict(target: str, model_name: str, inputs: dict[str, np.ndarray] | np.ndarray,
                 signature_name: str = SIGNATURE, version: int | None = None, timeout: float = 60.0,
                 output_filter: list[str] | None = None) -> dict[str, np.ndarray]:
    """Call PredictionService/Predict on `target` ("host:8500") and return the named outputs."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = grpc_request(inputs, model_name, signature_name, version, output_filter)
    options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise ServingError(f"gRPC {exc.code().name}: {exc.details()}") from None
    return parse_grpc_response(response)
