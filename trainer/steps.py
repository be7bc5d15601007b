"""The compiled pieces of the loop: the distributed train step and the inference helpers.

Keras 3 `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so the step is written with
`strategy.run` + `distribute_datasets_from_function` + `tf.nn.compute_average_loss(global_batch_size=...)`, which
works the same under the default, one-device, mirrored and multi-worker strategies.
"""
from __future__ import annotations

from typing import Callable, Tuple

import keras
import numpy as np
import tensorflow as tf


def make_train_step(strategy: tf.distribute.Strategy, net: keras.Model, optimizer, global_batch: int,
                    loss_scaling: bool) -> Callable:
    """train_step(iterator) -> (summed loss, number correct) over all replicas, for one global batch."""

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


def make_forward(net: keras.Model) -> Callable:
    """One traced inference function for `net`; keep it and reuse it (each call of this traces anew)."""
    return tf.function(lambda x: net(x, training=False), reduce_retracing=True)


def predict(forward: Callable, dataset: tf.data.Dataset, with_extras: bool = False):
    """Runs `forward` over a (non-distributed) dataset on this process; returns probs, labels (+ attributes, names)."""
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
    """Mean cross-entropy and accuracy of softmax outputs; NaN for an empty split."""
    if not len(labels):
        return float("nan"), float("nan")
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    return float(-np.mean(np.log(p))), float(np.mean(probs.argmax(-1) == labels))
