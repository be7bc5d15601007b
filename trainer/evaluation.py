"""After training: test metrics of a model on a split, metrics.json with its plot, and the exported model.

trainer.main calls these at the end of a run and trainer.evaluate calls them on a saved model; neither needs the
training loop for it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Dict

import keras
import numpy as np

from celeba_common import fileio
from preprocessing.manifest import write_json
from trainer import data, metrics as metrics_lib
from trainer.steps import make_forward, predict


def evaluate_model(net: keras.Model, info: data.DatasetInfo, split: str, batch_size: int) -> Dict:
    """metrics.json's contents for `split`: `<split>_accuracy`, `<split>_loss`, ROC AUC, confusion, slices."""
    ds = data.make_dataset_fn(info.files(split), info.image_size, batch_size, training=False, with_extras=True)()
    probs, labels, attributes, _ = predict(make_forward(net), ds, with_extras=True)
    result = metrics_lib.classification_metrics(probs, labels, attributes)
    prefixed = {f"{split}_{k}" if k in ("accuracy", "loss") else k: v for k, v in result.items()}
    prefixed["split"] = split
    return prefixed


def save_evaluation(result: Dict, model_dir: str, suffix: str = "") -> None:
    """metrics<suffix>.json and confusion_matrix<suffix>.png in model_dir."""
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
        fileio.write_bytes(keras_path, fileio.read_bytes(local))
    else:
        net.save(keras_path)
    export_dir = fileio.join(model_dir, "export")
    if fileio.exists(export_dir):
        fileio.delete_tree(export_dir)
    net.export(export_dir, format="tf_saved_model", verbose=False)


def weights_checksum(net: keras.Model) -> str:
    """A short digest of all weights: equal on every worker when they are in sync."""
    digest = hashlib.sha256()
    for w in net.weights:
        digest.update(np.ascontiguousarray(w.numpy()).tobytes())
    return digest.hexdigest()[:16]


def jsonable(obj):
    """`obj` with anything JSON cannot hold (tuples stay lists, the rest becomes str)."""
    return json.loads(json.dumps(obj, default=str))
