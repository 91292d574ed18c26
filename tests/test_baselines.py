"""The paper's baselines (ResNet18/34, SE-ResNet34, VGG, BBNN) as backbones of the one builder.

Full-size models only for the parameter counts (building is cheap); every behaviour test
uses a reduced-width version of the same architecture.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_mgc.config import BBNNConfig, RecipeError, ResNetConfig, VGGConfig, parse_recipe
from keras_mgc.models import build_model, count_params, instance_norm

#: The authors' trainable parameter counts (PyTorch counting), DESIGN.md "Added December 2026".
AUTHORS_COUNTS = {
    "#5 ResNet18 GTZAN": ({"backbone": "resnet18"}, 10, 11_179_658),
    "#6 ResNet34 GTZAN": ({"backbone": "resnet34"}, 10, 21_287_818),
    "#7 SE-ResNet34 GTZAN": ({"backbone": "se_resnet34"}, 10, 21_606_434),
    "#17 VGGNet Melon": ({"backbone": "vgg", "input": "mel"}, 28, 39_477_980),
    "#18 ResNet18 Melon": ({"backbone": "resnet18", "input": "mel"}, 28, 11_188_892),
    "#19 ResNet34 Melon": ({"backbone": "resnet34", "input": "mel"}, 28, 21_297_052),
    "#20 SE-ResNet34 Melon": ({"backbone": "se_resnet34", "input": "mel"}, 28, 21_615_668),
    "#21 BBNN Melon": ({"backbone": "bbnn", "input": "mel"}, 28, 32_450),
}

#: Reduced-width versions of each architecture (same code paths, a few thousand parameters).
TINY = {
    "resnet18": {"backbone": "resnet18", "stage_channels": [4, 8, 8, 8]},
    "resnet34": {"backbone": "resnet34", "stage_channels": [4, 4, 4, 4]},
    "se_resnet34": {"backbone": "se_resnet34", "stage_channels": [8, 8, 8, 8], "blocks": [1, 1, 1, 1]},
    "vgg": {"backbone": "vgg", "frames": 32, "block_channels": [4, 4, 8, 8, 8], "dense_units": 16},
    "bbnn": {"backbone": "bbnn", "channels": 4, "dense_layers": 2},
}


def _input(model: keras.Model, batch: int = 2, seed: int = 0) -> np.ndarray:
    shape = model.input_shape
    length = shape[1] or (40 if len(shape) == 3 else 40 * 256)  # a short clip: 41 frames
    full = (batch, length) + tuple(shape[2:])
    return (np.random.default_rng(seed).standard_normal(full) * 0.1).astype("float32")


@pytest.mark.parametrize("row", list(AUTHORS_COUNTS))
def test_parameter_counts_equal_the_authors_models(row):
    cfg, classes, expected = AUTHORS_COUNTS[row]
    keras.backend.clear_session()
    assert count_params(build_model(cfg, classes)) == expected


def test_instance_norm_is_torch_instancenorm1d_over_time():
    """(x - mean_t) / sqrt(biased var_t + 1e-5), per example and mel bin, no learned affine."""
    x = np.random.default_rng(0).normal(3.0, 2.0, (2, 50, 48)).astype("float32")
    x[1, :, 5] = 7.0  # a constant bin: var 0, eps keeps it finite (0 out)
    mean = x.mean(axis=1, keepdims=True)
    expected = (x - mean) / np.sqrt(x.var(axis=1, keepdims=True) + 1e-5)
    layer = instance_norm(48)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=2e-5)
    assert layer.count_params() == 0


def test_image_baselines_normalise_themselves_and_have_a_linear_head():
    model = build_model(TINY["resnet18"], 10)
    assert not model.get_layer("frontend").mean_normalize  # log(mel + 1e-6) only
    backbone = model.get_layer("backbone")
    assert backbone.get_layer("instance_norm") is not None
    assert [w.path.split("/")[-1] for w in model.get_layer("head").weights] == ["kernel", "bias"]
    assert BBNNConfig().instance_norm is False  # the authors' Melon BBNN takes the mels as they are


def test_resnet_shapes_follow_the_authors_strides():
    """7x7/2 unpadded stem, 3x3/2 pool, then every stage strided by 2: 48 mels -> 21 -> 10 -> 5, 3, 2, 1."""
    backbone = build_model({**TINY["resnet18"], "input": "mel"}, 10).get_layer("backbone")
    assert backbone.get_layer("stem_conv").output.shape[1:3] == (21, None)
    assert backbone.get_layer("stem_pool").output.shape[1] == 10
    assert [backbone.get_layer(f"stage{k}_block2").output.shape[1] for k in (1, 2, 3, 4)] == [5, 3, 2, 1]
    image = np.asarray(backbone.get_layer("image")(np.zeros((1, 174, 48), "float32")))
    assert image.shape == (1, 48, 174, 1)  # (mel, time) image, as the authors' x.unsqueeze(1)


def test_vgg_first_dense_layer_fixes_the_input_length():
    model = build_model({"backbone": "vgg", "input": "mel"}, 28)
    assert model.input_shape == (None, 200, 48)
    assert model.get_layer("backbone").get_layer("fc1").input.shape[-1] == 3072  # 512 x 1 x 6 after 5 pools
    wave = build_model(TINY["vgg"], 10)
    assert wave.input_shape == (None, 31 * 256)  # 1 + N // 256 = 32 frames
    assert VGGConfig(**TINY["vgg"]).fixed_input_length() == 31 * 256
    assert ResNetConfig(backbone="resnet18").fixed_input_length() is None


@pytest.mark.parametrize(("model", "message"), [
    ({"backbone": "resnet18", "se_reduction": 4}, "model.se_reduction: backbone 'resnet18' has no squeeze-excitation"),
    ({"backbone": "resnet34", "channels": 64}, "model.channels: unknown key"),
    ({"backbone": "vgg", "frames": 16}, "model.frames: 16 vanish after 5 2x2 pools"),
    ({"backbone": "bbnn", "res2_scale": 4}, "model.res2_scale: unknown key"),
    ({"backbone": "resnet50"}, "model.backbone: unknown backbone"),
    ({"backbone": "resnet18", "blocks": [2, 2]}, "model.blocks: 4 stage widths but 2 block counts"),
])
def test_a_wrong_key_for_the_backbone_names_the_key_path(model, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(")):
        parse_recipe({"name": "x", "data": {"dataset": "synthetic"}, "model": model})


def test_unknown_key_lists_the_keys_of_that_backbone():
    with pytest.raises(RecipeError) as err:
        parse_recipe({"name": "x", "data": {"dataset": "synthetic"}, "model": {"backbone": "vgg", "frame": 200}})
    assert "model.frame: unknown key; did you mean 'frames'?" in str(err.value)
    assert "dense_units" in str(err.value) and "attention_channels" not in str(err.value)


def test_a_fixed_length_model_needs_the_matching_crop():
    with pytest.raises(RecipeError, match=r"data.crop_samples: .*exactly 200 frames.*must be 50944 samples"):
        parse_recipe({"name": "x", "data": {"dataset": "synthetic"}, "model": {"backbone": "vgg"}})
    recipe = parse_recipe({"name": "x", "data": {"dataset": "synthetic", "crop_samples": 50944},
                           "model": {"backbone": "vgg"}})
    assert isinstance(recipe.model, VGGConfig)


@pytest.mark.parametrize("name", list(TINY))
def test_get_config_round_trip_and_keras_file_give_identical_outputs(name, tmp_path):
    model = build_model(TINY[name], 10)
    rng = np.random.default_rng(1)
    for weight in model.non_trainable_weights:  # BatchNorm statistics away from their initial values
        weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))
    x = _input(model, seed=3)
    expected = np.asarray(model(x, training=False))
    assert np.isfinite(expected).all()

    rebuilt = keras.Model.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_array_equal(np.asarray(rebuilt(x, training=False)), expected)

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), expected)


@pytest.mark.parametrize("name", ["resnet18", "se_resnet34", "vgg", "bbnn"])
def test_mixed_precision_training_step_has_a_finite_loss(name):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(TINY[name], 10)
        assert model.get_layer("backbone").compute_dtype == "bfloat16"
        assert model.output.dtype == "float32"  # the head (and the loss) stay in float32
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = _input(model, batch=4)
        loss = model.train_on_batch(x, np.array([0, 1, 2, 3]))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert np.isfinite(loss)
