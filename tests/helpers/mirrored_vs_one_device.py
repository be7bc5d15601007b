"""Trains 2 steps under MirroredStrategy over 2 logical CPUs and under the default strategy, from the same
initial weights and the same global batches; prints the largest weight difference as JSON.

Usage: python tests/helpers/mirrored_vs_one_device.py DATA_DIR
(A separate process: the CPU must be split into logical devices before TensorFlow starts.)
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from trainer import data, distribute, model as model_lib  # noqa: E402
from trainer.steps import make_train_step  # noqa: E402

GLOBAL_BATCH = 8


def train(strategy, info):
    keras.utils.set_random_seed(1)
    with strategy.scope():
        net = model_lib.build_model(info.image_size, "none", (16,), 0.0, "flatten", seed=1)
        optimizer = keras.optimizers.Adam(1e-2)
        optimizer.build(net.trainable_variables)
    dataset_fn = data.make_dataset_fn(info.files("train"), info.image_size, GLOBAL_BATCH, training=False,
                                      drop_remainder=True)
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    step = make_train_step(strategy, net, optimizer, GLOBAL_BATCH, loss_scaling=False)
    losses = [float(step(iterator)[0]) for _ in range(2)]
    return [w.numpy() for w in net.trainable_weights], losses


def main():
    info = data.load(sys.argv[1])
    mirrored = distribute.make_strategy("mirrored")
    single = tf.distribute.get_strategy()
    weights_m, losses_m = train(mirrored, info)
    weights_s, losses_s = train(single, info)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights_m, weights_s))
    moved = max(float(np.max(np.abs(a))) for a in weights_s)
    print(json.dumps({"replicas": mirrored.num_replicas_in_sync, "max_weight_diff": diff, "losses_mirrored": losses_m,
                      "losses_single": losses_s, "max_abs_weight": moved}))


if __name__ == "__main__":
    main()
