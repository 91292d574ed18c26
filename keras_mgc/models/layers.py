"""Layers the image baselines (ResNet, SE-ResNet, VGG, BBNN) share: log-mel -> normalised image.

The authors' ResNets and VGG normalise each mel bin over time with `nn.InstanceNorm1d(48)`
(mean AND variance; ECAPA only subtracts the mean) and then read the (mel, time) matrix
as a one-channel image.

Example:
    >>> import numpy as np
    >>> mel = np.random.default_rng(0).normal(3.0, 2.0, (2, 100, 48)).astype("float32")
    >>> normed = np.asarray(instance_norm(48)(mel))
    >>> bool(np.allclose(normed.mean(axis=1), 0, atol=1e-5)), bool(np.allclose(normed.std(axis=1), 1, atol=1e-3))
    (True, True)
    >>> MelImage()(mel).shape
    TensorShape([2, 48, 100, 1])
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

#: nn.InstanceNorm1d's default epsilon.
INSTANCE_NORM_EPSILON = 1e-5


def instance_norm(n_mels: int, name: str = "instance_norm") -> keras.layers.GroupNormalization:
    """Per-example, per-mel-bin normalisation over time, as `nn.InstanceNorm1d(n_mels)` with its defaults.

    (x - mean_t) / sqrt(var_t + 1e-5) with the biased variance, no learned scale or shift,
    the same in training and inference (no running statistics). On (batch, frames, n_mels)
    that is Keras' GroupNormalization with one group per mel bin; it computes in float32
    under every mixed-precision policy.
    """
    return keras.layers.GroupNormalization(groups=n_mels, axis=-1, epsilon=INSTANCE_NORM_EPSILON, center=False,
                                           scale=False, name=name, dtype="float32")


@keras.saving.register_keras_serializable(package="keras_mgc")
class MelImage(keras.layers.Layer):
    """Log-mel (batch, frames, n_mels) -> one-channel image (batch, n_mels, frames, 1).

    The authors' `x.unsqueeze(1)` on (batch, mel, time), in Keras' channels-last layout:
    height is the mel axis and width is time, so kernel and pool sizes read as theirs.
    """

    def call(self, mel: Any) -> Any:
        return ops.expand_dims(ops.transpose(mel, (0, 2, 1)), -1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], input_shape[2], input_shape[1], 1)
