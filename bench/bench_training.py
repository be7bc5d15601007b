"""Benchmark: training throughput by precision, and the frozen-feature cache, with trainer.main side by side.

Usage: python bench/bench_training.py [--image_size=96 --steps=12 --batch_size=32]

Three runs of trainer.main on the same records, 3 epochs each with the backbone frozen:
  (a) --precision=float32 --feature_cache=off   (b) --precision=mixed_bfloat16 --feature_cache=off
  (c) --precision=mixed_bfloat16 --feature_cache=on
Figures come from each run's history.csv (images_per_sec, epoch_seconds) of the epochs after the first (the first
one traces the step, and with the cache it extracts the features). Targets: (b)/(a) images/s >= 1.5, and an epoch
of (c) after the first >= 10x faster than an epoch of (b). The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import PYTHON, run_timed, synthetic_records  # noqa: E402


def history(model_dir):
    with open(os.path.join(model_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work_dir", default=None)
    args = parser.parse_args()
    if args.epochs < 2:  # the figures are of the epochs after the first, which traces
        parser.error(f"--epochs={args.epochs}: at least 2")
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_training_")
    train = args.steps * args.batch_size
    records = synthetic_records(work, "celeba", f"records{args.image_size}", train, args.image_size)
    common = [
        f"--data_dir={records}",
        "--weights=none",
        f"--batch_size={args.batch_size}",
        "--fresh",
        f"--epochs={args.epochs}",
        f"--steps_per_epoch={args.steps}",
        "--noexport",
        "--lr=1e-3",
    ]
    runs = {
        "float32": ["--precision=float32", "--feature_cache=off"],
        "mixed_bfloat16": ["--precision=mixed_bfloat16", "--feature_cache=off"],
        "feature_cache": ["--precision=mixed_bfloat16", "--feature_cache=on"],
    }
    figures = {}
    for name, flags in runs.items():
        model_dir = os.path.join(work, f"run_{name}")
        seconds, _, _ = run_timed([PYTHON, "-m", "trainer.main", *common, f"--model_dir={model_dir}", *flags])
        rows = history(model_dir)
        later = rows[1:]
        figures[name] = {
            "images_per_sec": mean(float(r["images_per_sec"]) for r in later),
            "epoch_seconds": mean(float(r["epoch_seconds"]) for r in later),
            "first_epoch_seconds": float(rows[0]["epoch_seconds"]),
            "run_seconds": seconds,
        }
        row = figures[name]
        print(
            f"{name:>15}: {row['images_per_sec']:8.1f} images/s, epoch {row['epoch_seconds']:.2f} s "
            f"(first epoch {row['first_epoch_seconds']:.1f} s; whole run {seconds:.0f} s)"
        )
    bf16_speedup = figures["mixed_bfloat16"]["images_per_sec"] / figures["float32"]["images_per_sec"]
    cache_speedup = figures["mixed_bfloat16"]["epoch_seconds"] / figures["feature_cache"]["epoch_seconds"]
    print(f"mixed_bfloat16 / float32 images/s: {bf16_speedup:.2f}x (target >= 1.5x)")
    print(f"streaming epoch / feature-cache epoch: {cache_speedup:.1f}x (target >= 10x)")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "training",
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "steps_per_epoch": args.steps,
                "runs": figures,
                "bf16_vs_float32": round(bf16_speedup, 3),
                "target_bf16_vs_float32": 1.5,
                "feature_cache_epoch_speedup": round(cache_speedup, 2),
                "target_feature_cache_speedup": 10,
            }
        )
    )


if __name__ == "__main__":
    main()
