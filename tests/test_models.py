"""The builder: every published ECAPA system is one configuration; the built models behave."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mgc import presets
from keras_mgc.config import ECAPAConfig
from keras_mgc.contract import DEFAULT_CROP_SAMPLES
from keras_mgc.models import build_model, count_params, load_float32, with_input
from keras_mgc.models.__main__ import PAPER_SYSTEMS

# Small versions of the three kinds of system, for behaviour tests on a CPU (Res2Net scale 2
# keeps the graph small: tracing a training step costs more than running it here).
_SMALL = {"se_channels": 8, "attention_channels": 16, "res2_scale": 2}
SMALL = {
    "vanilla": {"channels": 32, **_SMALL},
    "ccs": presets.get("tiny").model,  # the same numbers as _SMALL
    "ccs_fsa": {"channels": 64, "ccs": {"stop": 32}, "fsa": {"enabled": True}, **_SMALL},
}
CROP = DEFAULT_CROP_SAMPLES


def _audio(batch: int, samples: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((batch, samples)) * 0.1).astype("float32")


def test_the_models_table_has_every_system_with_a_known_count():
    """The eight GTZAN ECAPA systems (10 classes) and the eight baselines (#5-#7: 10, #17-#21: 28)."""
    assert sorted(int(p.paper_ref[1:]) for p in PAPER_SYSTEMS) == [*range(5, 16), *range(17, 22)]


@pytest.mark.parametrize("system", PAPER_SYSTEMS, ids=lambda p: p.name)
def test_parameter_counts_equal_the_authors_models(system):
    keras.backend.clear_session()
    model = build_model(presets.model_config(system.name), num_classes=system.authors_classes)
    assert count_params(model) == system.authors_params


def test_pooled_sizes_follow_the_paper():
    cases = {"paper_12_ccs_s512_c1024": 2 * 3840, "paper_15_ccs_fsa_s512_c1024": 6144, "paper_08_ecapa": 3072}
    for system, pooled in cases.items():
        model = build_model(presets.model_config(system), num_classes=10)
        assert model.get_layer("backbone").output_shape == (None, pooled)


def test_number_of_classes_comes_from_the_caller():
    model = build_model(ECAPAConfig(**SMALL["ccs"]), num_classes=28)
    assert model.output_shape == (None, 28)
    with pytest.raises(ValueError, match="num_classes"):
        build_model(ECAPAConfig(**SMALL["ccs"]), num_classes=1)


@pytest.mark.parametrize("kind", list(SMALL))
def test_time_length_is_free(kind):
    model = build_model(ECAPAConfig(**SMALL[kind]), num_classes=10)
    crop = model(_audio(2, CROP), training=False)
    clip = model(_audio(1, 30 * 22050), training=False)
    assert crop.shape == (2, 10) and clip.shape == (1, 10)
    assert np.isfinite(np.asarray(clip)).all()


@pytest.mark.parametrize("kind", list(SMALL))
def test_save_and_load_give_identical_outputs(kind, tmp_path):
    model = build_model(ECAPAConfig(**SMALL[kind]), num_classes=10)
    # Move BatchNorm statistics away from their initial values so that they are checked too.
    rng = np.random.default_rng(1)
    for weight in model.non_trainable_weights:
        weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    audio = _audio(2, CROP, seed=5)
    np.testing.assert_array_equal(np.asarray(model(audio)), np.asarray(loaded(audio)))
    assert count_params(loaded) == count_params(model)


def test_mel_input_path_skips_the_front_end():
    cfg = ECAPAConfig(input="mel", **SMALL["ccs_fsa"])
    model = build_model(cfg, num_classes=28)
    mel = np.random.default_rng(0).standard_normal((2, 174, 48)).astype("float32")
    assert model(mel).shape == (2, 28)
    assert model.input.shape == (None, None, 48)


def test_with_input_shares_weights_between_audio_and_mel_entry_points():
    cfg = ECAPAConfig(**SMALL["ccs"])
    model = build_model(cfg, num_classes=10)
    audio = _audio(1, CROP)
    mel_model = with_input(model, "mel", cfg)
    raw_logmel = keras.layers.Lambda(lambda a: a)(model.get_layer("frontend")(audio))
    # The mel entry point normalises its input itself, so un-normalised log-mels give the same answer.
    out = mel_model(np.asarray(raw_logmel) + 4.0)
    np.testing.assert_allclose(np.asarray(out["logits"]), np.asarray(model(audio)), atol=1e-4)
    assert out["embedding"].shape == (1, model.get_layer("backbone").output_shape[-1])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("kind", list(SMALL))
def test_mixed_precision_trains_with_finite_loss(policy, kind):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model(ECAPAConfig(**SMALL[kind]), num_classes=10)
        optimizer = keras.optimizers.AdamW(1e-3, weight_decay=1e-5)
        if policy == "mixed_float16":
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        before = [np.array(w) for w in model.trainable_weights]
        # Batches of one: dynamic loss scaling may skip the first steps while it finds its scale.
        history = model.fit(_audio(8, CROP) * 30.0, np.arange(8) % 10, batch_size=1, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        assert any(not np.array_equal(b, np.asarray(w)) for b, w in zip(before, model.trainable_weights))
        # The numerically sensitive parts run in float32; the convolutions in the low precision.
        compute = policy.removeprefix("mixed_")
        assert model.get_layer("frontend").compute_dtype == "float32"
        assert model.get_layer("backbone").get_layer("pooling").compute_dtype == "float32"
        assert model.get_layer("head").compute_dtype == "float32"
        assert model.get_layer("backbone").get_layer("sub_bands").compute_dtype == compute
        assert model(_audio(1, CROP)).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_models_cli_lists_every_published_row():
    from keras_mgc import paper

    out = subprocess.run(
        [sys.executable, "-m", "keras_mgc.models", "--no-flops"], capture_output=True, text=True, check=True
    ).stdout
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("#")}
    assert list(lines) == [row.ref for row in paper.rows()]  # Table 2 then Table 3, in order
    for system in PAPER_SYSTEMS:
        expected = f"{system.authors_params:,}"
        assert lines[system.paper_ref][-5:-3] == [expected, expected]  # params, authors
    for row in paper.rows():
        assert lines[row.ref][-1] == f"{row.accuracy:.1f}"  # the published accuracy beside it
    assert "differs" not in out


def test_flop_count_scales_with_audio_length():
    from keras_mgc.models.flops import count_flops

    model = build_model(ECAPAConfig(**SMALL["vanilla"]), num_classes=10)
    one, two = count_flops(model, 22050 * 2), count_flops(model, 22050 * 4)
    assert 1.9 < two["total"] / one["total"] < 2.05
    assert 0 < one["frontend"] < one["total"]
    # The front end's mel projection alone: frames x 1025 frequency bins x 48 mel bins x 2 (multiply,
    # add). The spectrum itself is an FFT in Keras (issue 14), which TF's profiler does not count.
    frames = 1 + 22050 * 2 // 256
    assert one["frontend"] >= frames * 1025 * 48 * 2


def test_load_float32_rebuilds_a_mixed_precision_model_in_float32(tmp_path):
    cfg = ECAPAConfig(**SMALL["ccs"])
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(cfg, num_classes=10)
        model.save(tmp_path / "mixed.keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    reloaded = keras.models.load_model(tmp_path / "mixed.keras")
    assert reloaded.get_layer("backbone").get_layer("sub_bands").compute_dtype == "bfloat16"  # the trap
    f32 = load_float32(str(tmp_path / "mixed.keras"), cfg, 10, dft_precision="float32")
    assert f32.get_layer("backbone").get_layer("sub_bands").compute_dtype == "float32"
    assert f32.get_layer("frontend").dft_precision == "float32"
    for a, b in zip(f32.weights, model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    audio = _audio(1, CROP)
    np.testing.assert_allclose(np.asarray(f32(audio)), np.asarray(reloaded(audio)), atol=0.05)
    with pytest.raises(ValueError, match="weights"):
        load_float32(str(tmp_path / "mixed.keras"), ECAPAConfig(**SMALL["vanilla"]), 10)
