"""The training run: strategy, data, model and checkpoints put together, and the epoch loop over both phases.

Trainer(config)            strategy (distribute), verified records (data), precision, who writes (cluster)
  .train()                 build model + optimizers (model) and checkpoints (checkpoints); resume; then per epoch:
    _phase                   head (frozen backbone, cached features when possible) or fine_tune
    _run_steps               the compiled step (steps) until the epoch ends; SIGTERM, NaN and step checkpoints
    _finish_epoch            validate, report (metrics), best weights, checkpoint
  .evaluate_and_export()   test metrics, metrics.json, model.keras and the SavedModel (evaluation)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import keras
import tensorflow as tf

from celeba_common import fileio
from trainer import (
    checkpoints,
    cluster,
    data,
    distribute,
    evaluation,
    feature_cache,
    fingerprint,
    loop,
    metrics as metrics_lib,
    model as model_lib,
)
from trainer.checkpoints import Preempted  # noqa: F401  (raised by train(); main catches it from here)
from trainer.config import TrainConfig
from trainer.steps import make_train_step

LOG = logging.getLogger("trainer")


class NonFiniteLoss(Exception):
    pass


@dataclasses.dataclass
class Phase:
    """What one epoch trains: which network on which data, with which optimizer."""

    name: str  # head | fine_tune
    net: keras.Model
    optimizer: object
    lr: float
    dataset_fn: Optional[Callable]  # None when the epoch trains on features held in memory
    use_cache: bool
    resident: Optional[feature_cache.Resident] = None
    seed: int = 0  # the epoch's order (resident features)


def resume_message(epochs_done: int, step: int, checkpoint: str) -> str:
    """What a resume says, in the words of the stop message ("at epoch E, step S": E counts from 1)."""
    where = f"at epoch {epochs_done + 1}, step {step}" if step else f"after epoch {epochs_done}"
    return f"Resumed {where} ({checkpoint})"


def make_optimizer(lr: float, net: keras.Model, loss_scaling: bool):
    """Adam (inside a LossScaleOptimizer under mixed_float16), built for net's trainable variables."""
    optimizer = keras.optimizers.Adam(learning_rate=lr)
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(net.trainable_variables)
    return optimizer


def epoch_record(
    epoch: int,
    phase: Phase,
    totals: Tuple[float, float, int, float],
    batch_size: int,
    start: float,
    val_loss: float,
    val_accuracy: float,
) -> dict:
    """The epoch's history.csv row from its step totals (loss sum, correct sum, steps, seconds) and validation."""
    loss_sum, correct_sum, seen, train_seconds = totals
    images = seen * batch_size
    no_steps = float("nan") if not seen else 0.0  # resumed past the epoch's last step: nothing trained in it
    return {
        "epoch": epoch,
        "phase": phase.name,
        "loss": round(loss_sum / max(seen, 1) + no_steps, 6),
        "accuracy": round(correct_sum / max(images, 1) + no_steps, 6),
        "val_loss": round(val_loss, 6),
        "val_accuracy": round(val_accuracy, 6),
        "lr": phase.lr,
        "epoch_seconds": round(time.time() - start, 3),
        "train_seconds": round(train_seconds, 3),
        "images_per_sec": round(images / max(train_seconds, 1e-9), 1),
        "feature_cache": int(phase.use_cache),
    }


def _head_phase(config: TrainConfig, model: keras.Model, optimizer, features, epoch: int, first_step: int) -> Phase:
    """A head epoch on the cached features: held in memory (resident), or read from the cache in the epoch's order,
    resumed after `first_step` steps."""
    seed, resident = data.epoch_seed(config.seed, epoch), features.resident()
    spec = data.InputSpec(config.batch_size, True, max(config.shuffle_buffer, 10000), config.seed, epoch, first_step)
    dataset_fn = None if resident else feature_cache.dataset_fn(features.split_path("train"), spec)
    return Phase("head", model_lib.head_model(model), optimizer, config.lr, dataset_fn, True, resident, seed)


def _epoch_source(strategy: tf.distribute.Strategy, phase: Phase, steps: int) -> Callable:
    """source(step): what the phase's train loop reads from, for a call starting at `step` of the epoch: the
    epoch's order and that step (resident features), or the epoch's distributed iterator."""
    if phase.resident is not None:
        indices = phase.resident.epoch_indices(phase.seed, steps)
        return lambda step: (indices, tf.constant(step, tf.int32))
    iterator = iter(strategy.distribute_datasets_from_function(phase.dataset_fn))
    return lambda step: iterator


def _resolve_data_service(config: TrainConfig) -> TrainConfig:
    """--data_service=vertex: the dispatcher of this Vertex AI job's data service pool; and a dispatcher that does not
    answer within a bounded wait is one line, not a hang."""
    wait = data.SERVICE_WAIT_SECONDS["vertex" if config.data_service == "vertex" else "address"]
    if config.data_service == "vertex":
        config = dataclasses.replace(config, data_service=cluster.vertex_data_service())
    if config.data_service:
        data.check_service(config.data_service, wait)
    return config


def _log_setup(trainer: "Trainer") -> None:
    """The run's set-up, in the log: strategy, batch per replica, precision, feature cache, XLA, data service."""
    config = trainer.config
    LOG.info("Strategy: %s", distribute.describe(trainer.strategy))
    LOG.info(
        "global batch %d (%d per replica); precision %s; feature cache %s; XLA %s",
        config.batch_size,
        config.batch_size // trainer.replicas,
        trainer.policy,
        "on" if trainer.use_feature_cache else "off",
        "on" if trainer.jit_compile else "off",
    )
    if config.data_service:
        LOG.info(
            "training input from the tf.data service at %s (distributed_epoch: its workers read and "
            "decode%s); evaluation reads the records here",
            config.data_service,
            "; the head phase trains on cached features" if trainer.use_feature_cache else "",
        )


class Trainer:
    """Owns the strategy, model, optimizers, checkpoints and outputs of one training run."""

    def __init__(self, config: TrainConfig):
        config.validate()
        self.config = config = _resolve_data_service(config)
        self.cluster = cluster.ensure_tf_config()
        self.is_chief = cluster.is_chief(self.cluster)
        self.strategy, self.votes = distribute.meet(  # every worker of a cluster is here, or one line
            lambda: distribute.make_strategy(config.strategy, config.cross_device_ops), config.cluster_wait
        )
        self.replicas = distribute.check_global_batch(self.strategy, config.batch_size)
        self.info = data.load_for_training(config.data_dir, config.verify_data, config.batch_size)
        self.num_train = self.info.num_examples("train")
        self.steps_per_epoch = config.steps_per_epoch or self.num_train // config.batch_size
        self.policy = distribute.choose_precision(config.precision)
        distribute.set_precision(self.policy)
        self.loss_scaling = self.policy == "mixed_float16"
        self.use_feature_cache = feature_cache.wanted(config)
        multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self.num_workers = cluster.num_tasks(self.cluster) if multi_worker else 1
        self.checkpoint_dir, self.write_dir = checkpoints.checkpoint_dirs(
            config.model_dir, config.checkpoint_dir, self.is_chief, cluster.task_id(self.cluster)
        )
        self.history_path = fileio.join(config.model_dir, "history.csv")
        tensorboard_dir = config.tensorboard_dir or fileio.join(config.model_dir, "logs")
        self.report = metrics_lib.EpochReport(config.model_dir, tensorboard_dir) if self.is_chief else None
        self.sigterm = checkpoints.SigtermFlag()
        self.jit_compile = distribute.use_xla(config.jit_compile)
        self.loop_plan, self.profiler = loop.plan_and_profiler(config, self.votes, tensorboard_dir, self.is_chief)
        self._steps: Dict[Tuple[str, bool], Callable] = {}
        self._memory_cache: Dict[int, tf.data.Dataset] = {}  # --cache: decoded images kept across epochs
        self.finished_before = False  # set by train(): the run had ended, evaluated and exported already
        _log_setup(self)

    def build(self) -> None:
        config = self.config
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope():
            self.model = model_lib.build_model(
                self.info.image_size, config.weights, config.head_units, config.dropout, config.pooling, config.seed
            )
            optimizers = {"optimizer": make_optimizer(config.lr, self.model, self.loss_scaling)}
            if config.fine_tune_epochs:
                model_lib.unfreeze_from(self.model, config.fine_tune_from)
                optimizers["fine_tune_optimizer"] = make_optimizer(config.fine_tune_lr, self.model, self.loss_scaling)
                model_lib.backbone(self.model).trainable = False
            self.state = checkpoints.LoopState()
        self.optimizers = optimizers
        self.checkpoints = checkpoints.Checkpoints(
            self.checkpoint_dir, self.write_dir, self.model, self.state, optimizers
        )
        self.features, workers = None, (cluster.worker_index(self.cluster), self.num_workers)
        if self.use_feature_cache:
            self.features = feature_cache.for_run(config, self.strategy, self.model, self.info, self.policy, workers)
        self.validation = evaluation.Validation(self.strategy, self.model, self.info, config, self.features)

    def _restore(self) -> List[dict]:
        """Resumes from the latest readable checkpoint after checking the run folder's fingerprint (or clears the run
        with --fresh); returns the history kept."""
        config = self.config
        current = fingerprint.fingerprint(config, self.info, self.policy)
        if config.fresh and self.is_chief:
            checkpoints.clear_run(config.model_dir, self.checkpoint_dir)
        resuming = not config.fresh and self.checkpoints.latest is not None
        latest = self.checkpoints.restore_latest() if resuming else None
        fingerprint.settle(self.checkpoints, config.model_dir, current, self.info, bool(latest), self.is_chief)
        if not latest:
            return []
        epoch, step = int(self.state.epoch.numpy()), int(self.state.step_in_epoch.numpy())
        print(resume_message(epoch, step, latest), flush=True)
        return [row for row in metrics_lib.read_history(self.history_path) if int(row["epoch"]) <= epoch]

    def train(self) -> Dict:
        """Runs (or resumes) both phases; returns the final summary. Raises Preempted or NonFiniteLoss."""
        self.sigterm.install()
        self.build()
        history = self._restore()
        config = self.config
        total = config.epochs + config.fine_tune_epochs
        self.finished_before = (
            int(self.state.epoch.numpy()) >= total
            and not config.reevaluate
            and not self.votes.any_worker(not evaluation.outputs_written(config))
        )
        if self.finished_before:
            return {"history": history}
        if config.cache and not data.fits_in_memory(self.num_train, self.info.image_size):
            LOG.warning("--cache: decoded images would not fit in memory; streaming from the records instead")
        while int(self.state.epoch.numpy()) < total:
            if self.votes.any_worker(data.records_changed(self.info)):  # every worker stops, not just one
                raise data.changed_records_error(self.info)
            epoch = int(self.state.epoch.numpy()) + 1
            start = time.time()
            if self.is_chief and sys.stdout.isatty():  # in a log, the epoch's summary line says it all
                print(f"Epoch {epoch}/{total}", flush=True)
            phase = self._phase(epoch, int(self.state.step_in_epoch.numpy()))
            totals = self._run_steps(epoch, phase)
            self._finish_epoch(epoch, phase, totals, start, history)
        self.profiler.stop()
        if self.num_workers > 1:  # equal on every worker when they stayed in sync
            task, checksum = cluster.task_id(self.cluster), evaluation.weights_checksum(self.model)
            LOG.info("weights checksum (%s): %s", task, checksum)
        self.votes.barrier()  # the chief's last (best) checkpoint is written before anyone reads it
        if config.restore_best and self.checkpoints.restore_best():
            best, lowest = int(self.state.best_epoch.numpy()), float(self.state.best_val_loss.numpy())
            LOG.info("Restored the weights of epoch %d (lowest val_loss %.4f)", best, lowest)
        return {"history": history}

    def _phase(self, epoch: int, first_step: int) -> Phase:
        """What epoch `epoch` trains, its data in that epoch's own order, resumed after `first_step` steps."""
        config = self.config
        memory = self._memory_cache
        streaming = data.streaming_dataset_fn(config, self.info, "train", True, epoch, first_step, memory_cache=memory)
        if epoch > config.epochs:
            with self.strategy.scope():
                model_lib.unfreeze_from(self.model, config.fine_tune_from)
            return Phase(
                "fine_tune", self.model, self.optimizers["fine_tune_optimizer"], config.fine_tune_lr, streaming, False
            )
        if self.features is None:
            return Phase("head", self.model, self.optimizers["optimizer"], config.lr, streaming, False)
        return _head_phase(config, self.model, self.optimizers["optimizer"], self.features, epoch, first_step)

    def _run_steps(self, epoch: int, phase: Phase) -> Tuple[float, float, int, float]:
        """Trains the rest of the epoch in traced calls of plan.length steps; returns (loss sum, correct sum, steps
        run, seconds). SIGTERM, the loss check and step checkpoints act at call boundaries."""
        config, steps = self.config, self.steps_per_epoch
        key = (phase.name, phase.use_cache, phase.resident is not None)
        if key not in self._steps:  # one traced loop per phase, not one per epoch
            net, optimizer, batch = phase.net, phase.optimizer, config.batch_size
            self._steps[key] = make_train_step(
                self.strategy, net, optimizer, batch, self.loss_scaling, self.jit_compile, phase.resident
            )
        train_loop, source = self._steps[key], _epoch_source(self.strategy, phase, steps)
        bar, loss_sum, correct_sum = metrics_lib.progress_bar(steps, self.is_chief), 0.0, 0.0
        seen, start, step = 0, time.time(), int(self.state.step_in_epoch.numpy())
        while step < steps:
            global_step = (epoch - 1) * steps + step
            self.profiler.before(global_step)
            n, call_start = self.loop_plan.length(step, steps, global_step), time.time()
            loss, correct, stop = (
                float(t)
                for t in train_loop(source(step), tf.constant(self.sigterm.requested), tf.constant(n, tf.int32))
            )
            self.loop_plan.observe(n, time.time() - call_start)
            if not math.isfinite(loss):
                raise NonFiniteLoss(
                    f"loss became {loss} at epoch {epoch}, step {step + 1}"
                    + (f" (in steps {step + 1}-{step + n})" if n > 1 else "")
                )
            seen, loss_sum, correct_sum, step = seen + n, loss_sum + loss, correct_sum + correct, step + n
            bar.update(step, metrics_lib.running_figures(loss_sum, correct_sum, seen, config.batch_size, start))
            self.state.step_in_epoch.assign(step)
            if stop:  # SIGTERM reached some worker: all of them save this same step and stop
                self.checkpoints.save()
                who = "this worker" if self.sigterm.requested else "another worker"
                raise Preempted(f"stopped by SIGTERM (to {who}) at epoch {epoch}, step {step}; checkpoint saved")
            if config.checkpoint_steps and step % config.checkpoint_steps == 0 and step < steps:
                self.checkpoints.save()
        return loss_sum, correct_sum, seen, time.time() - start

    def _finish_epoch(
        self, epoch: int, phase: Phase, totals: Tuple[float, float, int, float], start: float, history: List[dict]
    ) -> None:
        """Validates, records the epoch (history.csv before the checkpoint: a kill in between leaves a row that the
        resume drops), keeps the best weights, then checkpoints the end of the epoch."""
        val_loss, val_accuracy = self.validation.run(phase.use_cache)
        history.append(epoch_record(epoch, phase, totals, self.config.batch_size, start, val_loss, val_accuracy))
        if self.report is not None:
            self.report.write(history, self.config.epochs + self.config.fine_tune_epochs)
        self.state.epoch.assign(epoch)
        self.state.step_in_epoch.assign(0)
        if self.state.improve(epoch, val_loss):
            self.checkpoints.save_best()
        self.checkpoints.save()

    def evaluate_and_export(self) -> Dict:
        """Test metrics, plots, metrics.json, the SavedModel and the .keras file (chief only)."""
        config = self.config
        split = "test" if self.info.has("test") else "validation"
        result = evaluation.evaluate_model(self.model, self.info, split, config.batch_size, self.strategy)
        best_epoch = int(self.state.best_epoch.numpy()) if config.restore_best else None
        result.update(evaluation.run_facts(config, self.info, self.strategy, self.policy, best_epoch))
        if not self.is_chief:
            return result
        evaluation.save_evaluation(result, config.model_dir)
        if config.export:
            evaluation.export(self.model, config.model_dir, self.info)
        return result

    def finish(self) -> None:
        """The last barrier: no worker exits (and tears down the collectives) while another still works."""
        self.votes.barrier()

    def cleanup(self) -> None:
        if not self.is_chief:
            checkpoints.remove_scratch(self.write_dir)
