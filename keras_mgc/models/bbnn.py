"""BBNN, the bottom-up broadcast neural network of Liu et al. (2019): baseline #21 (Melon, Table 3).

Built as the authors' `#21_BBNN` model builds it (32,450 parameters at 28 classes):

- a 3x3 conv to C = 13 channels ("same" padding, with bias) -> BN -> ReLU, then a (1, 4)
  max pool (time only) on the (mel, time) image;
- one densely connected block of three inception-like multi-scale blocks: each sees the
  concatenation of everything before it and adds 4C channels (13 -> 65 -> 117 -> 169);
- a multi-scale block has four branches of pre-activation units (BN -> ReLU -> conv):
  1x1; 1x1 then 3x3; 1x1 then 5x5; 3x3 max pool (stride 1) then 1x1; concatenated;
- a transition block BN -> ReLU -> 1x1 conv back to C -> 2x2 average pool;
- BN -> ReLU -> global average pool -> linear head.

The authors' Melon model takes the dataset's mels as they are (no normalisation, so
`instance_norm: false`); the GTZAN recipe of this toolkit gives it the ResNets' front end.

Anatomy (paper term -> layer):
    shallow conv + max pool              -> stem_conv, stem_bn, stem_pool
    inception-like multi-scale block     -> MultiScaleBlock (PreActConv units)
    densely connected block              -> dense{k} + concatenations
    transition block                     -> transition_bn, transition_conv, transition_pool
    global average pool + linear         -> final_bn, pool, ClassifierHead(batchnorm=False)

Example:
    >>> from keras_mgc.config import BBNNConfig
    >>> build_bbnn_backbone(BBNNConfig(input="mel")).output_shape
    (None, 13)
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mgc.config import BBNNConfig
from keras_mgc.models.ecapa_tdnn import _ConfigLayer, batch_norm, torch_initializers
from keras_mgc.models.layers import MelImage, instance_norm

_register = keras.saving.register_keras_serializable(package="keras_mgc")


def _conv(filters: int, kernel: int, in_channels: int, name: str) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(filters, kernel, padding="same", name=name,
                               **torch_initializers(in_channels * kernel * kernel))


@_register
class PreActConv(_ConfigLayer):
    """BN -> ReLU -> conv ("same" padding, with bias): the unit every BBNN branch is made of."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, sync_batchnorm: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(dict(in_channels=in_channels, channels=channels, kernel_size=kernel_size,
                              sync_batchnorm=sync_batchnorm), **kwargs)
        self.bn = batch_norm(sync_batchnorm, name="bn")
        self.conv = _conv(channels, kernel_size, in_channels, "conv")

    def build(self, input_shape: tuple) -> None:
        self.bn.build(input_shape)
        self.conv.build(input_shape)

    def call(self, x: Any, training: bool | None = None) -> Any:
        return self.conv(ops.relu(self.bn(x, training=training)))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self._args["channels"])


@_register
class MultiScaleBlock(_ConfigLayer):
    """Inception-like block: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1, concatenated (4 x channels)."""

    def __init__(self, in_channels: int, channels: int, sync_batchnorm: bool = False, **kwargs: Any) -> None:
        super().__init__(dict(in_channels=in_channels, channels=channels, sync_batchnorm=sync_batchnorm), **kwargs)
        c, s = channels, sync_batchnorm
        self.branch1 = PreActConv(in_channels, c, 1, s, name="branch1x1")
        self.branch3_in = PreActConv(in_channels, c, 1, s, name="branch3x3_in")
        self.branch3 = PreActConv(c, c, 3, s, name="branch3x3")
        self.branch5_in = PreActConv(in_channels, c, 1, s, name="branch5x5_in")
        self.branch5 = PreActConv(c, c, 5, s, name="branch5x5")
        self.pool = keras.layers.MaxPooling2D(3, strides=1, padding="same", name="pool")
        self.branch_pool = PreActConv(in_channels, c, 1, s, name="branch_pool")

    def build(self, input_shape: tuple) -> None:
        narrow = (*input_shape[:-1], self._args["channels"])
        for layer in (self.branch1, self.branch3_in, self.branch5_in, self.branch_pool):
            layer.build(input_shape)
        self.branch3.build(narrow)
        self.branch5.build(narrow)

    def call(self, x: Any, training: bool | None = None) -> Any:
        return ops.concatenate([
            self.branch1(x, training=training),
            self.branch3(self.branch3_in(x, training=training), training=training),
            self.branch5(self.branch5_in(x, training=training), training=training),
            self.branch_pool(self.pool(x), training=training),
        ], axis=-1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], 4 * self._args["channels"])


def build_bbnn_backbone(cfg: BBNNConfig, name: str = "backbone") -> keras.Model:
    """Log-mel (batch, frames, n_mels) -> pooled embedding (batch, cfg.channels)."""
    sync, c = cfg.sync_batchnorm, cfg.channels
    mel = keras.Input((None, cfg.frontend.n_mels), name="mel")
    h = instance_norm(cfg.frontend.n_mels)(mel) if cfg.instance_norm else mel
    h = MelImage(name="image")(h)
    h = _conv(c, 3, 1, "stem_conv")(h)
    h = keras.layers.ReLU(name="stem_relu")(batch_norm(sync, name="stem_bn")(h))
    h = keras.layers.MaxPooling2D((1, cfg.time_pool), name="stem_pool")(h)
    width = c
    for k in range(1, cfg.dense_layers + 1):
        out = MultiScaleBlock(width, c, sync, name=f"dense{k}")(h)
        h = keras.layers.Concatenate(name=f"dense{k}_concat")([h, out])
        width += 4 * c
    h = keras.layers.ReLU(name="transition_relu")(batch_norm(sync, name="transition_bn")(h))
    h = _conv(c, 1, width, "transition_conv")(h)
    h = keras.layers.AveragePooling2D(2, name="transition_pool")(h)
    h = keras.layers.ReLU(name="final_relu")(batch_norm(sync, name="final_bn")(h))
    embedding = keras.layers.GlobalAveragePooling2D(name="pool", dtype="float32")(h)
    return keras.Model(mel, embedding, name=name)
