"""After training: test metrics of a model on a split, metrics.json with its plot, and the exported model.

trainer.main calls these at the end of a run and trainer.evaluate calls them on a saved model; neither needs the
training loop for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import uuid
from typing import Callable, Dict, Tuple

import keras
import numpy as np
import tensorflow as tf

from celeba_common import fileio
from celeba_common.errors import UserError
from dataset_format.manifest import write_json
from trainer import data, feature_cache, metrics as metrics_lib, model as model_lib, serving
from trainer.config import trained_metrics
from trainer.steps import evaluate_distributed, gather_predictions, make_evaluate


def evaluate_model(net: keras.Model, info: data.DatasetInfo, split: str, batch_size: int, strategy=None) -> Dict:
    """metrics.json's contents for `split`: `<split>_accuracy`, `<split>_loss`, ROC AUC, confusion, slices.

    Runs on every replica and worker of `strategy` (default: this process's), each example once; RuntimeError when
    the count differs from the manifest's.
    """
    strategy = strategy or tf.distribute.get_strategy()
    dataset_fn = data.records_dataset_fn(info.records(split, with_extras=True), data.InputSpec(batch_size, False))
    probs, labels, attributes = gather_predictions(strategy, net, dataset_fn)
    if len(labels) != info.num_examples(split):
        raise RuntimeError(f"evaluated {len(labels)} {split} examples, the manifest says {info.num_examples(split)}")
    result = metrics_lib.classification_metrics(probs, labels, attributes)
    prefixed = {f"{split}_{k}" if k in ("accuracy", "loss") else k: v for k, v in result.items()}
    prefixed["split"] = split
    return prefixed


class Validation:
    """Per-epoch validation on every replica and worker, each example counted once: cached features through the
    head while they serve the epoch, else images through the whole model."""

    def __init__(self, strategy, net: keras.Model, info: data.DatasetInfo, config, features=None):
        self.strategy, self.net, self.info, self.config, self.features = strategy, net, info, config, features
        self._evaluators: Dict[str, Callable] = {}

    def run(self, on_cached_features: bool) -> Tuple[float, float]:
        """(val_loss, val_accuracy)."""
        config = self.config
        if on_cached_features:
            dataset_fn = feature_cache.dataset_fn(
                self.features.split_path("validation"), data.InputSpec(config.batch_size, training=False)
            )
            which, net = "head", model_lib.head_model(self.net)
        else:
            dataset_fn = data.streaming_dataset_fn(config, self.info, "validation", training=False)
            which, net = "model", self.net
        if which not in self._evaluators:
            self._evaluators[which] = make_evaluate(self.strategy, net)
        return evaluate_distributed(
            self.strategy, self._evaluators[which], dataset_fn, self.info.num_examples("validation")
        )


def run_facts(config, info: data.DatasetInfo, strategy, policy: str, best_epoch) -> Dict:
    """What metrics.json says about the run besides the metrics."""
    from trainer import distribute

    return {
        "best_epoch": best_epoch,
        "precision": policy,
        "strategy": distribute.strategy_name(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "flags": jsonable(dataclasses.asdict(config)),
        "image_size": info.image_size,
        "data_dir": config.data_dir,
        "transform": info.transform.as_dict(),
    }


def outputs_written(config) -> bool:
    """Whether a finished run's evaluation (and export, when wanted) are in its model_dir already."""
    wanted = ["metrics.json"] + (["model.keras", "export/saved_model.pb"] if config.export else [])
    return all(fileio.exists(fileio.join(config.model_dir, name)) for name in wanted)


def finished_message(config) -> str:
    """What a rerun of a finished run says instead of evaluating and exporting it again."""
    total = config.epochs + config.fine_tune_epochs
    try:
        metrics = trained_metrics(config.model_dir)
    except ValueError:  # a damaged metrics.json: the message does without the score
        metrics = {}
    split = metrics.get("split", "test")
    score = f", {split} accuracy {metrics[f'{split}_accuracy']:.4f}" if f"{split}_accuracy" in metrics else ""
    return (
        f"{config.model_dir} holds a finished run ({total} epoch{'s' if total != 1 else ''}{score}); nothing to "
        f"do. Pass a larger --epochs to train on, --reevaluate to evaluate and export again, or --fresh to start "
        f"over"
    )


def save_evaluation(result: Dict, model_dir: str, suffix: str = "") -> None:
    """metrics<suffix>.json and confusion_matrix<suffix>.png in model_dir."""
    write_json(fileio.join(model_dir, f"metrics{suffix}.json"), result)
    metrics_lib.plot_confusion_matrix(
        result["confusion_matrix"]["matrix"],
        fileio.join(model_dir, f"confusion_matrix{suffix}.png"),
        f"{result['split']} confusion matrix",
    )


def export(net: keras.Model, model_dir: str, info: data.DatasetInfo) -> None:
    """model.keras (for trainer.predict / evaluate) and export/ (a SavedModel for TF Serving / Vertex AI that takes
    raw image bytes; see serving.py). Each is written under a temporary name and renamed into place, so a failure
    (a full disk, say) leaves the previous ones or none, never half of one, and ends in one line."""
    keras_path, export_dir = fileio.join(model_dir, "model.keras"), fileio.join(model_dir, "export")
    tag, remote = uuid.uuid4().hex[:8], fileio.is_remote(model_dir)
    # an object store has no rename (a copy per file): there the old ones go first and the new are written in place
    keras_tmp = keras_path if remote else fileio.join(model_dir, f"model.partial-{tag}.keras")
    export_tmp = export_dir if remote else f"{export_dir}.partial-{tag}"
    try:
        if remote:
            for old in (keras_path, export_dir):
                if fileio.exists(old):
                    fileio.delete_tree(old) if fileio.isdir(old) else fileio.remove(old)
            local = os.path.join(tempfile.mkdtemp(), "model.keras")
            net.save(local)
            fileio.write_bytes(keras_tmp, fileio.read_bytes(local))
        else:
            net.save(keras_tmp)
        serving.export(net, export_tmp, info.transform)
        if not remote:
            os.replace(keras_tmp, keras_path)
            if fileio.exists(export_dir):
                fileio.delete_tree(export_dir)
            fileio.move_tree(export_tmp, export_dir)
    except (OSError, tf.errors.OpError) as e:
        for partial in (keras_tmp, export_tmp):
            if fileio.exists(partial):
                fileio.delete_tree(partial) if fileio.isdir(partial) else fileio.remove(partial)
        reason = getattr(e, "strerror", None) or " ".join(str(getattr(e, "message", e)).split(";")[-1].split())
        raise UserError(
            f"could not export the model into {model_dir}: {reason}; the checkpoints are complete: "
            f"make room and rerun the same command to evaluate and export"
        ) from None


def weights_checksum(net: keras.Model) -> str:
    """A short digest of all weights: equal on every worker when they are in sync."""
    digest = hashlib.sha256()
    for w in net.weights:
        digest.update(np.ascontiguousarray(w.numpy()).tobytes())
    return digest.hexdigest()[:16]


def jsonable(obj):
    """`obj` with anything JSON cannot hold (tuples stay lists, the rest becomes str)."""
    return json.loads(json.dumps(obj, default=str))
