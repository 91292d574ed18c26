"""Training one fold: precision, distribution strategy, optimiser, schedule, checkpoints, resume.

The loop is Keras `fit` with callbacks; what is ours is small:
- `RunState`, a `BackupAndRestore` whose backup is written atomically and also holds the
  history and the best-validation record, so a run killed at any instant resumes where
  its last finished epoch left it and keeps a consistent best checkpoint;
- `WholeClipValidation`, the paper's validation on whole clips;
- the per-epoch cosine schedule with optional SGDR restarts (`learning_rate_at`).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_mgc.config import OptimizerConfig, Recipe, ScheduleConfig
from keras_mgc.data.pipeline import ClipStore, CropSampler, distributed_training_input, training_dataset
from keras_mgc.data.prepare import Fold, PreparedData
from keras_mgc.data.shard_input import ShardedData
from keras_mgc.distributed import fix_keras_multi_worker, task_info
from keras_mgc.io import atomic_path, read_json, require_space, write_json
from keras_mgc.models import build_model
from keras_mgc.optimizers import make_optimizer
from keras_mgc.scoring import Predictor
from keras_mgc.windows import crop_length

__all__ = ["TrainingDiverged", "resolve_precision", "make_strategy", "learning_rate_at",
           "WholeClipValidation", "RunState", "save_model", "fold_seed", "train_fold", "weights_digest"]

log = logging.getLogger("keras_mgc")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


# --------------------------------------------------------------------------- set-up


def resolve_precision(name: str) -> str:
    """The Keras dtype policy for `train.precision`: auto = mixed_float16 on a GPU, float32 on a CPU."""
    if name == "auto":
        return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    return name


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy for `train.distribute` (auto: MirroredStrategy with several GPUs)."""
    gpus = tf.config.list_physical_devices("GPU")
    if name == "multi_worker":  # the cluster from TF_CONFIG, or from Slurm (keras_mgc.distributed)
        from keras_mgc.distributed import configure_cluster

        configure_cluster()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def learning_rate_at(epoch: int, epochs: int, optimizer: OptimizerConfig, schedule: ScheduleConfig) -> float:
    """Learning rate of (0-based) `epoch`: cosine annealing to min_learning_rate, stepped per epoch.

    Without restarts this is torch's CosineAnnealingLR(T_max=epochs); with
    `restart_period` it is CosineAnnealingWarmRestarts(T_0=restart_period, T_mult=restart_mult).
    Schedule "step" is torch's StepLR(step_size, gamma): base x gamma^(epoch // step_size).
    """
    base, low = optimizer.learning_rate, schedule.min_learning_rate
    if schedule.name == "constant":
        return base
    if schedule.name == "step":
        return base * schedule.gamma ** (epoch // schedule.step_size)
    t, period = epoch, epochs
    if schedule.restart_period is not None:
        period = schedule.restart_period
        while t >= period:
            t -= period
            period *= schedule.restart_mult
    return low + (base - low) * (1 + math.cos(math.pi * t / period)) / 2


# --------------------------------------------------------------------------- callbacks


class WholeClipValidation(keras.callbacks.Callback):
    """After each epoch: loss and accuracy on whole validation clips, into the epoch's logs."""

    def __init__(self, store: ClipStore, labels: list[int], min_length: int = 0) -> None:
        super().__init__()
        self.store, self.labels, self.min_length = store, np.asarray(labels), min_length
        self._predictor: Predictor | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.model.stop_training:  # stopped mid-epoch (NaN loss): nothing to validate
            return
        if self._predictor is None:  # traced once, not once per epoch
            self._predictor = Predictor(self.model)
        probs = self._predictor.whole(self.store, self.min_length)
        picked = probs[np.arange(len(self.labels)), self.labels]
        logs = logs if logs is not None else {}
        logs["val_loss"] = float(-np.log(np.maximum(picked, 1e-12)).mean())
        logs["val_accuracy"] = float((probs.argmax(axis=1) == self.labels).mean())


class RunState(keras.callbacks.BackupAndRestore):
    """BackupAndRestore with an atomic backup that also holds the history and the best epoch.

    At the end of every epoch: if the monitored value improved, the model is saved as
    `backup/best-<epoch>.keras` (a copy, not a reference); then the weights and optimizer
    state go to `backup/weights-<epoch>.weights.h5`, `backup/state.json` is replaced in one
    rename (the commit point: the backup is always a finished epoch), and only then the new
    best is renamed onto `best.keras` (a resume finishes a rename that a kill interrupted).
    So `best.keras` is always the model of the best epoch that state.json records, never
    one of an epoch that a kill cut short.

    "Best" is the highest validation accuracy, ties broken by the lower validation loss
    (monitor `val_accuracy`, and `last`, which evaluates last.keras but still keeps
    best.keras), or the lowest validation loss, ties broken by the higher accuracy (monitor
    `val_loss`). Without a validation fold every epoch is the best (the last one wins).

    A NaN or infinite training loss stops training at that step; non-finite weights or
    validation loss at the end of an epoch stop it too (a model that outputs NaN in
    inference while its training loss is still finite, e.g. after a huge learning-rate
    step). Nothing of that epoch is saved; it is raised as TrainingDiverged after `fit`.
    """

    def __init__(self, fold_dir: str | Path, monitor: str | None = "val_accuracy",
                 restore_dir: str | Path | None = None) -> None:
        fold_dir = Path(fold_dir)
        super().__init__(backup_dir=str(fold_dir / "backup"), save_freq="epoch", delete_checkpoint=False)
        self.fold_dir, self.monitor = fold_dir, monitor
        # A non-chief worker writes into its own temporary fold_dir but resumes from the
        # chief's backup (restore_dir), so that every worker restarts at the same epoch.
        self.restore_dir = Path(restore_dir) if restore_dir is not None else fold_dir
        self.best_path = fold_dir / "best.keras"
        self.last_path = fold_dir / "last.keras"
        self.state_path = self.restore_dir / "backup" / "state.json"
        self.history: list[dict[str, Any]] = []
        self.best_epoch: int | None = None
        self.best_logs: dict[str, float] = {}  # val_accuracy and val_loss of the best epoch
        self.diverged: str | None = None
        self._epoch = 0

    def saved_state(self) -> dict[str, Any] | None:
        return read_json(self.state_path) if self.state_path.is_file() else None

    @property
    def initial_epoch(self) -> int:
        """Epochs already finished (0 for a fresh fold)."""
        state = self.saved_state()
        return int(state["epoch"]) if state else 0

    # Restoring ------------------------------------------------------------
    def _pending_best(self, epoch: int | None) -> Path:
        return self.fold_dir / "backup" / f"best-{epoch or 0:04d}.keras"

    def _publish_best(self) -> None:
        """Rename the recorded best epoch's staged model onto best.keras; drop stale staged ones."""
        pending = self._pending_best(self.best_epoch)
        if pending.is_file():
            os.replace(pending, self.best_path)
        for stale in (self.fold_dir / "backup").glob("best-*.keras"):
            stale.unlink()

    def on_train_begin(self, logs: dict | None = None) -> None:
        for leftover in (self.fold_dir / "backup").glob(".*.tmp-*"):  # a write that a kill interrupted
            leftover.unlink()
        state = self.saved_state()
        if state is None:
            self._publish_best()  # removes what an epoch killed before its commit left behind
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.restore_dir / "backup" / state["weights"])
        self.model._initial_epoch = int(state["epoch"])
        self.history, self.best_epoch = state["history"], state["best_epoch"]
        self.best_logs = state.get("best_logs") or next(  # states written before best_logs: from the history
            ({k: h[k] for k in ("val_accuracy", "val_loss") if k in h} for h in self.history
             if h["epoch"] == self.best_epoch), {})
        self._publish_best()
        log.info("resumed %s after epoch %d (best %s %.4f at epoch %s)", self.fold_dir.name, state["epoch"],
                 self.monitor, self.best if self.best is not None else float("nan"), self.best_epoch)

    # Guarding -------------------------------------------------------------
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def _stop(self, what: str) -> None:
        last = f"epoch {self.history[-1]['epoch']}" if self.history else "none (no epoch finished)"
        self.diverged = (f"{self.fold_dir.name}: {what}; training stopped. Last good state: {last}, kept in "
                         f"{self.fold_dir / 'backup'}; best checkpoint: "
                         f"{self.best_path if self.best_path.exists() else 'none yet'}")
        self.model.stop_training = True

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # Keras's logs["loss"] is the epoch's running mean: it turns NaN/Inf at the first
        # non-finite step, and stays so, so the first step reported is the first bad one.
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.diverged is None:
            self._stop(f"loss became {float(loss)} at epoch {self._epoch + 1}, step {batch + 1}")

    # Saving ---------------------------------------------------------------
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.diverged is not None:
            return
        logs = {k: float(v) for k, v in (logs or {}).items()}
        bad = [k for k in ("loss", "val_loss") if k in logs and not math.isfinite(logs[k])]
        if bad:
            self._stop(f"{bad[0]} became {logs[bad[0]]} at the end of epoch {epoch + 1}")
            return
        if not all(np.isfinite(v.numpy()).all() for v in self.model.weights):
            self._stop(f"weights became non-finite (NaN or Inf) during epoch {epoch + 1}")
            return
        backup = self.fold_dir / "backup"
        if self._improved(logs):
            self.best_epoch = epoch + 1
            self.best_logs = {k: logs[k] for k in ("val_accuracy", "val_loss") if k in logs}
            save_model(self.model, self._pending_best(epoch + 1))
        self.history.append({"epoch": epoch + 1, **logs})
        weights = f"weights-{epoch + 1:04d}.weights.h5"
        save_model(self.model, backup / weights, weights_only=True)
        write_json(backup / "state.json", {"epoch": epoch + 1, "weights": weights, "history": self.history,
                                           "best": self.best, "best_epoch": self.best_epoch,
                                           "best_logs": self.best_logs, "monitor": self.monitor})
        self._publish_best()
        for old in backup.glob("weights-*.weights.h5"):
            if old.name != weights:
                old.unlink()

    def on_train_end(self, logs: dict | None = None) -> None:
        pass  # keep the backup: a later fold failure must not lose this fold's state

    @property
    def best(self) -> float | None:
        """The best epoch's ranking value (`_key`), as state.json records it; None without a validation fold."""
        return self.best_logs.get(self._key) if self.monitor else None

    @property
    def _key(self) -> str:
        """The validation value that ranks epochs: val_loss for monitor val_loss, else val_accuracy."""
        return "val_loss" if self.monitor == "val_loss" else "val_accuracy"

    def _improved(self, logs: dict[str, float]) -> bool:
        """Is this epoch better than the best so far? Ties on the key are broken by the other value."""
        if self.monitor is None or self.best_epoch is None:
            return True
        acc, loss = logs.get("val_accuracy"), logs.get("val_loss")
        best_acc, best_loss = self.best_logs.get("val_accuracy"), self.best_logs.get("val_loss")
        if acc is None or loss is None or best_acc is None or best_loss is None:
            value, best = logs.get(self._key), self.best_logs.get(self._key)
            return value is not None and (best is None or (value < best if self._key == "val_loss" else value > best))
        if self._key == "val_loss":
            return (loss, -acc) < (best_loss, -best_acc)
        return (acc, -loss) > (best_acc, -best_loss)

    def save_last(self) -> None:
        """The final weights as last.keras (after the last epoch, and again by a resume of a finished fold)."""
        save_model(self.model, self.last_path)


def save_model(model: keras.Model, path: Path, weights_only: bool = False) -> None:
    """`model.save` (or `save_weights`) to `path` atomically, after checking the space it needs.

    HDF5 crashes the process (segmentation fault) when it closes a file whose writes failed
    for lack of space, so a write that cannot fit is refused before it starts (DiskFullError).
    """
    variables = list(model.weights) + (list(model.optimizer.variables) if model.optimizer is not None else [])
    need = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
    require_space(path, int(need * 1.1) + (1 << 20))
    with atomic_path(path) as tmp:
        if weights_only:
            model.save_weights(tmp)
        else:
            model.save(tmp)


# --------------------------------------------------------------------------- one fold


def fold_seed(recipe: Recipe, fold: Fold) -> int:
    """Each fold's seed: the recipe's seed plus the fold number (initialisation and crops)."""
    return recipe.seed + fold.number


def train_fold(recipe: Recipe, data: PreparedData | ShardedData, fold: Fold, fold_dir: Path,
               strategy: tf.distribute.Strategy, restore_dir: Path | None = None) -> dict[str, Any]:
    """Train (or resume) one fold; returns its training record. Raises TrainingDiverged.

    `data` is decoded clips (PreparedData) or a shard folder (ShardedData, read by tf.data).
    On a non-chief worker `fold_dir` is its temporary folder and `restore_dir` the chief's.
    """
    fold_dir.mkdir(parents=True, exist_ok=True)
    seed = fold_seed(recipe, fold)
    keras.utils.set_random_seed(seed)
    train_cfg = recipe.train
    crop = crop_length(recipe)
    with strategy.scope():
        model = build_model(recipe.model, len(data.class_names))
        model.compile(optimizer=make_optimizer(train_cfg.optimizer),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    fix_keras_multi_worker(model, strategy)
    distributed = strategy.num_replicas_in_sync > 1 or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if isinstance(data, ShardedData):
        has_valid = "valid" in data.shards.parts() and data.shards.n_records("valid") > 0
    else:
        has_valid = bool(fold.valid)
    state = RunState(fold_dir, train_cfg.monitor if has_valid else None, restore_dir)
    initial_epoch = state.initial_epoch
    if isinstance(data, ShardedData):
        shards = data.shards
        options = dict(data_cycle=recipe.data.data_cycle, initial_epoch=initial_epoch,
                       shuffle_buffer=recipe.data.shuffle_buffer, interleave_cycle=recipe.data.interleave_cycle,
                       max_steps=train_cfg.steps_per_epoch)
        # One input pipeline per worker (distribute_datasets_from_function), so one per process.
        pipelines = task_info().num_workers if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) else 1
        steps_per_epoch = shards.steps_per_epoch("train", train_cfg.batch_size, recipe.data.data_cycle, pipelines,
                                                 train_cfg.steps_per_epoch)
        if distributed:
            inputs = shards.distributed_training_input(strategy, "train", crop, seed, train_cfg.batch_size, **options)
        else:
            inputs = shards.training_dataset("train", crop, seed, train_cfg.batch_size, **options)
    else:
        train_store = data.store.subset(data.positions(fold.train))
        sampler = CropSampler(train_store.lengths, crop, recipe.data.data_cycle, seed, train_cfg.batch_size,
                              train_cfg.steps_per_epoch)
        steps_per_epoch = sampler.steps_per_epoch
        labels = data.labels(fold.train)
        if distributed:
            inputs = distributed_training_input(strategy, train_store, labels, sampler, initial_epoch)
        else:
            inputs = training_dataset(train_store, labels, sampler, initial_epoch)
    valid = data.part(fold, "valid") if has_valid else None
    callbacks: list[keras.callbacks.Callback] = []
    if valid is not None:
        callbacks.append(WholeClipValidation(valid[0], valid[1], crop))
    callbacks += [
        keras.callbacks.LearningRateScheduler(
            lambda epoch, lr: learning_rate_at(epoch, train_cfg.epochs, train_cfg.optimizer, train_cfg.schedule)),
        state,
        keras.callbacks.TensorBoard(str(fold_dir / "tensorboard"), write_graph=False, profile_batch=0),
    ]
    if initial_epoch < train_cfg.epochs:
        if initial_epoch:
            log.info("%s: resuming at epoch %d of %d", fold.name, initial_epoch + 1, train_cfg.epochs)
        model.fit(inputs, epochs=train_cfg.epochs, steps_per_epoch=steps_per_epoch,
                  initial_epoch=initial_epoch, callbacks=callbacks, verbose=train_cfg.verbose, shuffle=False)
    else:
        state.set_model(model)
        state.on_train_begin()
    if state.diverged:
        raise TrainingDiverged(state.diverged)
    state.save_last()
    validated = state.monitor is not None  # a valid part (files or shards)
    return {"seed": seed, "best_epoch": state.best_epoch, "weights_digest": weights_digest(model),
            "val_accuracy": state.best_logs.get("val_accuracy") if validated else None,
            "val_loss": state.best_logs.get("val_loss") if validated else None,
            "monitor": state.monitor, "epochs_run": len(state.history), "resumed_from_epoch": initial_epoch,
            "steps_per_epoch": steps_per_epoch, "history": state.history}


def weights_digest(model: keras.Model) -> str:
    """sha256 of the model's weights (16 hex digits): equal on every worker of an in-sync job."""
    import hashlib

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]
