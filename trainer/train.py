"""The training loop: a custom step under any tf.distribute strategy, checkpoints, resume, history, evaluation.

Keras 3 `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so the step is written with
`strategy.run` + `distribute_datasets_from_function` + `tf.nn.compute_average_loss(global_batch_size=...)`, which
works the same under the default, one-device, mirrored and multi-worker strategies.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from preprocessing import fileio
from preprocessing.cli import UserError
from trainer import cluster, data, distribute, metrics as metrics_lib, model as model_lib

LOG = logging.getLogger("trainer")
tf.get_logger().setLevel(logging.WARNING)
HISTORY_FIELDS = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds",
                  "images_per_sec", "feature_cache")
FEATURE_CACHE_MODES = ("auto", "on", "off")


@dataclasses.dataclass
class TrainConfig:
    data_dir: str
    model_dir: str
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-4
    weights: str = "imagenet"
    head_units: Tuple[int, ...] = (256,)
    dropout: float = 0.5
    pooling: str = "flatten"
    precision: str = "auto"
    strategy: str = "auto"
    cross_device_ops: str = "auto"
    shuffle_buffer: int = 2048
    augment: bool = False
    cache: bool = False
    feature_cache: str = "auto"
    seed: int = 42
    checkpoint_steps: int = 0
    fresh: bool = False
    fine_tune_from: str = ""
    fine_tune_epochs: int = 0
    fine_tune_lr: float = 1e-5
    steps_per_epoch: int = 0
    verify_data: bool = True
    export: bool = True
    restore_best: bool = True
    checkpoint_dir: Optional[str] = None
    tensorboard_dir: Optional[str] = None

    def validate(self) -> None:
        checks = [
            (self.batch_size > 0, f"--batch_size={self.batch_size}: must be > 0"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr={self.lr}: must be > 0"),
            (self.epochs >= 0, f"--epochs={self.epochs}: must be >= 0"),
            (self.fine_tune_epochs >= 0, f"--fine_tune_epochs={self.fine_tune_epochs}: must be >= 0"),
            (self.fine_tune_lr > 0, f"--fine_tune_lr={self.fine_tune_lr}: must be > 0"),
            (self.epochs + self.fine_tune_epochs > 0, "--epochs and --fine_tune_epochs are both 0: nothing to train"),
            (not self.fine_tune_epochs or self.fine_tune_from,
             "--fine_tune_epochs needs --fine_tune_from (e.g. block5_conv1)"),
            (0 <= self.dropout < 1, f"--dropout={self.dropout}: must be in [0, 1)"),
            (all(u > 0 for u in self.head_units), f"--head_units={self.head_units}: must be positive integers"),
            (self.shuffle_buffer > 0, f"--shuffle_buffer={self.shuffle_buffer}: must be > 0"),
            (self.checkpoint_steps >= 0, f"--checkpoint_steps={self.checkpoint_steps}: must be >= 0"),
            (self.steps_per_epoch >= 0, f"--steps_per_epoch={self.steps_per_epoch}: must be >= 0"),
            (self.precision in distribute.PRECISIONS,
             f"--precision={self.precision}: expected one of {', '.join(distribute.PRECISIONS)}"),
            (self.strategy in distribute.STRATEGIES,
             f"--strategy={self.strategy}: expected one of {', '.join(distribute.STRATEGIES)}"),
            (self.feature_cache in FEATURE_CACHE_MODES,
             f"--feature_cache={self.feature_cache}: expected one of {', '.join(FEATURE_CACHE_MODES)}"),
            (self.weights.lower() in ("imagenet", "none") or fileio.exists(self.weights),
             f"--weights={self.weights}: no such file; {model_lib.WEIGHTS_HELP}"),
            (self.pooling in model_lib.POOLINGS,
             f"--pooling={self.pooling}: expected one of {', '.join(model_lib.POOLINGS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved."""


class NonFiniteLoss(Exception):
    pass


class _Stop:
    """Turns SIGTERM (preemption) into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False

    def install(self):
        def handler(signum, frame):
            self.requested = True

        try:
            signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (tests): no handler
            pass


# --- the steps ---------------------------------------------------------------------------------------------------

def _train_step_fn(strategy, net: keras.Model, optimizer, global_batch: int, loss_scaling: bool):
    def step_fn(inputs, labels):
        with tf.GradientTape() as tape:
            probs = net(inputs, training=True)
            per_example = keras.losses.categorical_crossentropy(labels, probs)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss) if loss_scaling else loss
        variables = net.trainable_variables
        grads = tape.gradient(scaled, variables)
        optimizer.apply(grads, variables)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, -1), tf.argmax(labels, -1)), tf.float32))
        return loss, correct

    @tf.function
    def train_step(iterator):
        inputs, labels = next(iterator)
        loss, correct = strategy.run(step_fn, args=(inputs, labels))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))

    return train_step


_FORWARD: Dict[int, object] = {}


def _forward(net: keras.Model):
    """One traced inference function per model (not one per call)."""
    if id(net) not in _FORWARD:
        _FORWARD[id(net)] = tf.function(lambda x: net(x, training=False), reduce_retracing=True)
    return _FORWARD[id(net)]


def predict(net: keras.Model, dataset: tf.data.Dataset, with_extras: bool = False):
    """Runs `net` over a (non-distributed) dataset on this process; returns probs, labels (+ attributes, names)."""
    forward = _forward(net)
    probs, labels, attributes, names = [], [], [], []
    for batch in dataset:
        probs.append(forward(batch[0]).numpy())
        labels.append(np.argmax(batch[1].numpy(), axis=-1))
        if with_extras:
            attributes.append(batch[2]["attributes"].numpy())
            names.append(batch[2]["filename"].numpy())
    probs = np.concatenate(probs) if probs else np.zeros((0, 2), np.float32)
    labels = np.concatenate(labels) if labels else np.zeros((0,), np.int64)
    if with_extras:
        return probs, labels, np.concatenate(attributes), np.concatenate(names)
    return probs, labels


def loss_and_accuracy(probs: np.ndarray, labels: np.ndarray) -> Tuple[float, float]:
    if not len(labels):
        return float("nan"), float("nan")
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    return float(-np.mean(np.log(p))), float(np.mean(probs.argmax(-1) == labels))


# --- the frozen-feature cache ------------------------------------------------------------------------------------

def _feature_cache_dir(config: TrainConfig, info: data.DatasetInfo, policy: str) -> str:
    shards = [s["sha256"] for split in info.manifest["splits"].values() for s in split["shards"]]
    key = json.dumps([shards, config.weights, config.pooling, policy, config.seed], sort_keys=True)
    return fileio.join(config.model_dir, "feature_cache", hashlib.sha256(key.encode()).hexdigest()[:16])


def build_feature_cache(net: keras.Model, info: data.DatasetInfo, split: str, path: str,
                        batch_size: int) -> tf.data.Dataset:
    """Computes the frozen backbone's pooled features of a split once and saves them (tf.data.Dataset.save)."""
    if fileio.exists(fileio.join(path, "_DONE")):
        return tf.data.Dataset.load(path)
    features = model_lib.feature_model(net)
    forward = tf.function(lambda x: features(x, training=False))
    source = data.make_dataset_fn(info.files(split), info.image_size, batch_size, training=False,
                                  with_extras=False)()
    dtype = features.output.dtype

    def generate():
        for images, labels in source:
            yield forward(images), labels

    spec = (tf.TensorSpec([None, features.output.shape[-1]], dtype), tf.TensorSpec([None, 2], tf.float32))
    tf.data.Dataset.from_generator(generate, output_signature=spec).unbatch().save(path)
    fileio.write_bytes(fileio.join(path, "_DONE"), b"")
    return tf.data.Dataset.load(path)


def _features_dataset_fn(cached: tf.data.Dataset, global_batch: int, training: bool, buffer: int, seed: int):
    def dataset_fn(input_context=None):
        ds = cached
        batch = global_batch
        if input_context is not None:
            batch = input_context.get_per_replica_batch_size(global_batch)
        if training:
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        return ds.batch(batch, drop_remainder=training).prefetch(tf.data.AUTOTUNE)

    return dataset_fn


# --- history -----------------------------------------------------------------------------------------------------

def _write_history(path: str, rows: List[dict]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_bytes(path, out.getvalue().encode())


# --- the trainer -------------------------------------------------------------------------------------------------

class Trainer:
    """Owns the strategy, model, optimizers, checkpoints and outputs of one training run."""

    def __init__(self, config: TrainConfig):
        config.validate()
        self.config = config
        self.cluster = cluster.ensure_tf_config()
        self.is_chief = cluster.is_chief(self.cluster)
        self.strategy = distribute.make_strategy(config.strategy, config.cross_device_ops)
        self.replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % self.replicas:
            raise UserError(f"--batch_size={config.batch_size} does not divide by the {self.replicas} replicas in "
                            f"sync; use a multiple of {self.replicas}")
        self.info = data.load(config.data_dir, verify=config.verify_data)
        for split in ("train", "validation"):
            if not self.info.has(split):
                raise UserError(f"data folder {config.data_dir} has no {split} split")
        self.num_train = self.info.num_examples("train")
        if config.batch_size > self.num_train:
            raise UserError(f"--batch_size={config.batch_size} is larger than the train split "
                            f"({self.num_train} images)")
        self.steps_per_epoch = config.steps_per_epoch or self.num_train // config.batch_size
        self.policy = distribute.choose_precision(config.precision)
        distribute.set_precision(self.policy)
        self.loss_scaling = self.policy == "mixed_float16"
        multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self.use_feature_cache = self._feature_cache_wanted(multi_worker)
        self.checkpoint_dir = config.checkpoint_dir or fileio.join(config.model_dir, "checkpoints")
        if not self.is_chief:  # other workers save too (collectives may need them) but into a scratch folder
            self.checkpoint_dir = tempfile.mkdtemp(prefix=f"ckpt-{cluster.task_id(self.cluster)}-")
        self.tensorboard_dir = config.tensorboard_dir or fileio.join(config.model_dir, "logs")
        self.history_path = fileio.join(config.model_dir, "history.csv")
        self.stop = _Stop()
        self._steps = {}
        LOG.info("Strategy: %s", distribute.describe(self.strategy))
        LOG.info("global batch %d (%d per replica); precision %s; feature cache %s", config.batch_size,
                 config.batch_size // self.replicas, self.policy, "on" if self.use_feature_cache else "off")

    def _feature_cache_wanted(self, multi_worker: bool) -> bool:
        mode, config = self.config.feature_cache, self.config
        if mode == "off":
            return False
        reason = None
        if config.augment:
            reason = "--augment changes the images every epoch"
        elif multi_worker:
            reason = "it is single-machine (multi-worker training streams)"
        elif config.epochs == 0:
            reason = "there is no frozen-backbone phase"
        if reason and mode == "on":
            raise UserError(f"--feature_cache=on cannot be used here: {reason}")
        return reason is None

    # -- setup --

    def _build(self) -> None:
        config = self.config
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope():
            self.model = model_lib.build_model(self.info.image_size, config.weights, config.head_units,
                                               config.dropout, config.pooling, config.seed)
            self.optimizer = self._optimizer(config.lr)
            self.optimizer.build(self.model.trainable_variables)
            self.fine_tune_optimizer = None
            if config.fine_tune_epochs:
                model_lib.unfreeze_from(self.model, config.fine_tune_from)
                self.fine_tune_optimizer = self._optimizer(config.fine_tune_lr)
                self.fine_tune_optimizer.build(self.model.trainable_variables)
                model_lib.backbone(self.model).trainable = False
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
            self.best_val_loss = tf.Variable(float("inf"), dtype=tf.float64, trainable=False, name="best_val_loss")
            self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        trackables = dict(model=self.model, optimizer=self.optimizer, epoch=self.epoch,
                          step_in_epoch=self.step_in_epoch, best_val_loss=self.best_val_loss,
                          best_epoch=self.best_epoch)
        if self.fine_tune_optimizer is not None:
            trackables["fine_tune_optimizer"] = self.fine_tune_optimizer
        self.checkpoint = tf.train.Checkpoint(**trackables)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.checkpoint_dir, max_to_keep=3)
        # The weights of the epoch with the lowest val_loss (Keras' restore_best_weights), kept across resumes.
        self.best_manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=self.model),
                                                       fileio.join(self.checkpoint_dir, "best"), max_to_keep=1)

    def _optimizer(self, lr: float):
        optimizer = keras.optimizers.Adam(learning_rate=lr)
        return keras.optimizers.LossScaleOptimizer(optimizer) if self.loss_scaling else optimizer

    def _restore(self) -> List[dict]:
        config = self.config
        if config.fresh and self.is_chief:
            for path in (self.checkpoint_dir, self.history_path, fileio.join(config.model_dir, "feature_cache"),
                         fileio.join(config.model_dir, "metrics.json")):
                if fileio.exists(path):
                    fileio.delete_tree(path) if fileio.isdir(path) else fileio.remove(path)
        history = metrics_lib.read_history(self.history_path)
        latest = None if config.fresh else self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            epoch, step = int(self.epoch.numpy()), int(self.step_in_epoch.numpy())
            LOG.info("Resumed from epoch %d%s (%s)", epoch, f", step {step}" if step else "", latest)
            print(f"Resumed from epoch {epoch}" + (f", step {step}" if step else ""), flush=True)
            history = [row for row in history if int(row["epoch"]) <= epoch]
        else:
            history = []
        return history

    def _save(self) -> None:
        self.manager.save()

    # -- training --

    def _streaming_dataset(self, training: bool, split: str):
        return data.make_dataset_fn(
            self.info.files(split), self.info.image_size, self.config.batch_size, training=training,
            shuffle_buffer=self.config.shuffle_buffer, augment_images=self.config.augment and training,
            cache=self.config.cache and training and data.fits_in_memory(self.num_train, self.info.image_size),
            seed=self.config.seed)

    def train(self) -> Dict:
        """Runs (or resumes) both phases; returns the final summary. Raises Preempted or NonFiniteLoss."""
        self.stop.install()
        self._build()
        history = self._restore()
        config = self.config
        total = config.epochs + config.fine_tune_epochs
        writer = tf.summary.create_file_writer(self.tensorboard_dir) if self.is_chief else None
        if config.cache and not data.fits_in_memory(self.num_train, self.info.image_size):
            LOG.warning("--cache: decoded images would not fit in memory; streaming from the records instead")
        val_fn = self._validation_fn()
        while int(self.epoch.numpy()) < total:
            epoch = int(self.epoch.numpy()) + 1
            phase = "head" if epoch <= config.epochs else "fine_tune"
            self._run_epoch(epoch, total, phase, val_fn, writer, history)
        LOG.info("weights checksum (%s): %s", cluster.task_id(self.cluster), weights_checksum(self.model))
        if config.restore_best and self.best_manager.latest_checkpoint:
            tf.train.Checkpoint(model=self.model).restore(self.best_manager.latest_checkpoint).expect_partial()
            LOG.info("Restored the weights of epoch %d (lowest val_loss %.4f)", int(self.best_epoch.numpy()),
                     float(self.best_val_loss.numpy()))
        return {"history": history}

    def _validation_fn(self):
        """Per-epoch validation, on this process: cached features through the head, or images through the model."""
        cache = {}

        def validate(phase: str):
            if phase == "head" and self.use_feature_cache:
                if "val" not in cache:
                    cache["val"] = self._cached("validation")
                ds = _features_dataset_fn(cache["val"], self.config.batch_size, False, 1, self.config.seed)()
                return loss_and_accuracy(*predict(model_lib.head_model(self.model), ds))
            ds = self._streaming_dataset(False, "validation")()
            return loss_and_accuracy(*predict(self.model, ds))

        return validate

    def _cached(self, split: str) -> tf.data.Dataset:
        path = fileio.join(_feature_cache_dir(self.config, self.info, self.policy), split)
        return build_feature_cache(self.model, self.info, split, path, self.config.batch_size)

    def _run_epoch(self, epoch: int, total: int, phase: str, validate, writer, history: List[dict]) -> None:
        """Trains one epoch (or its remainder after a resume), validates, records history, then checkpoints.

        history.csv is written before the checkpoint: a kill in between leaves a row that the resume drops.
        """
        config = self.config
        start = time.time()
        use_cache = phase == "head" and self.use_feature_cache
        if phase == "fine_tune":
            with self.strategy.scope():
                model_lib.unfreeze_from(self.model, config.fine_tune_from)
            net, optimizer, lr = self.model, self.fine_tune_optimizer, config.fine_tune_lr
        else:
            net, optimizer, lr = self.model, self.optimizer, config.lr
        if use_cache:
            cached = self._cached("train")
            net = model_lib.head_model(self.model)
            dataset_fn = _features_dataset_fn(cached, config.batch_size, True, max(config.shuffle_buffer, 10000),
                                              config.seed + epoch)
        else:
            dataset_fn = self._streaming_dataset(True, "train")
        dist = self.strategy.distribute_datasets_from_function(dataset_fn)
        key = (phase, use_cache)
        if key not in self._steps:  # one traced step per phase, not one per epoch
            self._steps[key] = _train_step_fn(self.strategy, net, optimizer, config.batch_size, self.loss_scaling)
        step_fn = self._steps[key]
        iterator = iter(dist)
        first_step = int(self.step_in_epoch.numpy())
        steps = self.steps_per_epoch
        print(f"Epoch {epoch}/{total}", flush=True)
        bar = keras.utils.Progbar(steps, stateful_metrics=["loss", "accuracy", "images/s"],
                                  verbose=(1 if sys.stdout.isatty() else 2) if self.is_chief else 0)
        loss_sum = correct_sum = 0.0
        seen = 0
        train_start = time.time()
        for step in range(first_step, steps):
            loss, correct = step_fn(iterator)
            loss, correct = float(loss), float(correct)
            if not math.isfinite(loss):
                raise NonFiniteLoss(f"loss became {loss} at epoch {epoch}, step {step + 1}")
            seen += 1
            loss_sum += loss
            correct_sum += correct
            elapsed = time.time() - train_start
            bar.update(step + 1, [("loss", loss_sum / seen), ("accuracy", correct_sum / (seen * config.batch_size)),
                                  ("images/s", seen * config.batch_size / max(elapsed, 1e-9))])
            self.step_in_epoch.assign(step + 1)
            if self.stop.requested:
                self._save()
                raise Preempted(f"stopped by SIGTERM at epoch {epoch}, step {step + 1}; checkpoint saved")
            if config.checkpoint_steps and (step + 1) % config.checkpoint_steps == 0 and step + 1 < steps:
                self._save()
        train_seconds = time.time() - train_start
        val_loss, val_accuracy = validate(phase)
        seconds = time.time() - start
        row = {"epoch": epoch, "phase": phase, "loss": round(loss_sum / max(seen, 1), 6),
               "accuracy": round(correct_sum / max(seen * config.batch_size, 1), 6),
               "val_loss": round(val_loss, 6), "val_accuracy": round(val_accuracy, 6), "lr": lr,
               "epoch_seconds": round(seconds, 3),
               "images_per_sec": round(seen * config.batch_size / max(train_seconds, 1e-9), 1),
               "feature_cache": int(use_cache)}
        history.append(row)
        if self.is_chief:
            print(f"  val_loss {val_loss:.4f}  val_accuracy {val_accuracy:.4f}  "
                  f"({seconds:.1f} s, {row['images_per_sec']:.0f} images/s)", flush=True)
            _write_history(self.history_path, history)
            metrics_lib.plot_learning_curves(history, fileio.join(config.model_dir, "learning_curves.png"))
            with writer.as_default(step=epoch):
                for key in ("loss", "accuracy", "val_loss", "val_accuracy", "images_per_sec", "epoch_seconds"):
                    tf.summary.scalar(key, row[key])
            writer.flush()
        self.epoch.assign(epoch)
        self.step_in_epoch.assign(0)
        if val_loss < float(self.best_val_loss.numpy()):
            self.best_val_loss.assign(val_loss)
            self.best_epoch.assign(epoch)
            self.best_manager.save()
        self._save()

    # -- after training --

    def evaluate_and_export(self) -> Dict:
        """Test metrics, plots, metrics.json, the SavedModel and the .keras file (chief only)."""
        config = self.config
        split = "test" if self.info.has("test") else "validation"
        result = evaluate_model(self.model, self.info, split, config.batch_size)
        result.update({"best_epoch": int(self.best_epoch.numpy()) if config.restore_best else None,
                       "precision": self.policy, "strategy": distribute.strategy_name(self.strategy),
                       "replicas": self.replicas, "flags": _jsonable(dataclasses.asdict(config)),
                       "image_size": self.info.image_size, "data_dir": config.data_dir})
        if not self.is_chief:
            return result
        save_evaluation(result, config.model_dir)
        if config.export:
            export(self.model, config.model_dir)
        if fileio.exists(fileio.join(config.model_dir, "feature_cache")):
            fileio.delete_tree(fileio.join(config.model_dir, "feature_cache"))
        return result

    def cleanup(self) -> None:
        if not self.is_chief and os.path.isdir(self.checkpoint_dir):
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)


def weights_checksum(net: keras.Model) -> str:
    """A short digest of all weights: equal on every worker when they are in sync."""
    digest = hashlib.sha256()
    for w in net.weights:
        digest.update(np.ascontiguousarray(w.numpy()).tobytes())
    return digest.hexdigest()[:16]


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def evaluate_model(net: keras.Model, info: data.DatasetInfo, split: str, batch_size: int) -> Dict:
    ds = data.make_dataset_fn(info.files(split), info.image_size, batch_size, training=False, with_extras=True)()
    probs, labels, attributes, _ = predict(net, ds, with_extras=True)
    result = metrics_lib.classification_metrics(probs, labels, attributes)
    prefixed = {f"{split}_{k}" if k in ("accuracy", "loss") else k: v for k, v in result.items()}
    prefixed["split"] = split
    return prefixed


def save_evaluation(result: Dict, model_dir: str, suffix: str = "") -> None:
    from preprocessing.manifest import write_json

    write_json(fileio.join(model_dir, f"metrics{suffix}.json"), result)
    metrics_lib.plot_confusion_matrix(result["confusion_matrix"]["matrix"],
                                      fileio.join(model_dir, f"confusion_matrix{suffix}.png"),
                                      f"{result['split']} confusion matrix")


def export(net: keras.Model, model_dir: str) -> None:
    """model.keras (for trainer.predict / evaluate) and export/ (a SavedModel for TF Serving / Vertex)."""
    keras_path = fileio.join(model_dir, "model.keras")
    if fileio.is_remote(model_dir):
        local = os.path.join(tempfile.mkdtemp(), "model.keras")
        net.save(local)
        fileio.write_bytes(keras_path, open(local, "rb").read())
    else:
        net.save(keras_path)
    export_dir = fileio.join(model_dir, "export")
    if fileio.exists(export_dir):
        fileio.delete_tree(export_dir)
    net.export(export_dir, format="tf_saved_model", verbose=False)
