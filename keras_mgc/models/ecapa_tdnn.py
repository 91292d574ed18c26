"""ECAPA-TDNN with convolution channel separation (CCS) and frequency sub-band aggregation (FSA).

One readable file for the model of Heo et al., "Convolution Channel Separation and
Frequency Sub-bands Aggregation for Music Genre Classification", built as the authors'
PyTorch code builds it (choices recorded in BUILD_NOTES.md, "Model").

Data layout is channels-last throughout: (batch, frames, channels). Every convolution
unit is conv -> ReLU -> BatchNorm, as in the authors' code.

Anatomy (paper term -> layer):
    first conv + SE-Res2Blocks with running sums  -> FeatureExtractor
    SE-Res2Block                                  -> SERes2Block (Res2Conv1D + SEBlock inside)
    CCS: continuous vs stop channels              -> ChannelSeparation
    FSA: one extractor per mel sub-band           -> SubBandAggregator (one band = no FSA)
    attentive statistics pooling                  -> AttentiveStatsPooling
    BN -> Linear -> BN head                       -> ClassifierHead (keras_mgc.models.classifier)

Example:
    >>> from keras_mgc.config import ECAPAConfig
    >>> cfg = ECAPAConfig(channels=1024, ccs={"stop": 512}, fsa={"enabled": True})  # #15
    >>> backbone = build_ecapa_backbone(cfg)
    >>> backbone.output_shape          # [weighted mean, weighted std] of 1536 + 3 * 4 * 128 channels
    (None, 6144)
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from keras_mgc.config import ECAPAConfig

__all__ = ["torch_initializers", "batch_norm", "ConvReluBN", "Res2Conv1D", "SEBlock", "SERes2Block", "ChannelSeparation",
           "FeatureExtractor", "SubBandAggregator", "AttentiveStatsPooling", "build_ecapa_backbone"]

_register = keras.saving.register_keras_serializable(package="keras_mgc")


def torch_initializers(fan_in: int) -> dict[str, keras.initializers.Initializer]:
    """PyTorch's default Conv/Linear init: kaiming_uniform(a=sqrt(5)) and U(+-1/sqrt(fan_in)) bias."""
    bound = 1.0 / math.sqrt(fan_in)
    return {
        "kernel_initializer": keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
        "bias_initializer": keras.initializers.RandomUniform(-bound, bound),
    }


@_register
class TorchBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose running variance is updated as torch.nn.BatchNorm1d updates it.

    Both normalise a training batch with its biased variance, but torch feeds the UNBIASED
    batch variance (n / (n - 1), n = values per channel in the batch) into the running
    average, Keras the biased one. For the head's BatchNorms n is the batch size, so at
    batch 64 Keras's running variance (used in inference) would be 1/64 smaller than the
    authors'; with this class the two are the same (tests/test_parity.py).
    """

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = self._moments(x, None)
        shape = ops.shape(x)
        count = ops.cast(math.prod(shape[a] for a in self._reduction_axes), x.dtype)  # values per channel
        if self.synchronized:  # moments over all replicas' batches (TensorFlow only, as Keras's option)
            import tensorflow as tf

            context = tf.distribute.get_replica_context()
            count = count * (context.num_replicas_in_sync if context is not None else 1)
        unbiased = variance * count / ops.maximum(count - 1.0, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(ops.cast(self.moving_mean, x.dtype) * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(ops.cast(self.moving_variance, x.dtype) * momentum + unbiased * (1.0 - momentum))
        gamma = ops.cast(self.gamma, x.dtype) if self.scale else None
        beta = ops.cast(self.beta, x.dtype) if self.center else None
        outputs = ops.batch_normalization(x, mean, variance, axis=self.axis, offset=beta, scale=gamma,
                                          epsilon=self.epsilon)
        return ops.cast(outputs, self.compute_dtype)


def batch_norm(sync: bool = False, name: str | None = None, **kwargs: Any) -> keras.layers.BatchNormalization:
    """BatchNorm with PyTorch's defaults and semantics (momentum 0.1 -> 0.9 here, epsilon 1e-5,
    unbiased variance in the running average)."""
    return TorchBatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=sync, name=name, **kwargs)


class _ConfigLayer(keras.layers.Layer):
    """A layer whose constructor arguments are its config (stored in `self._args`)."""

    def __init__(self, args: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._args = dict(args)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(self._args)
        return config

    def _ensure_built(self, x: Any) -> None:
        """Build before a public helper (trace, gates, attention) runs outside __call__."""
        if not self.built:
            self.build(tuple(x.shape))


@_register
class ConvReluBN(_ConfigLayer):
    """Conv1D -> ReLU -> BatchNorm, the unit every ECAPA convolution uses ("TDNN block")."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        dilation: int = 1,
        sync_batchnorm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                              dilation=dilation, sync_batchnorm=sync_batchnorm), **kwargs)
        self.conv = keras.layers.Conv1D(
            out_channels, kernel_size, dilation_rate=dilation, padding="same", name="conv",
            **torch_initializers(in_channels * kernel_size),
        )
        self.bn = batch_norm(sync_batchnorm, name="bn")

    def build(self, input_shape: tuple) -> None:
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, x: Any, training: bool | None = None) -> Any:
        return self.bn(ops.relu(self.conv(x)), training=training)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self._args["out_channels"])


@_register
class Res2Conv1D(_ConfigLayer):
    """Res2Net multi-scale dilated convolution over `scale` channel groups.

    Groups 1..scale-1 each pass a dilated ConvReluBN, group i adding group i-1's output
    first; the last group passes unchanged (the authors' Bottle2neck, not SpeechBrain's
    first-group-unchanged variant).
    """

    def __init__(self, channels: int, kernel_size: int = 3, dilation: int = 1, scale: int = 8,
                 sync_batchnorm: bool = False, **kwargs: Any) -> None:
        super().__init__(dict(channels=channels, kernel_size=kernel_size, dilation=dilation, scale=scale,
                              sync_batchnorm=sync_batchnorm), **kwargs)
        if scale < 2 or channels % scale:
            raise ValueError(f"Res2Conv1D: channels ({channels}) must split into scale >= 2 groups, got scale={scale}")
        width = channels // scale
        self.convs = [
            ConvReluBN(width, width, kernel_size, dilation, sync_batchnorm, name=f"group_{i}") for i in range(scale - 1)
        ]

    def build(self, input_shape: tuple) -> None:
        group_shape = (*input_shape[:-1], self._args["channels"] // self._args["scale"])
        for conv in self.convs:
            conv.build(group_shape)

    def call(self, x: Any, training: bool | None = None) -> Any:
        groups = ops.split(x, self._args["scale"], axis=-1)
        outputs, previous = [], None
        for group, conv in zip(groups, self.convs):
            previous = conv(group if previous is None else group + previous, training=training)
            outputs.append(previous)
        outputs.append(groups[-1])
        return ops.concatenate(outputs, axis=-1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


@_register
class SEBlock(_ConfigLayer):
    """Squeeze-excitation over time: mean over frames -> bottleneck ReLU -> sigmoid gates."""

    def __init__(self, channels: int, bottleneck: int = 128, **kwargs: Any) -> None:
        super().__init__(dict(channels=channels, bottleneck=bottleneck), **kwargs)
        self.squeeze = keras.layers.Dense(bottleneck, activation="relu", name="squeeze", **torch_initializers(channels))
        self.excite = keras.layers.Dense(channels, activation="sigmoid", name="excite", **torch_initializers(bottleneck))

    def build(self, input_shape: tuple) -> None:
        self.squeeze.build((input_shape[0], 1, self._args["channels"]))
        self.excite.build((input_shape[0], 1, self._args["bottleneck"]))

    def gates(self, x: Any) -> Any:
        """Per-example channel gates in (0, 1), shape (batch, 1, channels)."""
        self._ensure_built(x)
        return self.excite(self.squeeze(ops.mean(x, axis=1, keepdims=True)))

    def call(self, x: Any) -> Any:
        return x * self.gates(x)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


@_register
class SERes2Block(_ConfigLayer):
    """SE-Res2Block: 1x1 ConvReluBN -> Res2Conv1D -> 1x1 ConvReluBN -> SE, plus the residual.

    The residual is a 1x1 conv when in and out channels differ (CCS blocks output C + M).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 scale: int = 8, se_channels: int = 128, sync_batchnorm: bool = False, **kwargs: Any) -> None:
        super().__init__(dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                              dilation=dilation, scale=scale, se_channels=se_channels,
                              sync_batchnorm=sync_batchnorm), **kwargs)
        self.conv_in = ConvReluBN(in_channels, out_channels, 1, 1, sync_batchnorm, name="conv_in")
        self.res2 = Res2Conv1D(out_channels, kernel_size, dilation, scale, sync_batchnorm, name="res2")
        self.conv_out = ConvReluBN(out_channels, out_channels, 1, 1, sync_batchnorm, name="conv_out")
        self.se = SEBlock(out_channels, se_channels, name="se")
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = keras.layers.Conv1D(out_channels, 1, name="shortcut", **torch_initializers(in_channels))

    def build(self, input_shape: tuple) -> None:
        out_shape = (*input_shape[:-1], self._args["out_channels"])
        self.conv_in.build(input_shape)
        for layer in (self.res2, self.conv_out, self.se):
            layer.build(out_shape)
        if self.shortcut is not None:
            self.shortcut.build(input_shape)

    def call(self, x: Any, training: bool | None = None) -> Any:
        residual = x if self.shortcut is None else self.shortcut(x)
        h = self.conv_out(self.res2(self.conv_in(x, training=training), training=training), training=training)
        return self.se(h) + residual

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self._args["out_channels"])


@_register
class ChannelSeparation(_ConfigLayer):
    """CCS: split a block's output into continuous channels (first C) and stop channels (the rest).

    Continuous channels feed later blocks and the last conv; stop channels go straight to
    pooling, so no later block sees them.
    """

    def __init__(self, continuous: int, **kwargs: Any) -> None:
        super().__init__(dict(continuous=continuous), **kwargs)

    def call(self, x: Any) -> tuple[Any, Any]:
        c = self._args["continuous"]
        return x[..., :c], x[..., c:]

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        c = self._args["continuous"]
        stop = None if input_shape[-1] is None else input_shape[-1] - c
        return (*input_shape[:-1], c), (*input_shape[:-1], stop)


@_register
class FeatureExtractor(_ConfigLayer):
    """First conv + SE-Res2Blocks with running sums, CCS-aware.

    Block k receives the first conv's output plus the continuous outputs of blocks
    1..k-1. Returns (continuous outputs of all blocks, stop outputs of all blocks), each
    concatenated on channels; without CCS (no stop channels) only the continuous tensor.
    """

    def __init__(self, in_bins: int, channels: int, stop_channels: int = 0, first_kernel_size: int = 5,
                 kernel_size: int = 3, dilations: tuple[int, ...] = (2, 3, 4), scale: int = 8,
                 se_channels: int = 128, sync_batchnorm: bool = False, **kwargs: Any) -> None:
        dilations = [int(d) for d in dilations]
        super().__init__(dict(in_bins=in_bins, channels=channels, stop_channels=stop_channels,
                              first_kernel_size=first_kernel_size, kernel_size=kernel_size, dilations=dilations,
                              scale=scale, se_channels=se_channels, sync_batchnorm=sync_batchnorm), **kwargs)
        self.first = ConvReluBN(in_bins, channels, first_kernel_size, 1, sync_batchnorm, name="first_conv")
        self.blocks = [
            SERes2Block(channels, channels + stop_channels, kernel_size, d, scale, se_channels, sync_batchnorm,
                        name=f"block_{i + 1}")
            for i, d in enumerate(dilations)
        ]
        self.has_stop = stop_channels > 0
        self.separation = ChannelSeparation(channels, name="ccs") if self.has_stop else None

    def build(self, input_shape: tuple) -> None:
        self.first.build(input_shape)
        for block in self.blocks:
            block.build((*input_shape[:-1], self._args["channels"]))

    def trace(self, x: Any, training: bool | None = None) -> dict[str, list[Any]]:
        """Run the extractor and keep every block's input and (pre-separation) output."""
        self._ensure_built(x)
        running = self.first(x, training=training)
        trace: dict[str, list[Any]] = {"block_inputs": [], "block_outputs": [], "continuous": [], "stop": []}
        for block in self.blocks:
            trace["block_inputs"].append(running)
            out = block(running, training=training)
            trace["block_outputs"].append(out)
            if self.has_stop:
                continuous, stop = self.separation(out)
                trace["stop"].append(stop)
            else:
                continuous = out
            trace["continuous"].append(continuous)
            running = running + continuous
        return trace

    def call(self, x: Any, training: bool | None = None) -> Any:
        trace = self.trace(x, training=training)
        continuous = ops.concatenate(trace["continuous"], axis=-1)
        if not self.has_stop:
            return continuous
        return continuous, ops.concatenate(trace["stop"], axis=-1)

    def compute_output_shape(self, input_shape: tuple) -> Any:
        n = len(self._args["dilations"])
        lead = input_shape[:-1]
        continuous = (*lead, n * self._args["channels"])
        return (continuous, (*lead, n * self._args["stop_channels"])) if self.has_stop else continuous


@_register
class SubBandAggregator(_ConfigLayer):
    """FSA: cut the mel bins into bands, run each band through its own FeatureExtractor.

    Bands are [start, end) bin ranges (the paper: [0:18], [10:28], [20:38], [30:48]);
    weights are not shared between bands. One full-width band is the model without FSA.
    Returns the band-major concatenation of continuous outputs and of stop outputs (only
    the continuous tensor when there are no stop channels, as FeatureExtractor).
    """

    def __init__(self, bands: list[list[int]], channels: list[int], stop_channels: list[int],
                 extractor: dict[str, Any] | None = None, **kwargs: Any) -> None:
        bands = [[int(b[0]), int(b[1])] for b in bands]
        extractor = dict(extractor or {})
        super().__init__(dict(bands=bands, channels=list(channels), stop_channels=list(stop_channels),
                              extractor=extractor), **kwargs)
        if not len(bands) == len(channels) == len(stop_channels):
            raise ValueError("SubBandAggregator: bands, channels and stop_channels need one entry per band")
        if len({m > 0 for m in stop_channels}) > 1:
            raise ValueError(f"SubBandAggregator: stop channels must be all zero or all positive, got {stop_channels}")
        self.has_stop = stop_channels[0] > 0
        self.extractors = [
            FeatureExtractor(end - start, c, m, name=f"band_{i}", **extractor)
            for i, ((start, end), c, m) in enumerate(zip(bands, channels, stop_channels))
        ]

    def build(self, input_shape: tuple) -> None:
        for (start, end), extractor in zip(self._args["bands"], self.extractors):
            extractor.build((*input_shape[:-1], end - start))

    def split_bands(self, mel: Any) -> list[Any]:
        """The mel sub-bands, in order."""
        return [mel[..., start:end] for start, end in self._args["bands"]]

    def call(self, mel: Any, training: bool | None = None) -> Any:
        outputs = [extractor(band, training=training) for band, extractor in zip(self.split_bands(mel), self.extractors)]
        if len(outputs) == 1:
            return outputs[0]
        if not self.has_stop:
            return ops.concatenate(outputs, axis=-1)
        return ops.concatenate([c for c, _ in outputs], axis=-1), ops.concatenate([s for _, s in outputs], axis=-1)

    def compute_output_shape(self, input_shape: tuple) -> Any:
        n_blocks = len(self._args["extractor"].get("dilations", (2, 3, 4)))
        lead = input_shape[:-1]
        continuous = (*lead, n_blocks * sum(self._args["channels"]))
        if not self.has_stop:
            return continuous
        return continuous, (*lead, n_blocks * sum(self._args["stop_channels"]))


@_register
class AttentiveStatsPooling(_ConfigLayer):
    """Attentive statistics pooling with global context (ECAPA-TDNN), always in float32.

    Attention sees [x, mean_t(x), std_t(x)] (unbiased variance clamped at 1e-4), goes
    through 1x1 conv -> ReLU -> BN -> tanh -> 1x1 conv, softmax over time; the output is
    [weighted mean, weighted std] (variance clamped at 1e-4). The first 1x1 conv acts on
    the concatenation, but the mean and std parts are constant over time, so they are
    multiplied once per clip instead of once per frame (same weights, same result).
    """

    def __init__(self, channels: int, attention_channels: int = 256, sync_batchnorm: bool = False,
                 eps: float = 1e-4, **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"  # x^2 overflows float16 near 300 (BUILD_NOTES.md, "Design facts")
        super().__init__(dict(channels=channels, attention_channels=attention_channels,
                              sync_batchnorm=sync_batchnorm, eps=eps), **kwargs)
        self.attention_bn = batch_norm(sync_batchnorm, name="attention_bn", dtype="float32")
        self.attention_out = keras.layers.Dense(channels, name="attention_out", dtype="float32",
                                                **torch_initializers(attention_channels))

    def build(self, input_shape: tuple) -> None:
        c, a = self._args["channels"], self._args["attention_channels"]
        init = torch_initializers(3 * c)
        # One (3C, A) kernel, as the authors' Conv1d(3C, A, 1), split in call().
        self.attention_kernel = self.add_weight(shape=(3 * c, a), initializer=init["kernel_initializer"],
                                                name="attention_in_kernel")
        self.attention_bias = self.add_weight(shape=(a,), initializer=init["bias_initializer"],
                                              name="attention_in_bias")
        self.attention_bn.build((input_shape[0], None, a))
        self.attention_out.build((input_shape[0], None, a))

    def _global_stats(self, x: Any) -> tuple[Any, Any]:
        frames = ops.cast(ops.shape(x)[1], x.dtype)
        mean = ops.mean(x, axis=1, keepdims=True)
        var = ops.sum(ops.square(x - mean), axis=1, keepdims=True) / ops.maximum(frames - 1.0, 1.0)
        return mean, ops.sqrt(ops.maximum(var, self._args["eps"]))

    def attention(self, x: Any, training: bool | None = None) -> Any:
        """Attention weights (batch, frames, channels); each channel's weights sum to 1 over time."""
        x = ops.cast(x, "float32")
        self._ensure_built(x)
        c = self._args["channels"]
        mean, std = self._global_stats(x)
        kernel = self.attention_kernel
        context = ops.matmul(mean, kernel[c : 2 * c]) + ops.matmul(std, kernel[2 * c :]) + self.attention_bias
        h = ops.relu(ops.matmul(x, kernel[:c]) + context)
        h = ops.tanh(self.attention_bn(h, training=training))
        return ops.softmax(self.attention_out(h), axis=1)

    def call(self, x: Any, training: bool | None = None) -> Any:
        x = ops.cast(x, "float32")
        w = self.attention(x, training=training)
        mu = ops.sum(x * w, axis=1)
        var = ops.sum(ops.square(x) * w, axis=1) - ops.square(mu)
        sigma = ops.sqrt(ops.maximum(var, self._args["eps"]))
        return ops.concatenate([mu, sigma], axis=-1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], 2 * self._args["channels"])


def build_ecapa_backbone(cfg: ECAPAConfig, name: str = "backbone") -> keras.Model:
    """Log-mel (batch, frames, n_mels) -> pooled embedding (batch, 2 x pooled channels).

    Vanilla ECAPA-TDNN, CCS and CCS + FSA are all this graph with different numbers.
    """
    sync = cfg.sync_batchnorm
    channels, stops = cfg.band_channels(), cfg.band_stop()
    n_blocks = len(cfg.dilations)
    mel = keras.Input((None, cfg.frontend.n_mels), name="mel")
    aggregator = SubBandAggregator(
        [list(b) for b in cfg.band_slices()], channels, stops,
        extractor=dict(first_kernel_size=cfg.first_kernel_size, kernel_size=cfg.kernel_size,
                       dilations=list(cfg.dilations), scale=cfg.res2_scale, se_channels=cfg.se_channels,
                       sync_batchnorm=sync),
        name="sub_bands",
    )
    outputs = aggregator(mel)
    continuous, stop = outputs if aggregator.has_stop else (outputs, None)
    last = cfg.last_conv_channels()  # the authors' rule or model.last_channels
    in_last = n_blocks * sum(channels)
    if cfg.fsa.enabled:
        # The authors' FSA model aggregates bands with a full SE-Res2Block of kernel 1, no ReLU after.
        h = SERes2Block(in_last, last, 1, 1, cfg.res2_scale, cfg.se_channels, sync, name="aggregation")(continuous)
    else:
        h = keras.layers.Conv1D(last, 1, activation="relu", name="last_conv", **torch_initializers(in_last))(continuous)
    pooled_channels = last + n_blocks * sum(stops)
    if stop is not None:
        h = keras.layers.Concatenate(axis=-1, name="with_stop_channels")([h, stop])
    embedding = AttentiveStatsPooling(pooled_channels, cfg.attention_channels, sync, name="pooling")(h)
    return keras.Model(mel, embedding, name=name)
