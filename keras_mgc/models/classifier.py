"""The genre classifier task: preprocessor -> backbone -> head, as one functional Keras model.

Split as keras-hub splits its models: the preprocessor turns audio (or precomputed mels)
into normalised log-mels, the backbone turns log-mels into a pooled embedding, the head
turns the embedding into class logits. The model's output is logits (float32); softmax is
applied by the loss in training and by the exported serving signatures.

Example:
    >>> import numpy as np
    >>> from keras_mgc import presets
    >>> model = build_model(presets.model_config("tiny"), num_classes=10)
    >>> model(np.zeros((2, 44356), "float32")).shape
    TensorShape([2, 10])

A backbone built for a fixed number of frames (VGG) gets a fixed-length input:
    >>> build_model({"backbone": "vgg", "input": "mel", "block_channels": [4] * 5, "dense_units": 8}, 28).input_shape
    (None, 200, 48)
"""

from __future__ import annotations

from typing import Any, Callable

import keras

from keras_mgc.config import ModelConfigBase, model_config_from_dict
from keras_mgc.frontend import LogMelSpectrogram, TimeMeanNormalization
from keras_mgc.models.bbnn import build_bbnn_backbone
from keras_mgc.models.ecapa_tdnn import batch_norm, build_ecapa_backbone, torch_initializers
from keras_mgc.models.resnet import build_resnet_backbone
from keras_mgc.models.vgg import build_vgg_backbone

__all__ = ["BACKBONES", "ClassifierHead", "build_backbone", "frontend_params", "build_preprocessor", "build_model",
           "with_input", "count_params", "load_float32"]

#: Backbone builders by `model.backbone` name: log-mel (batch, frames, n_mels) -> embedding.
#: Each name has its config class in keras_mgc.config.MODEL_CONFIGS.
BACKBONES: dict[str, Callable[[Any], keras.Model]] = {
    "ecapa_tdnn": build_ecapa_backbone,
    "resnet18": build_resnet_backbone,
    "resnet34": build_resnet_backbone,
    "se_resnet34": build_resnet_backbone,
    "vgg": build_vgg_backbone,
    "bbnn": build_bbnn_backbone,
}


@keras.saving.register_keras_serializable(package="keras_mgc")
class ClassifierHead(keras.layers.Layer):
    """BatchNorm on the embedding -> Linear -> BatchNorm on the logits (the authors' ECAPA head), in float32.

    With `batchnorm=False` it is one Linear layer, the head of the authors' baselines.
    """

    def __init__(self, in_features: int, num_classes: int, sync_batchnorm: bool = False, batchnorm: bool = True,
                 **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"  # the final BatchNorm and the loss stay in float32 under mixed precision
        super().__init__(**kwargs)
        self.in_features, self.num_classes, self.sync_batchnorm = in_features, num_classes, sync_batchnorm
        self.batchnorm = batchnorm
        self.embedding_bn = self.logit_bn = None
        if batchnorm:
            self.embedding_bn = batch_norm(sync_batchnorm, name="embedding_bn", dtype="float32")
            self.logit_bn = batch_norm(sync_batchnorm, name="logit_bn", dtype="float32")
        self.dense = keras.layers.Dense(num_classes, name="dense", dtype="float32", **torch_initializers(in_features))

    def build(self, input_shape: tuple) -> None:
        self.dense.build(input_shape)
        if self.batchnorm:
            self.embedding_bn.build(input_shape)
            self.logit_bn.build((input_shape[0], self.num_classes))

    def call(self, embedding: Any, training: bool | None = None) -> Any:
        embedding = keras.ops.cast(embedding, "float32")
        if not self.batchnorm:
            return self.dense(embedding)
        return self.logit_bn(self.dense(self.embedding_bn(embedding, training=training)), training=training)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.num_classes)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(in_features=self.in_features, num_classes=self.num_classes, sync_batchnorm=self.sync_batchnorm,
                      batchnorm=self.batchnorm)
        config.pop("dtype", None)
        return config


def build_backbone(cfg: ModelConfigBase) -> keras.Model:
    """The backbone named by `cfg.backbone`, as a functional model log-mel -> embedding."""
    try:
        builder = BACKBONES[cfg.backbone]
    except KeyError:
        raise ValueError(f"model.backbone: unknown backbone '{cfg.backbone}' (known: {sorted(BACKBONES)})") from None
    return builder(cfg)


def frontend_params(cfg: ModelConfigBase) -> dict[str, Any]:
    """The front-end parameters of a model config, as `LogMelSpectrogram` takes them."""
    return cfg.frontend.model_dump()


def build_preprocessor(cfg: ModelConfigBase, kind: str | None = None, **frontend: Any) -> tuple[keras.KerasTensor, Any]:
    """The model input and its normalised log-mels, for `kind` "waveform" or "mel".

    `frontend` overrides LogMelSpectrogram arguments (e.g. dft_precision, table_mode).
    """
    kind = kind or cfg.input
    # A backbone built for one length gets an input of that length.
    if kind == "waveform":
        inputs = keras.Input((cfg.fixed_samples(),), name="waveform")
        features = LogMelSpectrogram(**(frontend_params(cfg) | frontend), name="frontend")(inputs)
    elif kind == "mel":
        inputs = keras.Input((cfg.fixed_frames(), cfg.frontend.n_mels), name="mel")
        features = TimeMeanNormalization(name="frontend")(inputs) if cfg.frontend.mean_normalize else inputs
    else:
        raise ValueError(f"model.input: expected 'waveform' or 'mel', got {kind!r}")
    return inputs, features


def build_model(cfg: ModelConfigBase | dict, num_classes: int, name: str = "genre_classifier") -> keras.Model:
    """The whole classifier (input -> logits) for any backbone configuration.

    `cfg` is a model config (or its dict form, as in a recipe's `model:` section);
    `num_classes` comes from the data.
    """
    cfg = model_config_from_dict(cfg)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    inputs, features = build_preprocessor(cfg)
    backbone = build_backbone(cfg)
    embedding = backbone(features)
    logits = ClassifierHead(backbone.output_shape[-1], num_classes, cfg.sync_batchnorm, cfg.head_batchnorm,
                            name="head")(embedding)
    return keras.Model(inputs, logits, name=name)


def with_input(model: keras.Model, kind: str, cfg: ModelConfigBase, **frontend: Any) -> keras.Model:
    """The same trained backbone and head behind another input kind ("waveform" or "mel").

    Layers (and weights) are shared with `model`; outputs are {"logits", "embedding"}.
    `frontend` overrides LogMelSpectrogram arguments of a waveform entry point.
    """
    inputs, features = build_preprocessor(cfg, kind, **frontend)
    embedding = model.get_layer("backbone")(features)
    logits = model.get_layer("head")(embedding)
    return keras.Model(inputs, {"logits": logits, "embedding": embedding}, name=f"{model.name}_{kind}")


def count_params(model: keras.Model) -> int:
    """Trainable parameters, counted as PyTorch counts them (no BatchNorm running statistics)."""
    return int(sum(keras.ops.size(w) for w in model.trainable_weights))


def load_float32(path: str, cfg: ModelConfigBase, num_classes: int, dft_precision: str | None = None) -> keras.Model:
    """A saved model rebuilt in float32 from its configuration, with the saved weights.

    A `.keras` file saved under a mixed-precision policy reloads with float16/bfloat16
    layers whatever the global policy (BUILD_NOTES.md, "Design facts"), and such a graph neither runs
    fast on a CPU nor converts to TFLite; rebuilding under float32 and copying the weights
    (variables are float32 under every policy) gives the same model in float32.
    `dft_precision` overrides the front end's DFT precision (exports use "float32").
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = build_model(cfg, num_classes)
        saved = keras.models.load_model(path, compile=False)
        if len(saved.weights) != len(model.weights):
            raise ValueError(f"{path}: saved model has {len(saved.weights)} weights, the configuration "
                             f"builds {len(model.weights)}: was it trained with another model config?")
        for target, source in zip(model.weights, saved.weights):
            if tuple(target.shape) != tuple(source.shape):
                raise ValueError(f"{path}: weight {source.path} has shape {tuple(source.shape)}, "
                                 f"the configuration expects {tuple(target.shape)}")
            target.assign(keras.ops.cast(source, target.dtype))
        if dft_precision is not None and cfg.input == "waveform":
            entry = with_input(model, "waveform", cfg, dft_precision=dft_precision)
            model = keras.Model(entry.inputs, entry.output["logits"], name=model.name)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return model
