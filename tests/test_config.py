"""Recipe validation: every published recipe is valid; every bad key stops with its key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from keras_mgc import presets
from keras_mgc.config import RecipeError, apply_overrides, load_recipe, parse_recipe, recipe_to_dict

RECIPES = sorted(p for p in (Path(__file__).parents[1] / "recipes").glob("*.yaml") if not p.name.startswith("_"))
GOOD = {"name": "t", "data": {"dataset": "synthetic"}}


def _error(document: dict, overrides: list[str] | None = None) -> str:
    with pytest.raises(RecipeError) as info:
        parse_recipe(document, "r.yaml", overrides)
    return str(info.value)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_is_valid(path, tmp_path):
    overrides = [] if path.stem == "quickstart" else [f"data.root={tmp_path}"]
    recipe = load_recipe(path, overrides)
    assert recipe.name == path.stem
    if path.stem.startswith(("gtzan", "melon")):
        assert recipe.paper_accuracy is not None and recipe.paper_ref


def test_gtzan_recipes_are_the_paper_systems(tmp_path):
    """Each GTZAN recipe's model is the preset of its paper system, whose parameters we pin."""
    by_number = {p.paper_ref: p for p in presets.PRESETS.values() if p.authors_params is not None}
    for path in RECIPES:
        if not path.stem.startswith("gtzan_") or path.stem == "gtzan_cv":
            continue
        recipe = load_recipe(path, [f"data.root={tmp_path}"])
        assert recipe.data.split == "paper_10fold" and recipe.data.data_cycle == 8
        if recipe.paper_ref == "#4":  # BBNN: #21's hyper-parameters (tests/test_baselines.py, BUILD_NOTES.md)
            continue
        number = "#15" if recipe.paper_ref == "#16" else recipe.paper_ref
        assert recipe.model.preset == by_number[number].name, path.name
        expected = parse_recipe({**GOOD, "model": by_number[number].model}).model
        assert recipe.model.model_dump(exclude={"preset"}) == expected.model_dump(exclude={"preset"}), path.name
        assert (recipe.seed, recipe.train.epochs, recipe.train.batch_size, recipe.data.data_cycle) == (3823, 80, 64, 8)
        assert recipe.data.crop_samples == 44356
    headline = load_recipe(Path(RECIPES[0]).parent / "gtzan_cv.yaml", [f"data.root={tmp_path}"])
    assert headline.eval.headline == "tta" and headline.model.band_stop() == [128] * 4


def test_melon_recipes_take_mels_with_the_papers_batch_and_seed(tmp_path):
    for path in RECIPES:
        if path.stem.startswith("melon_"):
            recipe = load_recipe(path, [f"data.root={tmp_path}"])
            assert recipe.model.input == "mel" and recipe.model.sync_batchnorm
            assert recipe.model.preset == f"paper_{recipe.paper_ref[1:]}_" + path.stem.split("_", 2)[2]
            assert recipe.data.dataset == "melon"
            if recipe.model.backbone == "ecapa_tdnn":  # the baselines' own protocols: BUILD_NOTES.md "Baselines"
                assert (recipe.seed, recipe.train.batch_size) == (4021, 256)


def test_unknown_key_names_its_path_and_suggests():
    msg = _error({**GOOD, "train": {"epoch": 3}})
    assert "train.epoch: unknown key; did you mean 'epochs'?" in msg


def test_wrong_type_names_key_and_value():
    msg = _error({**GOOD, "train": {"batch_size": "sixty-four"}})
    assert "train.batch_size" in msg and "valid integer" in msg and "'sixty-four'" in msg


def test_negative_epochs_rejected():
    assert "train.epochs: Input should be greater than 0 (got -1)" in _error(GOOD, ["train.epochs=-1"])


def test_learning_rate_floor_above_start_rejected():
    msg = _error(GOOD, ["train.schedule.min_learning_rate=0.01"])
    assert "train.schedule.min_learning_rate: 0.01 is above optimizer.learning_rate (0.001)" in msg
    parse_recipe(GOOD, "r.yaml", ["train.schedule.min_learning_rate=0.01", "train.schedule.name=constant"])


def test_missing_data_path_rejected(tmp_path):
    missing = tmp_path / "nope"
    msg = _error({"name": "t", "data": {"dataset": "gtzan", "root": str(missing)}})
    assert f"data.root: path does not exist: {missing}" in msg
    assert "data.root: dataset 'gtzan' needs a data folder" in _error({"name": "t", "data": {"dataset": "gtzan"}})


def test_fsa_totals_must_divide_into_bands():
    msg = _error({**GOOD, "model": {"channels": 1002, "fsa": {"enabled": True}}})
    assert "model.channels: 1002 is a total over 4 bands and must be divisible by 4" in msg
    msg = _error({**GOOD, "model": {"channels": 1000, "fsa": {"enabled": True}}})
    assert "model.channels: block width C + M = 250 per band must be divisible by res2_scale=8" in msg


def test_overrides_are_validated_like_the_file():
    recipe = parse_recipe(GOOD, overrides=["train.epochs=2", "model.ccs.stop=512", "eval.modes=[whole]",
                                           "eval.headline=whole"])
    assert recipe.train.epochs == 2 and recipe.model.ccs.stop == 512 and recipe.eval.modes == ["whole"]
    assert "model.ccs.stop" in _error(GOOD, ["model.ccs.stop=abc"])
    with pytest.raises(RecipeError, match="expected KEY.PATH=VALUE"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(RecipeError, match="train.epochs is not a section"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])


def test_extends_merges_sections_and_detects_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"seed": 7, "data": {"dataset": "synthetic", "data_cycle": 3},
                                                        "train": {"epochs": 9}}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"extends": "base.yaml", "name": "c", "train": {"batch_size": 4}}))
    recipe = load_recipe(tmp_path / "child.yaml")
    assert (recipe.seed, recipe.data.data_cycle, recipe.train.epochs, recipe.train.batch_size) == (7, 3, 9, 4)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_unreadable_and_non_mapping_recipes(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="top level must be a mapping"):
        load_recipe(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


def test_round_trip_through_plain_json():
    recipe = parse_recipe({**GOOD, "model": {"channels": 64, "ccs": {"stop": 32}}})
    assert parse_recipe(recipe_to_dict(recipe)) == recipe


def test_a_preset_fills_the_model_and_explicit_keys_override_it():
    recipe = parse_recipe({**GOOD, "model": {"preset": "paper_15_ccs_fsa_s512_c1024", "res2_scale": 4,
                                             "ccs": {"stop": 256}}})
    model = recipe.model
    assert (model.channels, model.fsa.enabled, model.res2_scale, model.ccs.stop) == (1024, True, 4, 256)
    assert model.preset == "paper_15_ccs_fsa_s512_c1024"
    assert parse_recipe(recipe_to_dict(recipe)) == recipe  # the recorded recipe reproduces the model
    tiny = parse_recipe({**GOOD, "model": {"preset": "tiny"}}).model
    assert tiny == presets.model_config("tiny") and tiny.channels == 32 and not tiny.fsa.enabled


def test_an_unknown_preset_names_the_key_and_the_close_name():
    msg = _error({**GOOD, "model": {"preset": "paper_15_ccs_fsa"}})
    assert "model.preset: unknown preset 'paper_15_ccs_fsa'; did you mean 'paper_15_ccs_fsa_s512_c1024'?" in msg
    assert "model.preset: expected a preset name" in _error({**GOOD, "model": {"preset": 15}})
    with pytest.raises(ValueError, match="already registered"):
        presets.register(presets.get("tiny"))


def test_a_fixed_length_model_checks_the_crop_that_crop_seconds_gives():
    """tiny_vgg at 16 kHz takes exactly 31 hops of 256 = 7936 samples = 0.496 s: data.crop_seconds
    decides the crop, not the default crop_samples (44,356) it replaces."""
    model = {"preset": "tiny_vgg", "frontend": {"sample_rate": 16000}}
    recipe = parse_recipe({**GOOD, "data": {**GOOD["data"], "crop_seconds": 0.496}, "model": model})
    assert recipe.data.crop_samples == 7936
    msg = _error({**GOOD, "data": {**GOOD["data"], "crop_seconds": 0.5}, "model": model})
    assert "data.crop_samples:" in msg and "must be 7936 samples (32 - 1 hops of 256); got 8000" in msg
