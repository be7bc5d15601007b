"""Where a run can stop and pick up again: the loop's state variables, the checkpoint managers, and preemption.

A checkpoint holds the model, the optimizers and the loop position (epoch, step in it) plus the best val_loss so
far; a second manager keeps the weights of the best epoch (Keras' restore_best_weights) across resumes.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from typing import Dict, Optional

import tensorflow as tf

from celeba_common import fileio

LOG = logging.getLogger("trainer")


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved."""


class SigtermFlag:
    """Turns SIGTERM (preemption) into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False

    def install(self) -> None:
        def handler(signum, frame):
            self.requested = True

        try:
            signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (tests): no handler
            pass


class LoopState:
    """The loop position and the best epoch so far, as variables a checkpoint saves (create under the scope)."""

    def __init__(self):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self.best_val_loss = tf.Variable(float("inf"), dtype=tf.float64, trainable=False, name="best_val_loss")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")

    def trackables(self) -> Dict[str, tf.Variable]:
        return dict(epoch=self.epoch, step_in_epoch=self.step_in_epoch, best_val_loss=self.best_val_loss,
                    best_epoch=self.best_epoch)

    def improve(self, epoch: int, val_loss: float) -> bool:
        """Records val_loss as the best so far when it is; returns whether it was."""
        if val_loss < float(self.best_val_loss.numpy()):
            self.best_val_loss.assign(val_loss)
            self.best_epoch.assign(epoch)
            return True
        return False


def checkpoint_dir_for(model_dir: str, configured: Optional[str], is_chief: bool, task: str) -> str:
    """The chief saves into model_dir/checkpoints (or Vertex's folder); other workers into a scratch folder."""
    if not is_chief:  # other workers save too (collectives may need them) but into a scratch folder
        return tempfile.mkdtemp(prefix=f"ckpt-{task}-")
    return configured or fileio.join(model_dir, "checkpoints")


class Checkpoints:
    """The latest-state manager (3 kept) and the best-weights manager of one run."""

    def __init__(self, directory: str, model, state: LoopState, optimizers: Dict[str, object]):
        self.directory, self.model, self.state = directory, model, state
        self.checkpoint = tf.train.Checkpoint(model=model, **optimizers, **state.trackables())
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=3)
        self.best = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), fileio.join(directory, "best"),
                                               max_to_keep=1)

    @property
    def latest(self) -> Optional[str]:
        return self.manager.latest_checkpoint

    def restore_latest(self) -> Optional[str]:
        """Restores the latest checkpoint, if any; returns its path."""
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        return latest

    def save(self) -> None:
        self.manager.save()

    def save_best(self) -> None:
        self.best.save()

    def restore_best(self) -> bool:
        """Loads the best epoch's weights into the model; False when there are none."""
        if not self.best.latest_checkpoint:
            return False
        tf.train.Checkpoint(model=self.model).restore(self.best.latest_checkpoint).expect_partial()
        return True


def remove_scratch(directory: str) -> None:
    """Deletes a non-chief worker's scratch checkpoint folder."""
    if os.path.isdir(directory):
        shutil.rmtree(directory, ignore_errors=True)


def clear_run(paths) -> None:
    """--fresh: deletes the files and folders of an earlier run (checkpoints, history, feature cache, metrics)."""
    for path in paths:
        if fileio.exists(path):
            fileio.delete_tree(path) if fileio.isdir(path) else fileio.remove(path)
