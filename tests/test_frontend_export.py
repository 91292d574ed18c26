"""The front end converts to TFLite builtins and to ONNX and gives the same numbers there."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_mgc.frontend import LogMelSpectrogram


def _frontend_function(precision: str, spectrum: str = "matmul") -> tf.types.experimental.ConcreteFunction:
    layer = LogMelSpectrogram(dft_precision=precision, spectrum=spectrum)
    fn = tf.function(lambda w: layer(w), autograph=False)
    return layer, fn.get_concrete_function(tf.TensorSpec((1, None), tf.float32, name="waveform"))


@pytest.mark.parametrize("spectrum", ["matmul", "fft"])
def test_float32_frontend_converts_to_tflite_builtins(spectrum):
    """Both spectrum paths run on builtins (the FFT as RFFT2D); the artifacts use the faster matmul."""
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")
    from keras_mgc.export.tflite import non_builtin_ops, op_counts

    layer, concrete = _frontend_function("float32", spectrum)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], layer)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops allowed
    flatbuffer = converter.convert()
    assert not non_builtin_ops(flatbuffer)
    assert ("RFFT2D" in op_counts(flatbuffer)) == (spectrum == "fft")
    interpreter = interpreter_mod.Interpreter(model_content=flatbuffer)
    audio = (np.random.default_rng(0).standard_normal((1, 30000)) * 0.1).astype("float32")
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], audio.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], audio)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, np.asarray(layer(audio)), atol=1e-4)


def test_frontend_converts_to_onnx():
    tf2onnx = pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    layer, concrete = _frontend_function("float32", "matmul")
    spec = (tf.TensorSpec((1, None), tf.float32, name="waveform"),)
    proto, _ = tf2onnx.convert.from_function(
        tf.function(lambda w: layer(w), autograph=False), input_signature=spec, opset=17
    )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    audio = (np.random.default_rng(1).standard_normal((1, 30000)) * 0.1).astype("float32")
    (out,) = session.run(None, {session.get_inputs()[0].name: audio})
    np.testing.assert_allclose(out, np.asarray(layer(audio)), atol=1e-4)
