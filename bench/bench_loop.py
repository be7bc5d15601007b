"""Benchmark: the training loop's host overhead. --steps_per_loop=1 vs auto, side by side, against a bare loop.

Usage: python bench/bench_loop.py [--train=24000 --batch_size=64 --epochs=6 --stream_epochs=4]

  cached features, 32 px (where host overhead dominates, as it would on a GPU):
    (a) trainer.main --feature_cache=on --steps_per_loop=1     (b) the same with --steps_per_loop=auto
    (c) a bare loop: the same head on the same features in memory, 100 steps per tf.function call with tf.range,
        each batch gathered by index inside the loop (the tightest loop we know how to write)
  streaming images, 96 px: (d) --steps_per_loop=1 vs (e) auto, a few steps per epoch

The trainer's figures are its own per-epoch images/s (history.csv): the median of the epochs after the first.
Targets: (b)/(a) >= 2, (b)/(c) >= 0.8, (e)/(d) >= 0.95. float32 throughout (this CPU has no bf16); on a GPU machine
the same script prints the same JSON. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_training import history  # noqa: E402
from bench.common import PYTHON, run_timed, synthetic_records  # noqa: E402


def median(values) -> float:
    return statistics.median(list(values))  # epochs here last under a second: one hiccup would move a mean


def _trainer(records: str, model_dir: str, batch: int, epochs: int, *flags) -> float:
    run_timed(
        [
            PYTHON,
            "-m",
            "trainer.main",
            f"--data_dir={records}",
            f"--model_dir={model_dir}",
            "--weights=none",
            f"--batch_size={batch}",
            f"--epochs={epochs}",
            "--precision=float32",
            "--noexport",
            "--fresh",
            "--lr=1e-3",
            *flags,
        ]
    )
    return median(float(r["images_per_sec"]) for r in history(model_dir)[1:])


def _bare_loop(records: str, batch: int, epochs: int) -> float:
    """The trainer's head (same init, same Adam) on the trainer's own cached features, written as tight as we can:
    the features in memory, each epoch a permutation, 100 steps per tf.function call, each step's batch gathered by
    index inside the tf.range loop. No strategy, no checkpoints, no progress bar."""
    import keras
    import numpy as np
    import tensorflow as tf

    from trainer import cache_layout, data, feature_cache, model as model_lib
    from trainer.config import default_feature_cache_dir

    info = data.load(records, verify=False)
    keras.utils.set_random_seed(42)
    net = model_lib.build_model(info.image_size, "none", (256,), 0.5, "flatten", seed=42)
    key = cache_layout.cache_key(cache_layout.key_facts(info.manifest, "none", "flatten", "float32", 42))
    saved = feature_cache.load(os.path.join(default_feature_cache_dir(), key, "train", "worker-0-of-1"))
    features, labels = next(iter(saved.batch(int(saved.cardinality()))))
    head = model_lib.head_model(net)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(head.trainable_variables)

    @tf.function
    def loop(order, start, steps):
        total = tf.constant(0.0)
        for k in tf.range(steps):
            rows = order[start + k]
            x, y = tf.gather(features, rows), tf.gather(labels, rows)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(keras.losses.categorical_crossentropy(y, head(x, training=True)))
            grads = tape.gradient(loss, head.trainable_variables)
            optimizer.apply(grads, head.trainable_variables)
            total += loss
        return total

    steps_per_epoch = info.num_examples("train") // batch
    rng, rates = np.random.default_rng(1), []
    for _ in range(epochs):
        start, done = time.perf_counter(), 0
        order = tf.constant(
            rng.permutation(int(labels.shape[0]))[: steps_per_epoch * batch]
            .reshape(steps_per_epoch, batch)
            .astype(np.int32)
        )
        while done < steps_per_epoch:
            n = min(100, steps_per_epoch - done)
            float(loop(order, tf.constant(done), tf.constant(n)))
            done += n
        rates.append(steps_per_epoch * batch / (time.perf_counter() - start))
    return median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=24000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6, help="of the cached-feature runs (each under 2 s)")
    parser.add_argument("--stream_epochs", type=int, default=4)
    parser.add_argument("--stream_steps", type=int, default=12)
    parser.add_argument("--work_dir", default=None)
    args = parser.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_loop_")
    small = synthetic_records(work, f"celeba{args.train}", "records32", args.train, 32, num_shards=8)
    stream = synthetic_records(
        work, f"celeba{args.stream_steps * 32}", "records96", args.stream_steps * 32, 96, num_shards=8
    )
    figures = {
        "cached_loop1": _trainer(
            small, f"{work}/a", args.batch_size, args.epochs, "--feature_cache=on", "--steps_per_loop=1"
        ),
        "cached_auto": _trainer(
            small, f"{work}/b", args.batch_size, args.epochs, "--feature_cache=on", "--steps_per_loop=auto"
        ),
        "bare_loop": _bare_loop(small, args.batch_size, args.epochs),
        "stream96_loop1": _trainer(
            stream,
            f"{work}/d",
            32,
            args.stream_epochs,
            "--feature_cache=off",
            "--steps_per_loop=1",
            f"--steps_per_epoch={args.stream_steps}",
        ),
        "stream96_auto": _trainer(
            stream,
            f"{work}/e",
            32,
            args.stream_epochs,
            "--feature_cache=off",
            "--steps_per_loop=auto",
            f"--steps_per_epoch={args.stream_steps}",
        ),
    }
    ratios = {
        "auto_vs_loop1": figures["cached_auto"] / figures["cached_loop1"],
        "auto_vs_bare": figures["cached_auto"] / figures["bare_loop"],
        "loop1_vs_bare": figures["cached_loop1"] / figures["bare_loop"],
        "stream_auto_vs_loop1": figures["stream96_auto"] / figures["stream96_loop1"],
    }
    for name, value in figures.items():
        print(f"{name:>15}: {value:10.0f} images/s")
    print(
        f"cached 32 px: auto / steps_per_loop=1 = {ratios['auto_vs_loop1']:.2f}x (target >= 2); auto / bare loop = "
        f"{ratios['auto_vs_bare']:.2f} (target >= 0.8; steps_per_loop=1 reaches {ratios['loop1_vs_bare']:.2f})"
    )
    print(f"streaming 96 px: auto / steps_per_loop=1 = {ratios['stream_auto_vs_loop1']:.2f} (target >= 0.95)")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "training_loop",
                "train_images": args.train,
                "batch_size": args.batch_size,
                "images_per_sec": {k: round(v, 1) for k, v in figures.items()},
                **{k: round(v, 3) for k, v in ratios.items()},
                "targets": {"auto_vs_loop1": 2.0, "auto_vs_bare": 0.8, "stream_auto_vs_loop1": 0.95},
            }
        )
    )


if __name__ == "__main__":
    main()
