"""TF Serving's Predict API (REST and gRPC) over the SavedModel loaded in-process.

No TensorFlow Serving binary can be had on the project's machines (BUILD_NOTES.md, "SavedModel and Serving"), so
the REST and gRPC client code is tested against this stand-in: it reads ``models.config``,
loads each model's version with `tf.saved_model.load`, feeds the request's tensors to the
named signature and builds the response the way Serving does (row format -> "predictions",
columnar -> "outputs", strings as JSON strings; PredictResponse with TensorProtos and the
resolved model_spec). It answers on real sockets (`serve_rest`, `serve_grpc`), so the clients
are exercised end to end. It is a test double, not a server for production: it has no
batching, no model reloading and no metadata API.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from keras_mgc.contract import SIGNATURE


class RequestError(ValueError):
    """A bad request; `code` is the gRPC status name (INVALID_ARGUMENT, NOT_FOUND)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def read_models_config(path: Path) -> list[dict[str, Any]]:
    """(name, base_path, versions) of each model in a ModelServerConfig text proto."""
    text = Path(path).read_text()
    try:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
        return [{"name": c.name, "base_path": c.base_path,
                 "versions": list(c.model_version_policy.specific.versions)}
                for c in config.model_config_list.config]
    except ImportError:  # no tensorflow-serving-api: a small parser for the files we write
        models = []
        for block in re.findall(r"config\s*\{(.*?)\n  \}", text, re.S):
            name = re.search(r'name:\s*"([^"]+)"', block).group(1)
            base = re.search(r'base_path:\s*"([^"]+)"', block).group(1)
            versions = [int(v) for v in re.findall(r"versions:\s*(\d+)", block)]
            models.append({"name": name, "base_path": base, "versions": versions})
        return models


class ModelServer:
    """SavedModels by name and version, answering Predict requests."""

    def __init__(self, saved_model_root: Path, container_root: str = "/models") -> None:
        import tensorflow as tf

        self.root = Path(saved_model_root)
        self.models: dict[str, dict[int, Any]] = {}
        for model in read_models_config(self.root / "models.config"):
            base = model["base_path"]
            local = self.root / base[len(container_root):].lstrip("/") if base.startswith(container_root) \
                else Path(base)
            versions = model["versions"] or sorted(int(p.name) for p in local.iterdir() if p.name.isdigit())[-1:]
            self.models[model["name"]] = {v: tf.saved_model.load(str(local / str(v))) for v in versions}

    # ------------------------------------------------------------------ core
    def predict(self, model_name: str, inputs: dict[str, np.ndarray], signature_name: str = "",
                version: int | None = None, output_filter: list[str] | None = None
                ) -> tuple[dict[str, np.ndarray], int, str]:
        """Outputs, the version used and the signature used (Serving's defaults applied)."""
        import tensorflow as tf

        if model_name not in self.models:
            raise RequestError("NOT_FOUND", f"Servable not found for request: Latest({model_name})")
        versions = self.models[model_name]
        if version is None:
            version = max(versions)
        if version not in versions:
            raise RequestError("NOT_FOUND", f"Servable not found for request: Specific({model_name}, {version})")
        signature_name = signature_name or SIGNATURE
        signatures = versions[version].signatures
        if signature_name not in signatures:
            raise RequestError("INVALID_ARGUMENT", f'Serving signature key "{signature_name}" not found.')
        fn = signatures[signature_name]
        expected = fn.structured_input_signature[1]
        unknown = set(inputs) - set(expected)
        if unknown:
            raise RequestError("INVALID_ARGUMENT",
                               f"input tensor alias not found in signature: {sorted(unknown)[0]}. Inputs expected "
                               f"to be in the set {{{','.join(sorted(expected))}}}.")
        missing = set(expected) - set(inputs)
        if missing:
            raise RequestError("INVALID_ARGUMENT", f"Missing input tensor alias(es): {', '.join(sorted(missing))}")
        feed = {}
        for name, spec in expected.items():
            value = np.asarray(inputs[name])
            if value.dtype == object or not spec.shape.is_compatible_with(value.shape):
                raise RequestError("INVALID_ARGUMENT",
                                   f"input '{name}' has shape {list(value.shape)}, the signature wants "
                                   f"{spec.shape.as_list()}")
            feed[name] = tf.constant(value, dtype=spec.dtype)
        outputs = {k: v.numpy() for k, v in fn(**feed).items()}
        if output_filter:
            bad = set(output_filter) - set(outputs)
            if bad:
                raise RequestError("INVALID_ARGUMENT", f"output tensor alias not found in signature: {sorted(bad)[0]}")
            outputs = {k: outputs[k] for k in output_filter}
        return outputs, version, signature_name

    # ------------------------------------------------------------------ REST
    def handle_rest(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for one REST call."""
        match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+))?(:predict)?", path)
        if not match:
            return 404, {"error": f"Malformed request: {method} {path}"}
        name, version = match.group(1), int(match.group(2)) if match.group(2) else None
        try:
            if not match.group(3):
                if method != "GET" or name not in self.models:
                    raise RequestError("NOT_FOUND", f"Could not find any versions of model {name}")
                chosen = [version] if version is not None else sorted(self.models[name])
                return 200, {"model_version_status": [
                    {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                    for v in chosen]}
            if method != "POST":
                raise RequestError("INVALID_ARGUMENT", f"{method} is not allowed for :predict")
            try:
                request = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RequestError("INVALID_ARGUMENT", f"JSON Parse error: {exc}") from None
            if not isinstance(request, dict):
                raise RequestError("INVALID_ARGUMENT", "JSON Value: not an object")
            signature_name = request.get("signature_name", SIGNATURE)
            inputs, row_format = self._rest_inputs(name, version, signature_name, request)
            outputs, _, _ = self.predict(name, inputs, signature_name, version)
        except RequestError as exc:
            return (404 if exc.code == "NOT_FOUND" else 400), {"error": str(exc)}
        return 200, self._rest_outputs(outputs, row_format)

    def _rest_inputs(self, name: str, version: int | None, signature_name: str, request: dict[str, Any]
                     ) -> tuple[dict[str, np.ndarray], bool]:
        if ("instances" in request) == ("inputs" in request):
            raise RequestError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key" if "instances" not in request
                               else "Only one of 'inputs' or 'instances' may be given")
        if "instances" in request:
            rows = request["instances"]
            if not isinstance(rows, list) or not rows:
                raise RequestError("INVALID_ARGUMENT", "'instances' must be a non-empty list")
            if isinstance(rows[0], dict):
                names = set(rows[0])
                if any(not isinstance(r, dict) or set(r) != names for r in rows):
                    raise RequestError("INVALID_ARGUMENT", "instances must all name the same inputs")
                columns = {k: [r[k] for r in rows] for k in names}
            else:
                columns = {self._only_input(name, version, signature_name): rows}
            row_format = True
        else:
            given = request["inputs"]
            columns = given if isinstance(given, dict) else {self._only_input(name, version, signature_name): given}
            row_format = False
        inputs = {}
        for key, value in columns.items():
            try:
                inputs[key] = np.asarray(value, dtype=np.float32)
            except ValueError:
                raise RequestError("INVALID_ARGUMENT",
                                   f"input '{key}': instances have different shapes; all rows of a batch "
                                   "must have the same shape") from None
        return inputs, row_format

    def _only_input(self, name: str, version: int | None, signature_name: str) -> str:
        versions = self.models.get(name)
        if not versions:
            raise RequestError("NOT_FOUND", f"Servable not found for request: Latest({name})")
        fn = versions[version if version is not None else max(versions)].signatures.get(signature_name)
        if fn is None:
            raise RequestError("INVALID_ARGUMENT", f'Serving signature key "{signature_name}" not found.')
        names = list(fn.structured_input_signature[1])
        if len(names) != 1:
            raise RequestError("INVALID_ARGUMENT", "unnamed inputs need a signature with exactly one input")
        return names[0]

    @staticmethod
    def _rest_outputs(outputs: dict[str, np.ndarray], row_format: bool) -> dict[str, Any]:
        def plain(array: np.ndarray) -> Any:
            if array.dtype == object or array.dtype.kind == "S":
                return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array).tolist()
            return array.tolist()

        if not row_format:
            cols = {k: plain(v) for k, v in outputs.items()}
            return {"outputs": cols if len(cols) > 1 else next(iter(cols.values()))}
        n = len(next(iter(outputs.values())))
        rows = [{k: plain(v[i]) if isinstance(v[i], np.ndarray) else plain(np.asarray(v[i])) for k, v in
                 outputs.items()} for i in range(n)]
        if len(outputs) == 1:
            rows = [next(iter(r.values())) for r in rows]
        return {"predictions": rows}

    # ------------------------------------------------------------------ gRPC
    def handle_grpc(self, request: Any) -> Any:
        """PredictResponse for a PredictRequest (raises RequestError)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        version = request.model_spec.version.value if request.model_spec.HasField("version") else None
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        outputs, used_version, signature = self.predict(request.model_spec.name, inputs,
                                                        request.model_spec.signature_name, version,
                                                        list(request.output_filter))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = used_version
        response.model_spec.signature_name = signature
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    # ------------------------------------------------------------------ sockets
    def serve_rest(self, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
        """Start a REST server in a thread; returns (server, base URL). Call server.shutdown() to stop."""
        model_server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                status, body = model_server.handle_rest(method, self.path, self.rfile.read(length))
                data = json.dumps(body).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                self._answer("POST")

            def do_GET(self) -> None:  # noqa: N802
                self._answer("GET")

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://{host}:{server.server_address[1]}"

    def serve_grpc(self, host: str = "127.0.0.1", port: int = 0) -> tuple[Any, str]:
        """Start a gRPC PredictionService; returns (server, "host:port"). Call server.stop(None) to stop."""
        from concurrent import futures

        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        model_server = self

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC API)
                try:
                    return model_server.handle_grpc(request)
                except RequestError as exc:
                    context.abort(getattr(grpc.StatusCode, exc.code), str(exc))

        options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
        bound = server.add_insecure_port(f"{host}:{port}")
        server.start()
        return server, f"{host}:{bound}"
