"""Keep the last epoch as well as the best: which epoch is "best" (ties broken by the other
validation value), last.keras beside best.keras, and the recipe's choice of which one is tested.

RunState is driven directly with the logs an epoch would produce, on a tiny Keras model:
what is under test is the bookkeeping, not learning. The whole path (train with
`train.monitor: last`, results naming last.keras, evaluate honouring it, export picking it)
runs in tests/test_sample_rate.py.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from keras_mgc.config import RecipeError, load_recipe
from keras_mgc.scoring import results_markdown
from keras_mgc.fold_trainer import RunState
from tests.conftest import REPO_ROOT


def _state(fold_dir, monitor):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    state = RunState(fold_dir, monitor)
    state.set_model(model)
    state.on_train_begin()
    return state, model


def _epochs(state, model, logs):
    for epoch, (acc, loss) in enumerate(logs):
        model.layers[0].kernel.assign(np.full((4, 3), float(epoch + 1), np.float32))  # tells the epochs apart
        state.on_epoch_begin(epoch)
        state.on_epoch_end(epoch, {"loss": 1.0, "val_accuracy": acc, "val_loss": loss})


def _kernel(path):
    return float(keras.saving.load_model(path).layers[0].kernel.numpy()[0, 0])


def test_a_tie_on_accuracy_goes_to_the_lower_validation_loss(tmp_path):
    """A 10-clip validation fold moves in steps of 10 %: ties are common."""
    state, model = _state(tmp_path, "val_accuracy")
    _epochs(state, model, [(0.5, 1.0), (0.6, 1.2), (0.6, 0.9), (0.6, 0.95), (0.5, 0.1)])
    assert state.best_epoch == 3 and _kernel(tmp_path / "best.keras") == 3.0
    assert json.loads((tmp_path / "backup" / "state.json").read_text())["best_logs"] == \
        {"val_accuracy": 0.6, "val_loss": 0.9}


def test_monitor_val_loss_keeps_the_lowest_loss_ties_to_the_higher_accuracy(tmp_path):
    state, model = _state(tmp_path, "val_loss")
    _epochs(state, model, [(0.5, 1.0), (0.4, 0.8), (0.7, 0.8), (0.9, 0.85)])
    assert state.best_epoch == 3 and state.best == 0.8 and _kernel(tmp_path / "best.keras") == 3.0


@pytest.mark.parametrize("monitor, best", [("val_accuracy", 0.7), ("last", 0.7), ("val_loss", 0.4), (None, None)])
def test_state_json_records_the_best_value_and_a_resume_reads_it_back(tmp_path, monitor, best):
    state, model = _state(tmp_path, monitor)
    _epochs(state, model, [(0.5, 1.0), (0.7, 0.5), (0.6, 0.4)])
    assert state.best == best
    assert json.loads((tmp_path / "backup" / "state.json").read_text())["best"] == best
    resumed, _ = _state(tmp_path, monitor)  # a new process reading backup/state.json
    assert resumed.best == best and resumed.best_epoch == state.best_epoch


def test_last_keras_holds_the_final_weights_beside_the_best(tmp_path):
    state, model = _state(tmp_path, "last")
    _epochs(state, model, [(0.5, 1.0), (0.7, 0.5), (0.6, 0.4)])
    state.save_last()
    assert state.best_epoch == 2  # "last" still keeps the best-accuracy model as best.keras
    assert _kernel(tmp_path / "best.keras") == 2.0 and _kernel(tmp_path / "last.keras") == 3.0


def test_a_resumed_state_keeps_breaking_ties_the_same_way(tmp_path):
    state, model = _state(tmp_path, "val_accuracy")
    _epochs(state, model, [(0.6, 0.9)])
    resumed, model2 = _state(tmp_path, "val_accuracy")  # a new process reading backup/state.json
    assert resumed.best_logs == {"val_accuracy": 0.6, "val_loss": 0.9}
    resumed.on_epoch_end(1, {"loss": 1.0, "val_accuracy": 0.6, "val_loss": 0.95})
    assert resumed.best_epoch == 1


def test_the_recipe_chooses_the_tested_checkpoint():
    quickstart = REPO_ROOT / "recipes" / "quickstart.yaml"
    assert load_recipe(quickstart).train.evaluated_checkpoint == "best.keras"
    assert load_recipe(quickstart, ["train.monitor=last"]).train.evaluated_checkpoint == "last.keras"
    with pytest.raises(RecipeError, match="train.monitor"):
        load_recipe(quickstart, ["train.monitor=latest"])


def test_results_md_says_which_checkpoint_was_tested():
    fold = {"name": "fold_01", "best_epoch": 3, "val_accuracy": 0.6, "checkpoint": "fold_01/last.keras",
            "evaluated": {"checkpoint": "last.keras", "epoch": 8, "monitor": "last"},
            "test": {"whole": {"accuracy": 0.7}}}
    old = {"name": "fold_02", "best_epoch": 5, "val_accuracy": 0.5, "checkpoint": "fold_02/best.keras",
           "test": {"whole": {"accuracy": 0.6}}}  # a record written before `evaluated` existed
    text = results_markdown({"recipe": {"name": "r"}, "data": {"description": "d"}, "folds": [fold, old],
                             "summary": {"whole": {"accuracy": {"mean": 0.65, "std": 0.07}},
                                         "val_accuracy": {"mean": 0.55, "std": 0.07}}})
    assert "| fold_01 | 3 | 60.0 | last.keras (epoch 8) | 70.0 |" in text
    assert "| fold_02 | 5 | 50.0 | best.keras (epoch 5) | 60.0 |" in text
