"""Each ECAPA / CCS / FSA layer's own behaviour, on small generated inputs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mgc.models.ecapa_tdnn import (
    AttentiveStatsPooling,
    ChannelSeparation,
    ConvReluBN,
    FeatureExtractor,
    Res2Conv1D,
    SEBlock,
    SERes2Block,
    SubBandAggregator,
)

RNG = np.random.default_rng(0)


def _x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype("float32")


# ---------------------------------------------------------------- attentive statistics pooling


def test_attention_weights_sum_to_one_over_time():
    pool = AttentiveStatsPooling(16, attention_channels=8)
    x = _x(3, 40, 16)
    w = np.asarray(pool.attention(x))
    assert w.shape == (3, 40, 16)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
    assert (w > 0).all()


def test_pooling_matches_the_authors_formula():
    """Concatenated global context through one (3C, A) conv, as the authors write it, in NumPy."""
    c, a, t = 6, 4, 25
    pool = AttentiveStatsPooling(c, attention_channels=a)
    x = _x(2, t, c) * 3.0
    out = np.asarray(pool(x)).astype("float64")

    xd = x.astype("float64")
    mean = xd.mean(axis=1, keepdims=True)
    std = np.sqrt(np.maximum(xd.var(axis=1, ddof=1, keepdims=True), 1e-4))
    context = np.concatenate([xd, np.repeat(mean, t, 1), np.repeat(std, t, 1)], axis=-1)
    h = np.maximum(context @ np.asarray(pool.attention_kernel) + np.asarray(pool.attention_bias), 0)
    bn = pool.attention_bn  # inference: moving mean 0, var 1
    h = np.tanh((h - np.asarray(bn.moving_mean)) / np.sqrt(np.asarray(bn.moving_variance) + bn.epsilon)
                * np.asarray(bn.gamma) + np.asarray(bn.beta))
    logits = h @ np.asarray(pool.attention_out.kernel) + np.asarray(pool.attention_out.bias)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    mu = (xd * w).sum(axis=1)
    sigma = np.sqrt(np.maximum((xd**2 * w).sum(axis=1) - mu**2, 1e-4))
    np.testing.assert_allclose(out, np.concatenate([mu, sigma], axis=-1), rtol=1e-4, atol=1e-5)


def test_std_is_clamped_at_1e_minus_4_variance():
    pool = AttentiveStatsPooling(5, attention_channels=3)
    constant = np.full((2, 30, 5), 2.5, "float32")
    out = np.asarray(pool(constant))
    np.testing.assert_allclose(out[:, :5], 2.5, rtol=1e-6)  # weighted mean
    np.testing.assert_allclose(out[:, 5:], 0.01, rtol=1e-3)  # sqrt(1e-4), not 0 (and not NaN)
    mean, std = pool._global_stats(tf.constant(constant))
    np.testing.assert_allclose(np.asarray(std), 0.01, rtol=1e-3)


def test_global_std_uses_the_unbiased_variance():
    pool = AttentiveStatsPooling(4, attention_channels=2)
    x = _x(1, 10, 4)
    _, std = pool._global_stats(tf.constant(x))
    np.testing.assert_allclose(np.asarray(std)[0, 0], x[0].std(axis=0, ddof=1), rtol=1e-5)


def test_pooling_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        pool = AttentiveStatsPooling(4, attention_channels=2)
        big = np.full((1, 10, 4), 300.0, "float16")  # x^2 overflows float16 (max 65504)
        big[0, ::2] = 310.0
        out = pool(big)
        assert out.dtype == "float32"
        assert np.isfinite(np.asarray(out)).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ---------------------------------------------------------------- CCS


def test_channel_separation_splits_continuous_then_stop():
    x = _x(2, 7, 10)
    cont, stop = ChannelSeparation(6)(x)
    np.testing.assert_array_equal(np.asarray(cont), x[..., :6])
    np.testing.assert_array_equal(np.asarray(stop), x[..., 6:])


def test_stop_channels_reach_pooling_and_nothing_else():
    """A later block's input has zero gradient w.r.t. an earlier block's stop channels."""
    c, m = 16, 8
    extractor = FeatureExtractor(12, c, m, scale=4, se_channels=4, dilations=(2, 3, 4))
    x = tf.constant(_x(2, 20, 12))
    with tf.GradientTape(persistent=True) as tape:
        trace = extractor.trace(x, training=False)
        later_input = trace["block_inputs"][2]  # the third block's input
        stops = tf.concat(trace["stop"], axis=-1)
    first_out = trace["block_outputs"][0]
    grad = tape.gradient(later_input, first_out).numpy()
    assert np.abs(grad[..., :c]).sum() > 0  # continuous channels do flow on
    assert np.abs(grad[..., c:]).max() == 0  # stop channels never reach a later block
    grad_stop = tape.gradient(stops, first_out).numpy()
    assert np.abs(grad_stop[..., c:]).sum() > 0  # ...but they are part of the pooled output


def test_blocks_receive_the_running_sum():
    extractor = FeatureExtractor(12, 16, 0, scale=4, se_channels=4)
    x = _x(1, 15, 12)
    trace = extractor.trace(tf.constant(x), training=False)
    first = np.asarray(trace["block_inputs"][0])
    outs = [np.asarray(o) for o in trace["block_outputs"]]
    np.testing.assert_allclose(np.asarray(trace["block_inputs"][1]), first + outs[0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(trace["block_inputs"][2]), first + outs[0] + outs[1], atol=1e-5)
    assert np.asarray(extractor(x)).shape == (1, 15, 48)  # no stop channels: one tensor out


# ---------------------------------------------------------------- FSA


def test_sub_band_aggregator_cuts_the_paper_bands_and_gives_each_its_own_weights():
    bands = [[0, 18], [10, 28], [20, 38], [30, 48]]
    agg = SubBandAggregator(bands, [8] * 4, [4] * 4, extractor=dict(scale=4, se_channels=4))
    mel = _x(2, 30, 48)
    pieces = agg.split_bands(mel)
    for (start, end), piece in zip(bands, pieces):
        np.testing.assert_array_equal(np.asarray(piece), mel[..., start:end])
    cont, stop = agg(mel)
    assert cont.shape == (2, 30, 3 * 8 * 4) and stop.shape == (2, 30, 3 * 4 * 4)
    # Each band has its own extractor, first conv sized for 18 bins, no variable shared.
    kernels = [e.first.conv.kernel for e in agg.extractors]
    assert [tuple(k.shape) for k in kernels] == [(5, 18, 8)] * 4
    ids = [id(v) for e in agg.extractors for v in e.weights]
    assert len(ids) == len(set(ids))
    # Changing bins 0..9 reaches only band 0; changing bins 12..17 reaches bands 0 and 1.
    for lo, hi, touched in ((0, 10, {0}), (12, 18, {0, 1}), (40, 48, {3})):
        moved = mel.copy()
        moved[..., lo:hi] += 1.0
        changed = {
            i for i, e in enumerate(agg.extractors)
            if not np.allclose(np.asarray(e(agg.split_bands(mel)[i])[0]), np.asarray(e(agg.split_bands(moved)[i])[0]))
        }
        assert changed == touched


def test_sub_band_aggregator_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="one entry per band"):
        SubBandAggregator([[0, 18], [10, 28]], [8], [4, 4])
    with pytest.raises(ValueError, match="all zero or all positive"):
        SubBandAggregator([[0, 18], [10, 28]], [8, 8], [0, 4])


# ---------------------------------------------------------------- Res2Net, SE, SE-Res2Block


def test_res2conv_groups_are_hierarchical_and_last_group_passes_unchanged():
    layer = Res2Conv1D(32, kernel_size=3, dilation=2, scale=4)
    x = tf.constant(_x(1, 12, 32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=False)
        group1_out = y[..., :8]
    np.testing.assert_array_equal(np.asarray(y)[..., 24:], np.asarray(x)[..., 24:])
    grad = tape.gradient(group1_out, x).numpy()
    assert np.abs(grad[..., :8]).sum() > 0 and np.abs(grad[..., 8:]).max() == 0  # group 1 sees only itself
    with tf.GradientTape() as tape:
        tape.watch(x)
        group3_out = layer(x, training=False)[..., 16:24]
    grad = tape.gradient(group3_out, x).numpy()
    assert all(np.abs(grad[..., g * 8:(g + 1) * 8]).sum() > 0 for g in range(3))  # groups 1..3 feed group 3
    assert np.abs(grad[..., 24:]).max() == 0


def test_res2conv_dilation_reaches_the_expected_context():
    layer = Res2Conv1D(8, kernel_size=3, dilation=3, scale=2)
    x = tf.constant(_x(1, 21, 8))
    with tf.GradientTape() as tape:
        tape.watch(x)
        centre = layer(x, training=False)[0, 10, :4]
    grad = np.abs(tape.gradient(centre, x).numpy()[0, :, :4]).sum(axis=1)
    assert set(np.flatnonzero(grad)) == {7, 10, 13}


def test_se_block_scales_channels_by_gates_in_0_1():
    se = SEBlock(12, bottleneck=4)
    x = _x(2, 9, 12)
    gates = np.asarray(se.gates(x))
    assert gates.shape == (2, 1, 12) and ((gates > 0) & (gates < 1)).all()
    np.testing.assert_allclose(np.asarray(se(x)), x * gates, rtol=1e-6)


def test_se_res2block_has_a_shortcut_only_when_channels_change():
    same = SERes2Block(16, 16, scale=4, se_channels=4)
    wider = SERes2Block(16, 24, scale=4, se_channels=4)
    x = _x(1, 10, 16)
    assert same(x).shape == (1, 10, 16) and wider(x).shape == (1, 10, 24)
    assert same.shortcut is None and wider.shortcut is not None


def test_conv_relu_bn_order():
    layer = ConvReluBN(3, 5, kernel_size=3)
    x = _x(2, 8, 3)
    y = np.asarray(layer(x, training=False))
    conv = np.maximum(np.asarray(layer.conv(x)), 0)  # ReLU before BN: BN (identity at init) sees >= 0
    np.testing.assert_allclose(y, conv / np.sqrt(1 + 1e-5), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- serialisation

LAYERS = [
    lambda: ConvReluBN(4, 6, 3, 2),
    lambda: Res2Conv1D(16, 3, 2, 4),
    lambda: SEBlock(8, 4),
    lambda: SERes2Block(8, 12, 3, 2, 4, 4),
    lambda: FeatureExtractor(10, 8, 4, scale=4, se_channels=4),
    lambda: SubBandAggregator([[0, 6], [4, 10]], [8, 8], [4, 4], extractor=dict(scale=4, se_channels=4)),
    lambda: AttentiveStatsPooling(6, 4),
]


@pytest.mark.parametrize("make", LAYERS)
def test_layer_config_round_trip(make):
    layer = make()
    in_channels = {"ConvReluBN": 4, "FeatureExtractor": 10, "SubBandAggregator": 10}.get(type(layer).__name__, 0)
    in_channels = in_channels or layer.get_config().get("in_channels") or layer.get_config()["channels"]
    x = _x(2, 11, in_channels)
    out = layer(x)
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    clone(x)
    clone.set_weights(layer.get_weights())
    for a, b in zip(keras.tree.flatten(out), keras.tree.flatten(clone(x))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert clone.get_config() == layer.get_config()
