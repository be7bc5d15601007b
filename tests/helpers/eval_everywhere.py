"""Evaluates one seeded model on the validation and test splits under one strategy; prints the figures as JSON.

Usage: python tests/helpers/eval_everywhere.py one|mirrored DATA_DIR
       python -m launch.local_cluster --num_workers=2 --module=eval_everywhere -- multi_worker DATA_DIR
(A separate process: logical devices and TF_CONFIG must be set before TensorFlow starts.)
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import tensorflow as tf  # noqa: E402

MODE, DATA_DIR = sys.argv[1], sys.argv[2]
if MODE == "mirrored":
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )

import keras  # noqa: E402

from trainer import data, evaluation, model as model_lib  # noqa: E402
from trainer.steps import evaluate_distributed, make_evaluate  # noqa: E402

BATCH = 6  # global; leaves partial (and, per replica, empty) last batches


def main():
    strategy = {
        "one": tf.distribute.get_strategy,
        "mirrored": lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
        "multi_worker": tf.distribute.MultiWorkerMirroredStrategy,
    }[MODE]()
    info = data.load(DATA_DIR)
    keras.utils.set_random_seed(1)
    with strategy.scope():
        net = model_lib.build_model(info.image_size, "none", (16,), 0.0, "flatten", seed=1)
    val_fn = data.records_dataset_fn(info.records("validation"), data.InputSpec(BATCH, training=False))
    val_loss, val_accuracy = evaluate_distributed(
        strategy, make_evaluate(strategy, net), val_fn, info.num_examples("validation")
    )
    test = evaluation.evaluate_model(net, info, "test", BATCH, strategy)
    print(
        json.dumps(
            {
                "mode": MODE,
                "replicas": strategy.num_replicas_in_sync,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "test_loss": test["test_loss"],
                "test_accuracy": test["test_accuracy"],
                "roc_auc": test["roc_auc"],
                "num_examples": test["num_examples"],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
