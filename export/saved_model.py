"""SavedModel for TensorFlow Serving: `<root>/<model_name>/<version>/`, named signatures.

Signatures (`keras_mgc.contract`; method tensorflow/serving/predict; inputs and outputs named,
never args_0/output_0):

- ``serving_default``: ``waveform`` float32 [batch, samples] at 22,050 Hz ->
  ``probabilities`` [batch, n_classes], ``top_classes`` string [batch, k] (class names, best
  first), ``top_scores`` [batch, k], ``embedding`` [batch, D];
- ``classify_mel``: ``mel`` float32 [batch, frames, 48] log-mels -> the same outputs.

Written with `keras.export.ExportArchive` (an endpoint returning a dict gives named outputs;
measured here: BUILD_NOTES.md, "Design facts"). The front end keeps the Keras model's float64 DFT: TensorFlow runs it
and the SavedModel then equals the Keras model exactly.

Beside the model: ``models.config`` (ModelServerConfig text proto, base_path
``/models/<name>`` as mounted by `docker_command`) and ``batching_parameters.txt``.
Batching merges requests of one signature into one batch, and TF Serving can only merge
tensors whose shapes agree beyond the batch dimension; padding variable-length inputs
(pad_variable_length_inputs) pads with the first element, which would change the mel mean
and the attention pooling, so it stays off and clients send fixed-length windows (crops)
when batching matters (docs/serving.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from keras_mgc import io as kio
from keras_mgc.contract import MEL_INPUT, MEL_SIGNATURE, SIGNATURE, WAVEFORM_INPUT
from keras_mgc.export.graphs import ServingModels, probabilities_and_embedding

__all__ = ["BATCHING", "write_saved_model", "models_config", "batching_parameters", "SERVING_IMAGE", "docker_command",
           "write_server_files", "signature_summary"]

#: Server-side batching: up to 32 clips per batch, wait at most 5 ms to fill one.
BATCHING = {
    "max_batch_size": 32,
    "batch_timeout_micros": 5000,
    "max_enqueued_batches": 100,
    "num_batch_threads": 4,
}


def _outputs(model: Any, x: Any, class_names: Any, k: int) -> dict[str, Any]:
    import tensorflow as tf

    out = probabilities_and_embedding(model(x, training=False))
    scores, indices = tf.math.top_k(out["probabilities"], k=k)
    return {"probabilities": out["probabilities"], "top_classes": tf.gather(class_names, indices),
            "top_scores": scores, "embedding": out["embedding"]}


def write_saved_model(models: ServingModels, class_names: list[str], version_dir: Path, top_k: int = 3,
                      dft_precision: str = "float64") -> Path:
    """Write the SavedModel to `version_dir` (built under a temporary name, then renamed)."""
    import keras
    import tensorflow as tf

    k = max(1, min(top_k, len(class_names)))
    wave, mel = models.waveform(dft_precision), models.mel()
    names = tf.constant(class_names)
    archive = keras.export.ExportArchive()
    archive.track(wave)
    archive.track(mel)
    archive.add_endpoint(
        SIGNATURE, lambda waveform: _outputs(wave, waveform, names, k),
        input_signature=[models.input_spec(WAVEFORM_INPUT)],
    )
    archive.add_endpoint(
        MEL_SIGNATURE, lambda mel_: _outputs(mel, mel_, names, k),
        input_signature=[models.input_spec(MEL_INPUT)],
    )
    with kio.atomic_directory(version_dir) as tmp:
        shutil.rmtree(tmp)  # ExportArchive creates the folder itself
        archive.write_out(str(tmp), verbose=False)
    return version_dir


def models_config(model_name: str, version: int, base_path: str | None = None) -> str:
    """ModelServerConfig text proto serving exactly `version` of `model_name`."""
    base_path = base_path or f"/models/{model_name}"
    return (
        "# TensorFlow Serving model config (--model_config_file). base_path is the path INSIDE the\n"
        "# container: docs/serving.md mounts this folder at /models.\n"
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{model_name}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        "    model_version_policy {\n"
        "      specific {\n"
        f"        versions: {version}\n"
        "      }\n"
        "    }\n"
        "  }\n"
        "}\n"
    )


def batching_parameters(params: dict[str, int] | None = None) -> str:
    """BatchingParameters text proto for --batching_parameters_file."""
    params = params or BATCHING
    lines = [
        "# TensorFlow Serving batching (--enable_batching --batching_parameters_file=...).",
        "# Requests are merged only when their tensors agree beyond the batch dimension: send",
        "# fixed-length windows (e.g. the 16 TTA crops of one training crop each) to benefit. pad_variable_length_inputs",
        "# stays false: padding would change the mel mean and the attention pooling.",
    ]
    lines += [f"{key} {{ value: {value} }}" for key, value in params.items()]
    lines.append("pad_variable_length_inputs: false")
    return "\n".join(lines) + "\n"


#: The TF Serving image matching the TensorFlow that exports (2.21; tensorflow-serving-api
#: 2.21.0 is on PyPI, and Serving's images are tagged with the same version numbers).
SERVING_IMAGE = "tensorflow/serving:2.21.0"


def docker_command(saved_model_root: Path | str, image: str = SERVING_IMAGE) -> str:
    """The `docker run` that serves this export (REST on 8501, gRPC on 8500).

    `saved_model_root` is the host folder holding models.config (a Path is made absolute; a
    string is used as given, e.g. '"$PWD"' in a script).
    """
    source = str(saved_model_root.absolute()) if isinstance(saved_model_root, Path) else saved_model_root
    return (
        "docker run --rm -p 8500:8500 -p 8501:8501 "
        f"--mount type=bind,source={source},target=/models,readonly "
        f"{image} "
        "--model_config_file=/models/models.config "
        "--enable_batching=true --batching_parameters_file=/models/batching_parameters.txt"
    )


def write_server_files(root: Path, model_name: str, version: int) -> dict[str, Path]:
    """models.config, batching_parameters.txt and docker_run.sh in the saved_model root."""
    files = {
        "models_config": root / "models.config",
        "batching_parameters": root / "batching_parameters.txt",
        "docker_run": root / "docker_run.sh",
    }
    kio.write_text(files["models_config"], models_config(model_name, version))
    kio.write_text(files["batching_parameters"], batching_parameters())
    script = (
        "#!/bin/sh\n# Serve this export with TensorFlow Serving (REST :8501, gRPC :8500).\n"
        'cd "$(dirname "$0")"\n'
        + docker_command('"$PWD"') + "\n"
    )
    kio.write_text(files["docker_run"], script)
    files["docker_run"].chmod(0o755)
    return files


def signature_summary(version_dir: Path) -> dict[str, Any]:
    """Signature -> inputs/outputs (name, dtype, shape) as recorded in the SavedModel proto."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import dtypes

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(version_dir) / "saved_model.pb").read_bytes())
    out: dict[str, Any] = {}
    for name, sig in proto.meta_graphs[0].signature_def.items():
        if name.startswith("__"):
            continue

        def spec(info: Any) -> dict[str, Any]:
            dims = [d.size for d in info.tensor_shape.dim]
            return {"dtype": dtypes.as_dtype(info.dtype).name, "shape": dims}

        out[name] = {"method": sig.method_name, "inputs": {k: spec(v) for k, v in sig.inputs.items()},
                     "outputs": {k: spec(v) for k, v in sig.outputs.items()}}
    return out
