"""Trains 2 steps under MirroredStrategy over 2 logical CPUs and under the default strategy, from the same
initial weights and the same global batches, streaming images, on features held in memory (the resident path) and
on features read back from the cache folder (the streamed path); prints the largest weight differences as JSON.

Usage: python tests/helpers/mirrored_vs_one_device.py DATA_DIR
(A separate process: the CPU must be split into logical devices before TensorFlow starts.)
"""

import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from trainer import data, distribute, feature_cache, model as model_lib  # noqa: E402
from trainer.steps import make_train_step  # noqa: E402

GLOBAL_BATCH = 8


def train(strategy, info):
    keras.utils.set_random_seed(1)
    with strategy.scope():
        net = model_lib.build_model(info.image_size, "none", (16,), 0.0, "flatten", seed=1)
        optimizer = keras.optimizers.Adam(1e-2)
        optimizer.build(net.trainable_variables)
    dataset_fn = data.records_dataset_fn(
        info.records("train"), data.InputSpec(GLOBAL_BATCH, training=False), drop_remainder=True
    )
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    step = make_train_step(strategy, net, optimizer, GLOBAL_BATCH, loss_scaling=False)
    losses = [float(step(iterator)[0]) for _ in range(2)]
    return [w.numpy() for w in net.trainable_weights], losses


def _net_head_optimizer(strategy, info):
    """The seeded model, its head, and an Adam built for the head, under `strategy`."""
    keras.utils.set_random_seed(1)
    with strategy.scope():
        net = model_lib.build_model(info.image_size, "none", (16,), 0.0, "flatten", seed=1)
        head = model_lib.head_model(net)
        optimizer = keras.optimizers.Adam(1e-2)
        optimizer.build(head.trainable_variables)
    return net, head, optimizer


def train_resident(strategy, info):
    """3 steps of the head on features held in memory, 2 steps in one call then 1, from step 0 of an epoch."""
    _, head, optimizer = _net_head_optimizer(strategy, info)
    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(size=(40, *head.input_shape[1:])).astype(np.float32))
    labels = tf.constant(np.eye(2, dtype=np.float32)[rng.integers(0, 2, 40)])
    resident = feature_cache.Resident(strategy, (features, labels), 0, GLOBAL_BATCH, num_workers=1)
    indices = resident.epoch_indices(seed=7, steps=3)
    loop = make_train_step(strategy, head, optimizer, GLOBAL_BATCH, loss_scaling=False, resident=resident)
    losses = [float(loop((indices, tf.constant(start)), False, tf.constant(n))[0]) for start, n in ((0, 2), (2, 1))]
    return [w.numpy() for w in head.trainable_weights], losses


def train_streamed_features(strategy, info, path):
    """The backbone's features of the train split extracted into `path` under `strategy`, then 2 steps of the head
    on them read back through the feature cache's input pipeline (the path taken when they do not fit in memory),
    starting at step 1 of the epoch as a resume would."""
    net, head, optimizer = _net_head_optimizer(strategy, info)
    feature_cache.extract(strategy, net, info, "train", path, 12)  # 120 = 10 x 12: [6, 6] per step on 2 replicas
    dataset_fn = feature_cache.dataset_fn(
        path, data.InputSpec(GLOBAL_BATCH, True, shuffle_buffer=64, seed=5, skip_steps=1)
    )
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    loop = make_train_step(strategy, head, optimizer, GLOBAL_BATCH, loss_scaling=False)
    losses = [float(loop(iterator, False, tf.constant(2))[0])]
    features = np.stack([f for f, _ in feature_cache.load(f"{path}/worker-0-of-1").as_numpy_iterator()])
    return [w.numpy() for w in head.trainable_weights], losses, features


def main():
    info = data.load(sys.argv[1])
    mirrored = distribute.make_strategy("mirrored")
    single = tf.distribute.get_strategy()
    weights_m, losses_m = train(mirrored, info)
    weights_s, losses_s = train(single, info)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights_m, weights_s))
    moved = max(float(np.max(np.abs(a))) for a in weights_s)
    resident_m, resident_losses_m = train_resident(mirrored, info)
    resident_s, resident_losses_s = train_resident(single, info)
    resident_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(resident_m, resident_s))
    work = tempfile.mkdtemp()
    streamed_m, streamed_losses_m, features_m = train_streamed_features(mirrored, info, f"{work}/mirrored")
    streamed_s, streamed_losses_s, features_s = train_streamed_features(single, info, f"{work}/single")
    shutil.rmtree(work)
    streamed_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(streamed_m, streamed_s))
    print(
        json.dumps(
            {
                "streamed_max_weight_diff": streamed_diff,
                "streamed_losses_mirrored": streamed_losses_m,
                "streamed_losses_single": streamed_losses_s,
                "features_max_diff": float(np.max(np.abs(features_m - features_s))),
                "features_rows": [len(features_m), len(features_s)],
            }
        )
    )
    print(
        json.dumps(
            {
                "replicas": mirrored.num_replicas_in_sync,
                "max_weight_diff": diff,
                "losses_mirrored": losses_m,
                "losses_single": losses_s,
                "max_abs_weight": moved,
                "resident_max_weight_diff": resident_diff,
                "resident_losses_mirrored": resident_losses_m,
                "resident_losses_single": resident_losses_s,
            }
        )
    )


if __name__ == "__main__":
    main()
