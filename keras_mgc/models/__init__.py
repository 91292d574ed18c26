"""Models: one builder (`build_model`) for every published system, backbones by name.

`python -m keras_mgc.models` prints the paper's systems with their parameter counts and
FLOPs per second of audio.
"""

# Registers AdamL2, which every checkpoint trained with the paper recipes names: importing
# keras_mgc.models is then all `keras.models.load_model("best.keras")` needs, compiled or not.
from keras_mgc import optimizers as _optimizers  # noqa: F401
from keras_mgc.models.classifier import (
    BACKBONES,
    ClassifierHead,
    build_backbone,
    build_model,
    count_params,
    load_float32,
    with_input,
)
from keras_mgc.models.bbnn import MultiScaleBlock, PreActConv, build_bbnn_backbone
from keras_mgc.models.ecapa_tdnn import (
    AttentiveStatsPooling,
    ChannelSeparation,
    ConvReluBN,
    FeatureExtractor,
    Res2Conv1D,
    SEBlock,
    SERes2Block,
    SubBandAggregator,
    build_ecapa_backbone,
)
from keras_mgc.models.layers import MelImage, instance_norm
from keras_mgc.models.resnet import BasicBlock, SqueezeExcitation2D, build_resnet_backbone
from keras_mgc.models.vgg import build_vgg_backbone

__all__ = [
    "BACKBONES", "ClassifierHead", "build_backbone", "build_model", "count_params", "load_float32", "with_input",
    "AttentiveStatsPooling", "ChannelSeparation", "ConvReluBN", "FeatureExtractor", "Res2Conv1D",
    "SEBlock", "SERes2Block", "SubBandAggregator", "build_ecapa_backbone",
    "BasicBlock", "SqueezeExcitation2D", "build_resnet_backbone", "build_vgg_backbone",
    "MultiScaleBlock", "PreActConv", "build_bbnn_backbone", "MelImage", "instance_norm",
]
