"""ONNX artifacts through tf2onnx (opset 17): `model.onnx` (waveform) and `model_mel.onnx` (mel).

An ONNX graph has one set of inputs, all required, so the two entry points are two files.
Inputs are named ``waveform`` [batch, samples] / ``mel`` [batch, frames, 48], outputs
``probabilities`` and ``embedding``. The front end uses a float32 DFT: ONNX Runtime ran the
float64 one 3x slower for the same agreement (BUILD_NOTES.md "Export").
"""

from __future__ import annotations

from typing import Any

from keras_mgc.contract import MEL_INPUT, OUTPUTS, WAVEFORM_INPUT
from keras_mgc.export.graphs import ServingModels, probabilities_and_embedding

__all__ = ["OPSET", "ENTRY_FILES", "convert", "describe"]

OPSET = 17
ENTRY_FILES = {WAVEFORM_INPUT: "model.onnx", MEL_INPUT: "model_mel.onnx"}


def convert(models: ServingModels, entry: str, opset: int = OPSET, dft_precision: str = "float32") -> bytes:
    """Serialized ONNX model for one entry point ("waveform" or "mel")."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    if entry == WAVEFORM_INPUT:
        graph = models.waveform(dft_precision, spectrum="matmul")  # tf2onnx 1.17 cannot convert rfft here
        spec = models.input_spec(WAVEFORM_INPUT)
    else:
        graph = models.mel()
        spec = models.input_spec(MEL_INPUT)

    def fn(x: Any) -> dict[str, Any]:
        return probabilities_and_embedding(graph(x, training=False))

    proto, _ = tf2onnx.convert.from_function(tf.function(fn, autograph=False), input_signature=(spec,), opset=opset)
    onnx.checker.check_model(proto)
    inputs = [i.name for i in proto.graph.input]
    outputs = sorted(o.name for o in proto.graph.output)
    if inputs != [spec.name] or outputs != sorted(OUTPUTS):
        raise RuntimeError(f"tf2onnx named the {entry} model's inputs {inputs} and outputs {outputs}")
    return proto.SerializeToString()


def describe(data: bytes) -> dict[str, Any]:
    """Opset, inputs and outputs (with symbolic shapes) of a serialized ONNX model."""
    import onnx

    proto = onnx.load_from_string(data)

    def shape(value: Any) -> list[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {
        "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": {i.name: shape(i) for i in proto.graph.input},
        "outputs": {o.name: shape(o) for o in proto.graph.output},
        "producer": f"{proto.producer_name} {proto.producer_version}",
    }
