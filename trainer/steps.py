"""The compiled pieces of the loop: the distributed train loop, distributed evaluation and inference.

Keras 3 `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so the step is written with
`strategy.run` + `distribute_datasets_from_function` + `tf.nn.compute_average_loss(global_batch_size=...)`, which
works the same under the default, one-device, mirrored and multi-worker strategies.

Everything here that reduces across replicas does it with collectives that every replica of every worker joins, so
every worker sees the same numbers and takes the same branch: the same stop decision, the same skipped step.
"""

from __future__ import annotations

from typing import Callable, Tuple

import keras
import numpy as np
import tensorflow as tf

SUM = tf.distribute.ReduceOp.SUM
EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1] before the log, here and in metrics.py


def _skip_step_everywhere_on_overflow(grads):
    """Non-finite gradients on any replica make every replica's gradients non-finite.

    Keras 3's LossScaleOptimizer decides "finite" from the first replica's gradients, assuming they were already
    all-reduced; in a custom step they are not yet (the inner optimizer sums them later). Poisoning all of them
    when any replica overflowed makes every replica skip the step and lower the loss scale identically.
    """
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
    context = tf.distribute.get_replica_context()
    overflowed = context.all_reduce(SUM, 1.0 - tf.cast(finite, tf.float32))
    poison = tf.where(overflowed > 0, tf.constant(float("inf")), tf.constant(0.0))
    return [g + tf.cast(poison, g.dtype) for g in grads]


def infer(net: keras.Model, inputs):
    """net(inputs, training=False), also on an empty batch.

    A partial last batch leaves a replica with no examples when the batches left are fewer than the replicas; some
    kernels refuse an empty batch (TensorFlow 2.21's oneDNN convolution: "input depth must be evenly divisible by
    filter depth"). One zero example stands in for the missing ones and its row is cut off again, so every replica
    runs the same graph and an empty batch yields zero rows.
    """
    count = tf.shape(inputs)[0]
    filler = tf.zeros(tf.concat([[tf.maximum(1 - count, 0)], tf.shape(inputs)[1:]], 0), inputs.dtype)
    return net(tf.concat([inputs, filler], 0), training=False)[:count]


def _replica_step(net: keras.Model, optimizer, global_batch: int, loss_scaling: bool, jit_compile: bool) -> Callable:
    """step_fn(inputs, labels, stop) -> [loss, correct, stop]: one replica's forward, backward and update."""

    def gradients(inputs, labels):
        with tf.GradientTape() as tape:
            probs = net(inputs, training=True)
            per_example = keras.losses.categorical_crossentropy(labels, probs)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss) if loss_scaling else loss
        grads = tape.gradient(scaled, net.trainable_variables)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, -1), tf.argmax(labels, -1)), tf.float32))
        return tf.cast(loss, tf.float32), correct, grads

    if jit_compile:
        gradients = tf.function(gradients, jit_compile=True)

    def step_fn(inputs, labels, stop):
        loss, correct, grads = gradients(inputs, labels)
        if loss_scaling:
            grads = _skip_step_everywhere_on_overflow(grads)
        optimizer.apply(grads, net.trainable_variables)
        return tf.stack([loss, correct, tf.cast(stop, tf.float32)])

    return step_fn


def make_train_step(
    strategy: tf.distribute.Strategy,
    net: keras.Model,
    optimizer,
    global_batch: int,
    loss_scaling: bool,
    jit_compile: bool = False,
    resident=None,
) -> Callable:
    """train_loop(source, stop=False, num_steps=1) -> [loss, correct, stop votes], summed over `num_steps` steps
    and over all replicas and workers.

    The steps run inside one traced call (a tf.range loop, as Orbit's `steps_per_loop`), with the sums kept on the
    device and read once per call; pass `num_steps` as a tensor so that every loop length shares one trace.
    `source` is a distributed iterator; with `resident` (a feature_cache.Resident: features held in memory) it is
    `(indices, start)` instead, the epoch's per-replica index matrices and the step to start at, and each step
    gathers its batch by index on the host that holds the features: no iterator call per step.
    `stop` is this worker's wish to stop (SIGTERM); the votes come back summed, so every worker learns of a stop
    asked anywhere at the same loop boundary. With `jit_compile`, each replica's forward and backward pass is
    compiled with XLA.
    """
    step_fn = _replica_step(net, optimizer, global_batch, loss_scaling, jit_compile)

    def run_steps(num_steps, one_step):
        totals = tf.zeros([3], tf.float32)
        for step in tf.range(num_steps):
            totals += strategy.reduce(SUM, one_step(step), axis=None)
        return totals

    if resident is None:

        @tf.function
        def train_loop(iterator, stop=False, num_steps=1):
            return run_steps(num_steps, lambda _: strategy.run(step_fn, args=(*next(iterator), stop)))

        return train_loop

    def gathered_step(indices, position, stop):
        with tf.device(resident.features.device):
            rows = tf.gather(indices, position)
            inputs, labels = tf.gather(resident.features, rows), tf.gather(resident.labels, rows)
        return step_fn(inputs, labels, stop)

    @tf.function
    def resident_loop(source, stop=False, num_steps=1):
        indices, start = source
        return run_steps(num_steps, lambda step: strategy.run(gathered_step, args=(indices, start + step, stop)))

    return resident_loop


def make_evaluate(strategy: tf.distribute.Strategy, net: keras.Model) -> Callable:
    """evaluate(distributed dataset) -> [loss sum, correct, count] over every example, on every replica and worker.

    Sums and counts, not means of batch means: a partial last batch (or an empty one, on a replica whose data ran
    out first) counts exactly for what it holds.
    """

    def replica_fn(inputs, labels):
        probs = tf.cast(infer(net, inputs), tf.float32)
        p_true = tf.clip_by_value(tf.reduce_sum(labels * probs, axis=-1), EPSILON, 1.0)
        correct = tf.cast(tf.equal(tf.argmax(probs, -1), tf.argmax(labels, -1)), tf.float32)
        return tf.stack(
            [-tf.reduce_sum(tf.math.log(p_true)), tf.reduce_sum(correct), tf.cast(tf.shape(labels)[0], tf.float32)]
        )

    @tf.function
    def evaluate(dist_dataset):
        totals = tf.zeros([3], tf.float32)
        for inputs, labels in dist_dataset:
            totals += strategy.reduce(SUM, strategy.run(replica_fn, args=(inputs, labels)), axis=None)
        return totals

    return evaluate


def evaluate_distributed(
    strategy: tf.distribute.Strategy, evaluate: Callable, dataset_fn: Callable, expected: int
) -> Tuple[float, float]:
    """(mean loss, accuracy) of a split through `evaluate`; RuntimeError unless exactly `expected` were counted."""
    loss_sum, correct, count = (float(v) for v in evaluate(strategy.distribute_datasets_from_function(dataset_fn)))
    if int(round(count)) != expected:
        raise RuntimeError(f"evaluated {int(round(count))} examples, the manifest says {expected}")
    return (loss_sum / count, correct / count) if count else (float("nan"), float("nan"))


def gather_predictions(strategy: tf.distribute.Strategy, net: keras.Model, dataset_fn: Callable):
    """probs [N, 2], labels [N], attributes [N, 40] of a split (extras dataset), gathered from every replica and
    worker onto each worker (order: by replica, not by file)."""

    def replica_fn(inputs, labels, extras):
        return tf.cast(infer(net, inputs), tf.float32), tf.argmax(labels, -1), extras["attributes"]

    @tf.function(reduce_retracing=True)
    def gather_step(inputs, labels, extras):
        results = strategy.run(replica_fn, args=(inputs, labels, extras))
        return [strategy.gather(r, axis=0) for r in results]

    probs, labels, attributes = [], [], []
    for inputs, labels_batch, extras in strategy.distribute_datasets_from_function(dataset_fn):
        gathered = [t.numpy() for t in gather_step(inputs, labels_batch, extras)]
        probs.append(gathered[0])
        labels.append(gathered[1])
        attributes.append(gathered[2])
    if not probs:
        return np.zeros((0, 2), np.float32), np.zeros((0,), np.int64), np.zeros((0, 40), np.int64)
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(attributes)
