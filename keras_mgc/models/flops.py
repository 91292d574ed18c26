"""FLOP counts of a built model, read off its TensorFlow graph (tf.profiler float_operation).

Counts every matmul and convolution the graph really runs, front end included, for a
given input length; multiply-add = 2 FLOPs, as PyTorch's flop counter counts them.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

__all__ = ["count_flops"]


def count_flops(model: keras.Model, samples: int, batch: int = 1) -> dict[str, int]:
    """FLOPs of one inference pass on `batch` inputs of `samples` samples (or frames for a mel model).

    Returns {"total": n, "frontend": n} (the front end's share, 0 for mel input).
    """
    shape = (batch, samples) if len(model.input.shape) == 2 else (batch, samples, model.input.shape[-1])
    fn = tf.function(lambda x: model(x, training=False), autograph=False)
    concrete = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32))
    graph = convert_variables_to_constants_v2(concrete).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=graph, options=options)
    frontend = sum(child.total_float_ops for child in info.children if "/frontend" in child.name)
    return {"total": int(info.total_float_ops), "frontend": int(frontend)}
