"""Optimisers the recipes name (`train.optimizer.name`), built by `make_optimizer`.

- `adam_l2` (the paper recipes' choice): the authors' `torch.optim.Adam(params, lr,
  weight_decay=1e-5)` exactly, i.e. the L2 term `weight_decay * w` is added to the gradient
  BEFORE Adam's moments (coupled L2, not AdamW), with torch's epsilon placement and default
  (1e-8 added to the bias-corrected sqrt(v)). It decays every trainable variable, as torch
  does with `model.parameters()`: kernels, biases and BatchNorm gamma/beta alike (BatchNorm
  running statistics are not trainable on either side).
- `adamw`: Keras AdamW (decoupled decay `w -= lr * wd * w`, Loshchilov & Hutter). Kept as an
  option; it is NOT what the authors trained with (BUILD_NOTES.md, "The authors' optimiser").
- `adam`: Keras Adam without decay.

Why coupled L2 is not a detail: under Adam the L2 gradient is normalised like any other, so a
weight whose loss gradient is (near) zero moves towards 0 by up to `lr` per step (e.g. a bias
just before a BatchNorm in training mode), where AdamW moves it by `lr * wd * w`.

This module needs Keras but not TensorFlow-specific code.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_mgc.config import OptimizerConfig


@keras.saving.register_keras_serializable(package="keras_mgc")
class AdamL2(keras.optimizers.Optimizer):
    """Adam with coupled L2 weight decay, step for step `torch.optim.Adam(weight_decay=...)`.

    Per variable w with gradient g at step t (1-based):
        g <- g + weight_decay * w
        m <- beta_1 m + (1 - beta_1) g;  v <- beta_2 v + (1 - beta_2) g^2
        w <- w - lr / (1 - beta_1^t) * m / (sqrt(v) / sqrt(1 - beta_2^t) + epsilon)

    Keras's own Adam puts epsilon on the un-corrected sqrt(v) (and defaults to 1e-7), which
    is another optimiser in the first steps; this class follows torch. The base class's
    `weight_decay` (decoupled) is not used: `weight_decay` here is the L2 coefficient.
    """

    def __init__(self, learning_rate: float = 1e-3, weight_decay: float = 0.0, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, name: str = "adam_l2", **kwargs: Any) -> None:
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if weight_decay < 0:
            raise ValueError(f"AdamL2: weight_decay must be >= 0, got {weight_decay}")
        self.l2 = float(weight_decay)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def build(self, var_list: list) -> None:
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, ["momentum", "velocity"])

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        if self.l2:
            gradient = gradient + ops.cast(self.l2, dtype) * variable
        step = ops.cast(self.iterations + 1, dtype)
        correction_1 = 1.0 - ops.power(ops.cast(self.beta_1, dtype), step)
        correction_2 = 1.0 - ops.power(ops.cast(self.beta_2, dtype), step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1.0 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1.0 - self.beta_2))
        denominator = ops.sqrt(v) / ops.sqrt(correction_2) + self.epsilon
        self.assign_sub(variable, (lr / correction_1) * m / denominator)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(weight_decay=self.l2, beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config


def make_optimizer(cfg: OptimizerConfig) -> keras.optimizers.Optimizer:
    """The optimiser a recipe's `train.optimizer` section names."""
    if cfg.name == "adam_l2":
        return AdamL2(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return keras.optimizers.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return keras.optimizers.Adam(learning_rate=cfg.learning_rate)
