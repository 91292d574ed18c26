"""adam_l2: torch.optim.Adam(weight_decay=...) step for step; AdamW is another optimiser."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_mgc.config import OptimizerConfig, RecipeError, load_recipe
from keras_mgc.optimizers import AdamL2, make_optimizer
from tests.conftest import REPO_ROOT


def _run_keras(optimizer: keras.optimizers.Optimizer, w0: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    """Apply gradients g_t(w) = s * (w - b_t) for len(grads) steps (s spans 1e-8..1, see _problem)."""
    w = keras.Variable(w0.copy())
    for b in grads:
        g = SCALE * (np.asarray(w) - b)
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g), w)])
    return np.asarray(w)


def _run_torch(w0: np.ndarray, grads: list[np.ndarray], lr: float, weight_decay: float) -> np.ndarray:
    torch = pytest.importorskip("torch", reason="torch is the parity extra: pip install -e '.[parity]'")
    w = torch.nn.Parameter(torch.tensor(w0.copy()))
    opt = torch.optim.Adam([w], lr=lr, weight_decay=weight_decay)
    for b in grads:
        opt.zero_grad()
        w.grad = torch.tensor(SCALE) * (w.detach() - torch.tensor(b))
        opt.step()
    return w.detach().numpy()


#: Per-weight gradient scales: gradients of every size, some far below the decay term, as a network's are.
SCALE = np.logspace(-8, 0, 64).astype("float32")


def _problem(seed: int = 0, steps: int = 30) -> tuple[np.ndarray, list[np.ndarray]]:
    """Start weights and per-step targets b_t of a noisy quadratic."""
    rng = np.random.default_rng(seed)
    w0 = rng.normal(0, 0.5, SCALE.size).astype("float32")
    return w0, [rng.normal(0, 1, SCALE.size).astype("float32") for _ in range(steps)]


@pytest.mark.parametrize("weight_decay", [1e-5, 1e-2])
def test_adam_l2_is_torch_adam_with_weight_decay(weight_decay):
    w0, grads = _problem()
    torch_w = _run_torch(w0, grads, 1e-3, weight_decay)
    ours = _run_keras(make_optimizer(OptimizerConfig(name="adam_l2", learning_rate=1e-3, weight_decay=weight_decay)),
                      w0, grads)
    moved = np.abs(torch_w - w0).max()
    assert moved > 1e-2  # the test is not about weights that stood still
    np.testing.assert_allclose(ours, torch_w, rtol=0, atol=2e-6)
    # Keras AdamW (decoupled decay, epsilon on the uncorrected sqrt(v)) lands elsewhere.
    adamw = _run_keras(make_optimizer(OptimizerConfig(name="adamw", learning_rate=1e-3, weight_decay=weight_decay)),
                       w0, grads)
    assert np.abs(adamw - torch_w).max() > 100 * np.abs(ours - torch_w).max()
    assert np.abs(adamw - torch_w).max() > 1e-3


def test_coupled_decay_pulls_a_zero_gradient_weight_at_the_learning_rate():
    """Under coupled L2 a weight with no loss gradient moves ~lr per step towards 0; AdamW barely moves it."""
    w0 = np.array([0.5, -0.5], "float32")
    opt = AdamL2(1e-3, weight_decay=1e-5)
    w = keras.Variable(w0.copy())
    for _ in range(20):
        opt.apply_gradients([(keras.ops.zeros(2), w)])
    np.testing.assert_allclose(np.asarray(w), w0 - np.sign(w0) * 20e-3, atol=1e-4)
    opt = keras.optimizers.AdamW(1e-3, weight_decay=1e-5)
    w = keras.Variable(w0.copy())
    for _ in range(20):
        opt.apply_gradients([(keras.ops.zeros(2), w)])
    np.testing.assert_allclose(np.asarray(w), w0, atol=1e-6)


def test_adam_l2_config_round_trip_and_every_variable_decays():
    opt = AdamL2(2e-3, weight_decay=1e-5)
    clone = AdamL2.from_config(opt.get_config())
    assert (clone.l2, clone.epsilon) == (1e-5, 1e-8)
    assert float(clone.learning_rate) == pytest.approx(2e-3)
    assert opt.weight_decay is None  # the base class's decoupled decay stays off
    # Every trainable variable is decayed (torch decays all of model.parameters(), BN and biases too).
    bias, gamma = keras.Variable(np.full(3, 0.3, "float32")), keras.Variable(np.full(3, 1.0, "float32"))
    opt.apply_gradients([(keras.ops.zeros(3), bias), (keras.ops.zeros(3), gamma)])
    assert np.all(np.asarray(bias) < 0.3) and np.all(np.asarray(gamma) < 1.0)


def test_paper_recipes_use_adam_l2():
    for name in ("gtzan_08_ecapa", "gtzan_15_ccs_fsa_s512_c1024", "melon_22_ecapa"):
        recipe = load_recipe(REPO_ROOT / "recipes" / f"{name}.yaml", ["data.root=."])
        assert recipe.train.optimizer.name == "adam_l2", name
        assert recipe.train.optimizer.weight_decay == 1e-5


def test_optimizer_names_are_validated():
    recipe = REPO_ROOT / "recipes" / "quickstart.yaml"
    assert load_recipe(recipe, ["train.optimizer.name=adamw"]).train.optimizer.name == "adamw"
    with pytest.raises(RecipeError, match="train.optimizer.name: Input should be 'adam_l2', 'adamw' or 'adam'"):
        load_recipe(recipe, ["train.optimizer.name=sgd"])
    with pytest.raises(RecipeError, match="train.optimizer.weight_decay: 1e-05 is set but optimizer 'adam' has no"):
        load_recipe(recipe, ["train.optimizer.name=adam"])
    assert load_recipe(recipe, ["train.optimizer.name=adam", "train.optimizer.weight_decay=0"])
