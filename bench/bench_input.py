"""Benchmark: the trainer's tf.data pipeline vs a raw parallel decode_jpeg ceiling and Keras' directory loader.

Usage: python bench/bench_input.py [--num_images=12000 --image_size=224 --batch_size=64]

All three run side by side in one process over the same images: (1) the training pipeline of trainer/data.py
(no model), (2) the ceiling: TFRecordDataset -> parse -> decode_jpeg with AUTOTUNE parallelism over the same
shards, (3) keras.utils.image_dataset_from_directory over the source JPEGs (crop to square, resize). Targets:
(1) >= 90 % of (2), and >= 2x (3). The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import PYTHON, run_timed  # noqa: E402


def images_per_sec(dataset, warmup_batches: int = 5) -> float:
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    count, start = 0, time.perf_counter()
    for batch in iterator:
        images = batch[0] if isinstance(batch, tuple) else batch
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def _prepare_records(args, work: str):
    """A synthetic download and its records (80 % train), reused when the work folder has them."""
    celeba = os.path.join(work, f"celeba{args.num_images}")
    if not os.path.exists(os.path.join(celeba, "list_attr_celeba.txt")):
        run_timed(
            [
                PYTHON,
                "-m",
                "preprocessing.synthetic_celeba",
                f"--output_dir={celeba}",
                f"--num_images={args.num_images}",
            ]
        )
    train = int(args.num_images * 0.8)
    records = os.path.join(work, f"records{args.image_size}")
    if not os.path.exists(os.path.join(records, "_SUCCESS")):
        shutil.rmtree(records, ignore_errors=True)
        run_timed(
            [
                PYTHON,
                "-m",
                "preprocessing.build_records",
                f"--celeba_dir={celeba}",
                f"--output_dir={records}",
                f"--split_sizes={train},10,10",
                f"--image_size={args.image_size}",
                "--num_shards=8",
            ]
        )
    return celeba, records, train


def _keras_folder(work: str, records: str, celeba: str) -> str:
    """The train split's source images as class folders (symlinks), for keras.utils.image_dataset_from_directory."""
    from dataset_format import schema

    by_class = os.path.join(work, "by_class")
    if not os.path.isdir(by_class):
        with open(os.path.join(records, "splits", "train.txt")) as f:
            names = f.read().split()
        labels = {}
        with open(os.path.join(celeba, "list_attr_celeba.txt")) as f:
            lines = f.read().splitlines()[2:]
        male = schema.ATTRIBUTE_NAMES.index("Male")
        for line in lines:
            parts = line.split()
            labels[parts[0]] = "male" if parts[1 + male] == "1" else "female"
        for cls in ("male", "female"):
            os.makedirs(os.path.join(by_class, cls))
        for name in names:
            os.symlink(
                os.path.join(os.path.abspath(celeba), "img_align_celeba", name),
                os.path.join(by_class, labels[name], name),
            )
    return by_class


def main() -> None:
    """Long because it prints every figure it measures, side by side, then the JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_images", type=int, default=12000)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--work_dir", default=None)
    args = parser.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_input_")
    celeba, records, train = _prepare_records(args, work)

    import keras
    import tensorflow as tf

    from dataset_format import schema
    from trainer import data

    info = data.load(records)
    files = info.files("train")
    steps = train // args.batch_size

    spec = data.InputSpec(args.batch_size, training=True, seed=1)
    ours = data.records_dataset_fn(data.RecordsInput(files, info.image_size), spec)().take(steps)

    def raw(record):
        return tf.io.decode_jpeg(
            tf.io.parse_single_example(record, {schema.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})[
                schema.IMAGE_KEY
            ],
            channels=3,
        )

    ceiling = (
        tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
        .map(raw, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(args.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )

    by_class = _keras_folder(work, records, celeba)
    keras_ds = keras.utils.image_dataset_from_directory(
        by_class,
        image_size=(args.image_size, args.image_size),
        batch_size=args.batch_size,
        crop_to_aspect_ratio=True,
        shuffle=True,
        seed=1,
        verbose=False,
    ).prefetch(tf.data.AUTOTUNE)

    # interleaved repeats, best of each, so that background noise hits all three alike
    results = {"pipeline": [], "ceiling": [], "keras_directory": []}
    for _ in range(3):
        results["ceiling"].append(images_per_sec(ceiling))
        results["pipeline"].append(images_per_sec(ours))
        results["keras_directory"].append(images_per_sec(keras_ds))
    best = {k: max(v) for k, v in results.items()}
    # --cache: the first epoch decodes and keeps the pixels, later epochs read memory
    cached = data.records_dataset_fn(data.RecordsInput(files, info.image_size, cache=True), spec)()
    cached = cached.take(steps)
    images_per_sec(cached, warmup_batches=0)
    best["pipeline_cached"] = max(images_per_sec(cached) for _ in range(2))
    vs_ceiling = best["pipeline"] / best["ceiling"]
    vs_keras = best["pipeline"] / best["keras_directory"]
    print(f"images: {train} at {args.image_size} px, batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"training input pipeline (trainer/data.py): {best['pipeline']:.0f} images/s")
    print(f"raw parallel decode_jpeg ceiling:           {best['ceiling']:.0f} images/s")
    print(f"keras image_dataset_from_directory:         {best['keras_directory']:.0f} images/s")
    print(f"training input pipeline with --cache (epochs after the first): {best['pipeline_cached']:.0f} images/s")
    print(f"pipeline / ceiling: {vs_ceiling:.2f} (target >= 0.90); pipeline / keras: {vs_keras:.2f}x (target >= 2x)")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "input_pipeline",
                "images": train,
                "image_size": args.image_size,
                "pipeline_images_per_sec": round(best["pipeline"], 1),
                "ceiling_images_per_sec": round(best["ceiling"], 1),
                "keras_directory_images_per_sec": round(best["keras_directory"], 1),
                "pipeline_cached_images_per_sec": round(best["pipeline_cached"], 1),
                "pipeline_vs_ceiling": round(vs_ceiling, 3),
                "target_vs_ceiling": 0.9,
                "pipeline_vs_keras": round(vs_keras, 3),
                "target_vs_keras": 2.0,
            }
        )
    )


if __name__ == "__main__":
    main()
