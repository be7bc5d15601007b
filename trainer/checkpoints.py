"""Where a run can stop and pick up again: the loop's state variables, the checkpoint managers, and preemption.

A checkpoint holds the model, the optimizers and the loop position (epoch, step in it) plus the best val_loss so
far; a second manager keeps the weights of the best epoch (Keras' restore_best_weights) across resumes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
from typing import Dict, Optional, Tuple

import tensorflow as tf

from celeba_common import fileio
from celeba_common.errors import UserError

LOG = logging.getLogger("trainer")


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved."""


class SigtermFlag:
    """Turns SIGTERM (preemption) into a flag that the next train step shares with every worker (steps.py): the
    whole cluster then saves at the same step and stops, whichever worker was told."""

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
        return dict(
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            best_val_loss=self.best_val_loss,
            best_epoch=self.best_epoch,
        )

    def improve(self, epoch: int, val_loss: float) -> bool:
        """Records val_loss as the best so far when it is; returns whether it was."""
        if val_loss < float(self.best_val_loss.numpy()):
            self.best_val_loss.assign(val_loss)
            self.best_epoch.assign(epoch)
            return True
        return False


def checkpoint_dirs(model_dir: str, configured: Optional[str], is_chief: bool, task: str) -> Tuple[str, str]:
    """(read, write): every worker restores from the chief's folder (model_dir/checkpoints or Vertex's); the chief
    writes there too, the other workers into a scratch folder of their own (TF's multi-worker custom-loop recipe:
    every worker saves, since saving may involve collectives, but only the chief's copy is kept)."""
    chief_dir = configured or fileio.join(model_dir, "checkpoints")
    return chief_dir, chief_dir if is_chief else tempfile.mkdtemp(prefix=f"ckpt-{task}-")


class Checkpoints:
    """The latest-state manager (3 kept) and the best-weights manager of one run."""

    def __init__(self, read_dir: str, write_dir: str, model, state: LoopState, optimizers: Dict[str, object]):
        self.read_dir, self.write_dir, self.model, self.state = read_dir, write_dir, model, state
        with tf.device("CPU:0"):  # what the run was trained on and with (fingerprint.py), as JSON, in the checkpoint
            self.fingerprint = tf.Variable("", trainable=False, name="fingerprint")
        self.checkpoint = tf.train.Checkpoint(
            model=model, **optimizers, **state.trackables(), fingerprint=self.fingerprint
        )
        self._older = tf.train.Checkpoint(model=model, **optimizers, **state.trackables())  # saved without one
        self.manager = tf.train.CheckpointManager(self.checkpoint, write_dir, max_to_keep=3)
        self.best = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model), fileio.join(write_dir, "best"), max_to_keep=1
        )

    @property
    def latest(self) -> Optional[str]:
        return tf.train.latest_checkpoint(self.read_dir)

    def restore_latest(self) -> Optional[str]:
        """Restores the chief's latest readable checkpoint, if any (on every worker); returns its path.

        An unreadable one (cut short by a full disk or a kill mid-save) is skipped for the one before it, saying so.
        """
        state = tf.train.get_checkpoint_state(self.read_dir)
        candidates = list(reversed(state.all_model_checkpoint_paths)) if state else []
        for path in candidates:
            try:
                saved = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
                checkpoint = self.checkpoint if "fingerprint" in saved else self._older
                checkpoint.restore(path).assert_existing_objects_matched()
                return path
            except Exception as e:  # noqa: BLE001  (a cut file raises OpError, IndexError, ValueError...)
                reason = " ".join(str(e).split())[:200]
                if "shape" in reason.lower() and "mismatch" in reason.lower():
                    raise UserError(
                        f"checkpoint {path} does not fit this model ({reason}); pass --fresh to start "
                        f"over, or use another --model_dir"
                    ) from None
                LOG.warning(
                    "checkpoint %s is unreadable (%s: %s); trying the one before it", path, type(e).__name__, reason
                )
        if candidates:
            raise UserError(
                f"no readable checkpoint in {self.read_dir} (all {len(candidates)} are damaged); pass "
                f"--fresh to start over"
            )
        return None

    def stored_fingerprint(self) -> Optional[dict]:
        """The fingerprint the restored checkpoint was saved with; None for a checkpoint from before it was kept."""
        text = self.fingerprint.numpy().decode()
        return json.loads(text) if text else None

    def stamp(self, fingerprint: dict) -> None:
        """The fingerprint that the next checkpoints carry."""
        self.fingerprint.assign(json.dumps(fingerprint, sort_keys=True))

    def save(self) -> None:
        self._guarded(self.manager)

    def save_best(self) -> None:
        self._guarded(self.best)

    def _guarded(self, manager: tf.train.CheckpointManager) -> None:
        """Saves; a failed save (a full disk, say) removes its half-written *_temp folder and ends in one line."""
        try:
            manager.save()
        except tf.errors.OpError as e:
            for temp in fileio.glob(fileio.join(manager.directory, "*_temp")):
                fileio.delete_tree(temp)
            reason = " ".join(e.message.split(";")[-1].split()) or type(e).__name__
            raise UserError(
                f"could not save a checkpoint in {manager.directory}: {reason}; the last complete checkpoint is kept"
            ) from None

    def restore_best(self) -> bool:
        """Loads the best epoch's weights (the chief's copy) into the model; False when there are none."""
        best = tf.train.latest_checkpoint(fileio.join(self.read_dir, "best"))
        if not best:
            return False
        tf.train.Checkpoint(model=self.model).restore(best).expect_partial()
        return True


def remove_scratch(directory: str) -> None:
    """Deletes a non-chief worker's scratch checkpoint folder."""
    if os.path.isdir(directory):
        shutil.rmtree(directory, ignore_errors=True)


RUN_OUTPUTS = ("history.csv", "metrics.json", "model.keras", "export", "learning_curves.png", "confusion_matrix.png")


def clear_run(model_dir: str, checkpoint_dir: str) -> None:
    """--fresh: deletes the checkpoints and outputs of an earlier run first, so that a --fresh run stopped early
    leaves nothing of the old one beside its own run.json (predict would apply one run's transform to another's
    model)."""
    for path in (checkpoint_dir, *(fileio.join(model_dir, name) for name in RUN_OUTPUTS)):
        if fileio.exists(path):
            fileio.delete_tree(path) if fileio.isdir(path) else fileio.remove(path)
