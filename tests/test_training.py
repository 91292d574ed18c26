"""Training mechanics: the learning-rate schedule and tf.distribute with synchronised BatchNorm."""

from __future__ import annotations

import json
import math
import os
import textwrap

import pytest

from keras_mgc.config import OptimizerConfig, ScheduleConfig
from keras_mgc.fold_trainer import learning_rate_at
from tests.conftest import REPO_ROOT


def test_cosine_annealing_per_epoch_as_torch_cosineannealinglr():
    opt, sched = OptimizerConfig(learning_rate=1e-3), ScheduleConfig(min_learning_rate=1e-6)
    lrs = [learning_rate_at(e, 80, opt, sched) for e in range(80)]
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[40] == pytest.approx((1e-3 + 1e-6) / 2)
    assert lrs[79] == pytest.approx(1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi * 79 / 80)) / 2)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # no restarts


def test_sgdr_restarts_as_torch_cosineannealingwarmrestarts():
    opt = OptimizerConfig(learning_rate=1.0)
    sched = ScheduleConfig(min_learning_rate=0.0, restart_period=10, restart_mult=2)
    lrs = [learning_rate_at(e, 80, opt, sched) for e in range(70)]
    assert lrs[0] == lrs[10] == lrs[30] == 1.0  # restarts after 10, then 20 more epochs
    assert lrs[5] == pytest.approx(0.5) and lrs[20] == pytest.approx(0.5)
    assert lrs[29] < 0.01
    assert learning_rate_at(7, 80, opt, ScheduleConfig(name="constant")) == 1.0


DISTRIBUTED = textwrap.dedent("""
    import json, sys, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from pathlib import Path
    from keras_mgc.config import parse_recipe
    from keras_mgc.data.prepare import prepare_data
    from keras_mgc.fold_trainer import train_fold
    out = Path(sys.argv[1])
    recipe = parse_recipe({"name": "dist", "data": {"dataset": "synthetic", "split": "kfold", "n_folds": 3,
        "folds": [1], "synthetic_clips_per_class": 4, "synthetic_seconds": 3.0, "data_cycle": 2},
        "model": {"channels": 16, "ccs": {"stop": 8}, "res2_scale": 2, "se_channels": 4, "attention_channels": 8,
                  "sync_batchnorm": True},
        "train": {"epochs": 1, "batch_size": 8, "verbose": 0}})
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    data = prepare_data(recipe.data, out, recipe.seed)
    record = train_fold(recipe, data, data.folds[0], out / "fold_01", strategy)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "record": record}))
""")


def test_mirrored_strategy_with_synchronised_batchnorm_trains(tmp_path):
    """Two logical CPU replicas stand in for two GPUs: the same code path as a multi-GPU run."""
    import subprocess
    import sys

    script = tmp_path / "dist.py"
    script.write_text(DISTRIBUTED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=600)  # this checkout's keras_mgc, not an installed one
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    (epoch,) = out["record"]["history"]
    assert math.isfinite(epoch["loss"]) and 0 <= epoch["val_accuracy"] <= 1
    assert (tmp_path / "fold_01" / "best.keras").is_file()
