"""mixed_float16 on 2 logical CPUs: replica 1's batch overflows float16 (its features are 1e6, past float16's 65504),
replica 0's is normal. Runs one train step and prints, as JSON, whether every replica's weights stayed unchanged and
the loss scale before and after.

Usage: python tests/helpers/loss_scale_two_replicas.py
(A separate process: the CPU must be split into logical devices before TensorFlow starts.)
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from trainer.steps import make_train_step  # noqa: E402
from trainer.train import make_optimizer  # noqa: E402

PER_REPLICA = 4


def main():
    keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(1)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(4, activation="relu")(inputs)
        net = keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32")(keras.layers.Dense(2)(hidden)))
        optimizer = make_optimizer(1e-2, net, loss_scaling=True)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2 * PER_REPLICA, 8)).astype("float32")
    features[PER_REPLICA:] = 1e6  # replica 1's batch: float16 overflow -> inf activations -> non-finite gradients
    labels = np.eye(2, dtype="float32")[rng.integers(0, 2, 2 * PER_REPLICA)]

    def dataset_fn(context):  # batch 0 goes to replica 0, batch 1 to replica 1
        return tf.data.Dataset.from_tensor_slices((features, labels)).batch(PER_REPLICA)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    before = [[v.numpy().copy() for v in strategy.experimental_local_results(w.value)] for w in net.trainable_weights]
    scale_before = float(optimizer.dynamic_scale.numpy())
    make_train_step(strategy, net, optimizer, 2 * PER_REPLICA, loss_scaling=True)(iterator)
    after = [[v.numpy() for v in strategy.experimental_local_results(w.value)] for w in net.trainable_weights]
    unchanged = [all(np.array_equal(b, a) for b, a in zip(wb, wa)) for wb, wa in zip(before, after)]
    finite = all(np.isfinite(a).all() for wa in after for a in wa)
    print(
        json.dumps(
            {
                "replicas": strategy.num_replicas_in_sync,
                "weights_unchanged": all(unchanged),
                "weights_finite": finite,
                "scale_before": scale_before,
                "scale_after": float(optimizer.dynamic_scale.numpy()),
            }
        )
    )


if __name__ == "__main__":
    main()
