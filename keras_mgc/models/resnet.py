"""ResNet18, ResNet34 and SE-ResNet34 on log-mel images: the paper's conventional baselines.

Rows #5-#7 (GTZAN, Table 2) and #18-#20 (Melon, Table 3) of Heo et al. compare ECAPA
against these networks, trained by the authors on the same data (their experiments
`#05_ResNet18` ... `#07_SEResNet34`, `#18_ResNet18` ... `#20_SEResNet34`). Built as the
authors' PyTorch code builds them, which differs from torchvision's ResNet in places
(BUILD_NOTES.md, "Baselines"):

- the log-mel is normalised per mel bin over time, mean AND variance
  (`nn.InstanceNorm1d(48)`: biased variance, eps 1e-5, no affine), then read as a
  one-channel image of (mel bins, frames);
- the stem is a 7x7 stride-2 conv WITHOUT padding (with a bias), then ReLU, THEN BatchNorm,
  then a 3x3 stride-2 max pool without padding;
- every stage is strided by 2, the first included, so each stage's first block has a
  1x1 stride-2 conv + BatchNorm shortcut;
- inside a basic block the first conv is conv -> ReLU -> BN, the second conv -> BN; then
  (SE-ResNet: squeeze-excitation gates,) plus the shortcut, ReLU;
- global average pool, then one linear layer (no BatchNorm head).

Data layout is channels-last: (batch, mel bins, frames, channels), the authors' image
transposed to Keras' convention, so kernel and pool shapes read as theirs (height = mel).
Padded convolutions pad explicitly (1 on each side), as PyTorch does; Keras' "same"
padding would put the odd pixel of a strided conv on one side only.

Anatomy (paper term -> layer):
    per-bin instance normalisation        -> instance_norm (keras_mgc.models.layers)
    (mel, time) one-channel image          -> MelImage
    7x7 stem + max pool                    -> stem_conv, stem_bn, stem_pool
    basic block / SE basic block           -> BasicBlock (SqueezeExcitation2D inside)
    stage k of blocks                      -> stage{k}_block{j}
    global average pool                    -> pool
    linear head                            -> ClassifierHead(batchnorm=False) (classifier.py)

Example:
    >>> from keras_mgc.config import ResNetConfig
    >>> backbone = build_resnet_backbone(ResNetConfig(backbone="resnet18", input="mel"))
    >>> backbone.output_shape
    (None, 512)
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mgc.config import ResNetConfig
from keras_mgc.models.ecapa_tdnn import _ConfigLayer, batch_norm, torch_initializers
from keras_mgc.models.layers import MelImage, instance_norm

_register = keras.saving.register_keras_serializable(package="keras_mgc")


def kaiming_fan_out() -> keras.initializers.Initializer:
    """The authors' conv init: kaiming_normal_(mode="fan_out", nonlinearity="relu")."""
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def conv2d(filters: int, kernel: int, stride: int = 1, use_bias: bool = False, name: str | None = None,
           fan_in: int | None = None) -> keras.layers.Conv2D:
    """An unpadded Conv2D with the authors' weight init (torch's default bias init when biased)."""
    init = torch_initializers(fan_in or 1)
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=use_bias, name=name,
                               kernel_initializer=kaiming_fan_out(), bias_initializer=init["bias_initializer"])


@_register
class SqueezeExcitation2D(_ConfigLayer):
    """SE gates of a feature map: mean over (mel, time) -> Linear/ReLU -> Linear/sigmoid -> scale channels.

    Linear layers with biases and reduction 8 give the authors' SE-ResNet34 count exactly
    (318,616 parameters more than ResNet34).
    """

    def __init__(self, channels: int, reduction: int = 8, **kwargs: Any) -> None:
        super().__init__(dict(channels=channels, reduction=reduction), **kwargs)
        hidden = max(channels // reduction, 1)
        self.squeeze = keras.layers.Dense(hidden, activation="relu", name="squeeze", **torch_initializers(channels))
        self.excite = keras.layers.Dense(channels, activation="sigmoid", name="excite", **torch_initializers(hidden))

    def build(self, input_shape: tuple) -> None:
        self.squeeze.build((input_shape[0], self._args["channels"]))
        self.excite.build((input_shape[0], self.squeeze.units))

    def call(self, x: Any) -> Any:
        gates = self.excite(self.squeeze(ops.mean(x, axis=(1, 2))))
        return x * gates[:, None, None, :]

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


@_register
class BasicBlock(_ConfigLayer):
    """Two 3x3 convs with a shortcut: conv(stride) -> ReLU -> BN -> conv -> BN (-> SE) + shortcut -> ReLU.

    The shortcut is a 1x1 conv (stride `stride`, no bias) + BN when the stride or the width changes.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1, se_reduction: int | None = None,
                 sync_batchnorm: bool = False, **kwargs: Any) -> None:
        super().__init__(dict(in_channels=in_channels, channels=channels, stride=stride, se_reduction=se_reduction,
                              sync_batchnorm=sync_batchnorm), **kwargs)
        self.pad = keras.layers.ZeroPadding2D(1, name="pad")
        self.conv1 = conv2d(channels, 3, stride, name="conv1")
        self.bn1 = batch_norm(sync_batchnorm, name="bn1")
        self.conv2 = conv2d(channels, 3, 1, name="conv2")
        self.bn2 = batch_norm(sync_batchnorm, name="bn2")
        self.se = SqueezeExcitation2D(channels, se_reduction, name="se") if se_reduction else None
        self.shortcut = self.shortcut_bn = None
        if stride != 1 or in_channels != channels:
            self.shortcut = conv2d(channels, 1, stride, name="shortcut")
            self.shortcut_bn = batch_norm(sync_batchnorm, name="shortcut_bn")

    def build(self, input_shape: tuple) -> None:
        padded = self.pad.compute_output_shape(input_shape)
        self.conv1.build(padded)
        out = self.conv1.compute_output_shape(padded)
        self.bn1.build(out)
        self.conv2.build(self.pad.compute_output_shape(out))
        self.bn2.build(out)
        if self.se is not None:
            self.se.build(out)
        if self.shortcut is not None:
            self.shortcut.build(input_shape)
            self.shortcut_bn.build(self.shortcut.compute_output_shape(input_shape))

    def call(self, x: Any, training: bool | None = None) -> Any:
        h = self.bn1(ops.relu(self.conv1(self.pad(x))), training=training)
        h = self.bn2(self.conv2(self.pad(h)), training=training)
        if self.se is not None:
            h = self.se(h)
        residual = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x), training=training)
        return ops.relu(h + residual)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return self.conv1.compute_output_shape(self.pad.compute_output_shape(input_shape))


def build_resnet_backbone(cfg: ResNetConfig, name: str = "backbone") -> keras.Model:
    """Log-mel (batch, frames, n_mels) -> pooled embedding (batch, last stage width)."""
    sync = cfg.sync_batchnorm
    mel = keras.Input((None, cfg.frontend.n_mels), name="mel")
    h = instance_norm(cfg.frontend.n_mels)(mel) if cfg.instance_norm else mel
    h = MelImage(name="image")(h)
    stem = cfg.stage_channels[0]
    h = conv2d(stem, 7, 2, use_bias=True, name="stem_conv", fan_in=49)(h)
    h = batch_norm(sync, name="stem_bn")(keras.layers.ReLU(name="stem_relu")(h))
    h = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="stem_pool")(h)
    in_channels = stem
    se = cfg.squeeze_excitation()
    for stage, (channels, blocks) in enumerate(zip(cfg.stage_channels, cfg.stage_blocks()), start=1):
        for j in range(blocks):
            stride = cfg.stage_stride if j == 0 else 1
            h = BasicBlock(in_channels, channels, stride, se, sync, name=f"stage{stage}_block{j + 1}")(h)
            in_channels = channels
    embedding = keras.layers.GlobalAveragePooling2D(name="pool", dtype="float32")(h)
    return keras.Model(mel, embedding, name=name)
