"""VGGNet on log-mel images: the paper's Melon baseline #17 (Table 3).

Built to the authors' parameter count (39,477,980 at 28 classes; their `#17_VGGNet`
model file is not public, see BUILD_NOTES.md "Baselines"): VGG16 configuration C, i.e.
five blocks of 3x3 convolutions (64, 128, 256, 512, 512 channels; two convs in the first
two blocks, two 3x3 and one 1x1 in the last three), every conv with a bias and a ReLU,
no BatchNorm, a 2x2 max pool after each block, then 3072 -> 4096 -> 4096 -> classes.

The first dense layer fixes the input length. After five 2x2 pools a (48 mel, T frame)
image is (1, T // 32) wide, so 512 x 1 x 6 = 3072 inputs means 192 <= T <= 223 frames;
the authors crop 200 frames (`crop_size: 200`). The model therefore declares a fixed
input length (`model.frames`, 200): its Keras input is (batch, 200, 48) mels, or
(batch, 199 x 256) samples of audio, and evaluation, export and the tagger read that
length off the model and slide windows of it over longer clips (keras_mgc/windows.py).

Like the ResNets it normalises each mel bin over time (instance norm) and reads the
log-mel as a one-channel (mel, time) image; the flattened features are taken in
PyTorch's (channel, mel, time) order so that a state dict of the same network maps
one to one.

Anatomy (paper term -> layer):
    per-bin instance normalisation   -> instance_norm (keras_mgc.models.layers)
    VGG block k (convs + max pool)   -> block{k}_conv{j}, block{k}_pool
    fully connected 3072->4096->4096 -> fc1, fc2 (ReLU, dropout)
    classifier                       -> ClassifierHead(batchnorm=False) (classifier.py)

Example:
    >>> from keras_mgc.config import VGGConfig
    >>> backbone = build_vgg_backbone(VGGConfig(input="mel"))
    >>> backbone.input_shape, backbone.get_layer("fc1").input.shape
    ((None, 200, 48), (None, 3072))
"""

from __future__ import annotations

import keras

from keras_mgc.config import VGGConfig
from keras_mgc.models.ecapa_tdnn import torch_initializers
from keras_mgc.models.layers import MelImage, instance_norm


def vgg_convs(block: int) -> list[int]:
    """Kernel sizes of VGG16-C block `block` (1-based): [3, 3], then [3, 3, 1] from block 3 on."""
    return [3, 3] if block <= 2 else [3, 3, 1]


def build_vgg_backbone(cfg: VGGConfig, name: str = "backbone") -> keras.Model:
    """Log-mel (batch, cfg.frames, n_mels) -> the second dense layer's output (batch, dense_units)."""
    n_mels = cfg.frontend.n_mels
    mel = keras.Input((cfg.frames, n_mels), name="mel")
    h = instance_norm(n_mels)(mel) if cfg.instance_norm else mel
    h = MelImage(name="image")(h)
    in_channels = 1
    for block, channels in enumerate(cfg.block_channels, start=1):
        for j, kernel in enumerate(vgg_convs(block), start=1):
            if kernel > 1:
                h = keras.layers.ZeroPadding2D(kernel // 2, name=f"block{block}_pad{j}")(h)
            h = keras.layers.Conv2D(channels, kernel, activation="relu", name=f"block{block}_conv{j}",
                                    **torch_initializers(in_channels * kernel * kernel))(h)
            in_channels = channels
        h = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(h)
    if h.shape[1] == 0 or h.shape[2] == 0:
        raise ValueError(f"model.frames: {cfg.frames} frames x {n_mels} mel bins vanish after "
                         f"{len(cfg.block_channels)} 2x2 pools (need at least {2 ** len(cfg.block_channels)} of each)")
    h = keras.layers.Permute((3, 1, 2), name="channels_first")(h)  # PyTorch's flatten order
    h = keras.layers.Flatten(name="flatten")(h)
    for i in (1, 2):
        fan_in = h.shape[-1]
        h = keras.layers.Dense(cfg.dense_units, activation="relu", name=f"fc{i}", **torch_initializers(fan_in))(h)
        h = keras.layers.Dropout(cfg.dropout, name=f"dropout{i}")(h)
    return keras.Model(mel, h, name=name)
