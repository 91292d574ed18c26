"""Models: one builder (`build_model`) for every published system, backbones by name.

`python -m keras_mgc.models` prints the paper's systems with their parameter counts and
FLOPs per second of audio.
"""

from keras_mgc.models.classifier import (
    BACKBONES,
    ClassifierHead,
    build_backbone,
    build_model,
    count_params,
    load_float32,
    with_input,
)
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

__all__ = [
    "BACKBONES", "ClassifierHead", "build_backbone", "build_model", "count_params", "load_float32", "with_input",
    "AttentiveStatsPooling", "ChannelSeparation", "ConvReluBN", "FeatureExtractor", "Res2Conv1D",
    "SEBlock", "SERes2Block", "SubBandAggregator", "build_ecapa_backbone",
]
