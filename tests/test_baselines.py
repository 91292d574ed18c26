"""The paper's baselines (ResNet18/34, SE-ResNet34, VGG, BBNN) as backbones of the one builder.

Full-size models only for the parameter counts (building is cheap); every behaviour test
uses a reduced-width version of the same architecture.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_mgc import presets
from keras_mgc.config import BBNNConfig, RecipeError, ResNetConfig, VGGConfig, parse_recipe
from keras_mgc.models import build_model, instance_norm

#: The baseline presets with the authors' trainable parameter counts (PyTorch counting).
BASELINE_PRESETS = [p for p in presets.PRESETS.values()
                    if p.authors_params and p.model["backbone"] != "ecapa_tdnn"]

#: Reduced-width versions of each architecture (same code paths, a few thousand parameters).
TINY = {name: f"tiny_{name}" for name in ("resnet18", "resnet34", "se_resnet34", "vgg", "bbnn")}


def _input(model: keras.Model, batch: int = 2, seed: int = 0) -> np.ndarray:
    shape = model.input_shape
    length = shape[1] or (40 if len(shape) == 3 else 40 * 256)  # a short clip: 41 frames
    full = (batch, length) + tuple(shape[2:])
    return (np.random.default_rng(seed).standard_normal(full) * 0.1).astype("float32")


def test_every_baseline_row_has_its_authors_count():
    """The published counts (the models are built and counted in tests/test_models.py)."""
    counts = {p.paper_ref: (p.authors_classes, p.authors_params) for p in BASELINE_PRESETS}
    assert counts == {"#5": (10, 11_179_658), "#6": (10, 21_287_818), "#7": (10, 21_606_434),
                      "#17": (28, 39_477_980), "#18": (28, 11_188_892), "#19": (28, 21_297_052),
                      "#20": (28, 21_615_668), "#21": (28, 32_450)}  # DESIGN.md, "Added December 2026"


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
    model = build_model(presets.model_config(TINY["resnet18"]), 10)
    assert not model.get_layer("frontend").mean_normalize  # log(mel + 1e-6) only
    backbone = model.get_layer("backbone")
    assert backbone.get_layer("instance_norm") is not None
    assert [w.path.split("/")[-1] for w in model.get_layer("head").weights] == ["kernel", "bias"]
    assert BBNNConfig().instance_norm is False  # the authors' Melon BBNN takes the mels as they are


def test_resnet_shapes_follow_the_authors_strides():
    """7x7/2 unpadded stem, 3x3/2 pool, then every stage strided by 2: 48 mels -> 21 -> 10 -> 5, 3, 2, 1."""
    backbone = build_model(presets.model_config(TINY["resnet18"], input="mel"), 10).get_layer("backbone")
    assert backbone.get_layer("stem_conv").output.shape[1:3] == (21, None)
    assert backbone.get_layer("stem_pool").output.shape[1] == 10
    assert [backbone.get_layer(f"stage{k}_block2").output.shape[1] for k in (1, 2, 3, 4)] == [5, 3, 2, 1]
    image = np.asarray(backbone.get_layer("image")(np.zeros((1, 174, 48), "float32")))
    assert image.shape == (1, 48, 174, 1)  # (mel, time) image, as the authors' x.unsqueeze(1)


def test_vgg_first_dense_layer_fixes_the_input_length():
    model = build_model({"backbone": "vgg", "input": "mel"}, 28)
    assert model.input_shape == (None, 200, 48)
    assert model.get_layer("backbone").get_layer("fc1").input.shape[-1] == 3072  # 512 x 1 x 6 after 5 pools
    wave = build_model(presets.model_config(TINY["vgg"]), 10)
    assert wave.input_shape == (None, 31 * 256)  # 1 + N // 256 = 32 frames
    assert presets.model_config(TINY["vgg"]).fixed_input_length() == 31 * 256
    assert presets.model_config(TINY["vgg"]).fixed_samples() == 31 * 256
    assert VGGConfig(input="mel").fixed_input_length() == 200 and VGGConfig(input="mel").fixed_samples() == 199 * 256
    assert ResNetConfig(backbone="resnet18").fixed_input_length() is None
    assert ResNetConfig(backbone="resnet18").fixed_samples() is None


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
    model = build_model(presets.model_config(TINY[name]), 10)
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
        model = build_model(presets.model_config(TINY[name]), 10)
        assert model.get_layer("backbone").compute_dtype == "bfloat16"
        assert model.output.dtype == "float32"  # the head (and the loss) stay in float32
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = _input(model, batch=4)
        loss = model.train_on_batch(x, np.array([0, 1, 2, 3]))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert np.isfinite(loss)


class _Clips:
    """A stand-in for ClipStore: clips by position."""

    def __init__(self, clips: list[np.ndarray]) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def get(self, i: int) -> np.ndarray:
        return self.clips[i]


def test_whole_clip_of_a_fixed_length_model_is_the_mean_over_covering_windows():
    from keras_mgc.scoring import Predictor
    from keras_mgc.windows import covering_windows

    model = build_model(presets.model_config(TINY["vgg"], input="mel"), 10)
    predictor = Predictor(model)
    assert predictor.fixed_length == 32
    rng = np.random.default_rng(4)
    long, short = rng.standard_normal((75, 48)).astype("float32"), rng.standard_normal((20, 48)).astype("float32")
    probs = predictor.whole(_Clips([long, short]))
    windows = covering_windows(long, 32)
    assert windows.shape == (3, 32, 48)  # frames 0-31, 32-63, and 43-74 aligned to the end
    expected = np.asarray(keras.ops.softmax(model(windows, training=False))).mean(axis=0)
    np.testing.assert_allclose(probs[0], expected, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    tta = predictor.tta(_Clips([long]), crop=32, n_crops=4)
    assert tta.shape == (1, 10) and tta.sum() == pytest.approx(4.0, abs=1e-4)


def test_step_schedule_is_torch_steplr():
    from keras_mgc.config import OptimizerConfig, ScheduleConfig
    from keras_mgc.fold_trainer import learning_rate_at

    opt, sched = OptimizerConfig(learning_rate=1e-3), ScheduleConfig(name="step", gamma=0.95)
    assert [learning_rate_at(e, 80, opt, sched) for e in (0, 1, 2, 10)] == pytest.approx(
        [1e-3, 0.95e-3, 0.95 ** 2 * 1e-3, 0.95 ** 10 * 1e-3])
    every_3 = ScheduleConfig(name="step", gamma=0.5, step_size=3)
    assert [learning_rate_at(e, 80, opt, every_3) for e in range(7)] == pytest.approx(
        [1e-3] * 3 + [5e-4] * 3 + [2.5e-4])


BASELINE_RECIPES = ["gtzan_04_bbnn", "gtzan_05_resnet18", "gtzan_06_resnet34", "gtzan_07_se_resnet34",
                    "melon_17_vgg", "melon_18_resnet18", "melon_19_resnet34", "melon_20_se_resnet34", "melon_21_bbnn"]


@pytest.mark.parametrize("name", BASELINE_RECIPES)
def test_a_recipe_per_baseline_row_names_its_preset_and_the_published_number(name, tmp_path):
    from keras_mgc import paper
    from keras_mgc.config import load_recipe
    from tests.conftest import REPO_ROOT

    recipe = load_recipe(REPO_ROOT / "recipes" / f"{name}.yaml", [f"data.root={tmp_path}"])
    row = paper.find(recipe.paper_ref)
    assert recipe.paper_accuracy == row.accuracy
    preset = presets.get(row.preset)
    assert preset.paper_ref == row.ref and recipe.model.backbone == preset.model["backbone"]
    # The recipe's model is the preset's (Melon recipes add synchronised BatchNorm for several GPUs).
    assert recipe.model == presets.model_config(row.preset, input=recipe.model.input,
                                                sync_batchnorm=recipe.model.sync_batchnorm)
    assert recipe.data.dataset == row.dataset


def test_every_published_row_has_a_preset_and_a_recipe():
    from keras_mgc import paper
    from keras_mgc.config import read_recipe_document
    from tests.conftest import REPO_ROOT

    refs = {}
    for path in (REPO_ROOT / "recipes").glob("[gm]*.yaml"):
        doc = read_recipe_document(path)
        refs.setdefault(doc.get("paper_ref"), []).append(doc["name"])
        if doc.get("paper_ref"):  # the recipes' published numbers are keras_mgc.paper's
            assert doc["paper_accuracy"] == paper.find(doc["paper_ref"]).accuracy, path.name
    for row in paper.rows():
        assert presets.get(row.preset).paper_ref in (row.ref, "#15")  # #16 is #15 with TTA
        assert row.ref in refs, f"no recipe for {row.ref} {row.system}"


@pytest.mark.parametrize("name", list(TINY))
def test_the_recorded_recipe_validates_again(name):
    """A run records the full recipe (every default written out); export and evaluate re-read it."""
    import yaml

    from keras_mgc.config import recipe_to_dict

    crop = 31 * 256
    recipe = parse_recipe({"name": "x", "data": {"dataset": "synthetic", "crop_samples": crop},
                           "model": {"preset": TINY[name]}})
    again = parse_recipe(yaml.safe_load(yaml.safe_dump(recipe_to_dict(recipe))))
    assert again.model == recipe.model and again.model.backbone == name
