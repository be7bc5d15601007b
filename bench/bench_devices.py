"""Benchmark: trainer.main on 2 devices of one machine (MirroredStrategy) beside the same run on 1, in one run.

Usage: python bench/bench_devices.py [--image_size=64 --train=768 --batch_size=32 --epochs=3 --devices=2]

Without GPUs the devices are logical CPUs (--num_cpu_devices): they share the same cores, so the ratio measures
what MirroredStrategy costs (splitting each global batch, the all-reduce of the gradients, evaluation gathered from
every replica), not a speed-up. Two pairs of runs on the same records:
  streaming   --feature_cache=off: every epoch runs VGG16 forward and the head's backward on every replica;
  extraction  --feature_cache=on: the first epoch's backbone pass over the train split (its own progress line).
Images/s are the trainer's own figures: history.csv's training-step rate of the epochs after the first (the first
traces), and the extraction's `N images in S s (R images/s after the first batch, which traces)` line.
Target: N devices / 1 device >= 0.8 for both.
The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_training import history, mean  # noqa: E402
from bench.common import PYTHON, run_timed, synthetic_records  # noqa: E402

EXTRACTED = re.compile(r"feature cache: train split: (\d+) images in .* \((\d+) images/s after the first batch")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--train", type=int, default=768)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--work_dir", default=None)
    args = parser.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_devices_")
    records = synthetic_records(work, "celeba", f"records{args.image_size}", args.train, args.image_size)
    common = [
        f"--data_dir={records}",
        "--weights=none",
        f"--batch_size={args.batch_size}",
        "--fresh",
        "--noexport",
        "--lr=1e-3",
        "--precision=float32",
    ]
    figures = {}
    for devices in (1, args.devices):
        model_dir = os.path.join(work, f"streaming_{devices}")
        seconds, _, _ = run_timed(
            [
                PYTHON,
                "-m",
                "trainer.main",
                *common,
                f"--model_dir={model_dir}",
                f"--num_cpu_devices={devices}",
                f"--epochs={args.epochs}",
                "--feature_cache=off",
            ]
        )
        streaming = mean(float(r["images_per_sec"]) for r in history(model_dir)[1:])
        _, _, output = run_timed(
            [
                PYTHON,
                "-m",
                "trainer.main",
                *common,
                f"--model_dir={model_dir}-cached",
                f"--num_cpu_devices={devices}",
                "--epochs=1",
                "--feature_cache=on",
                f"--feature_cache_dir={model_dir}-features",
            ]
        )
        found = EXTRACTED.search(output)
        if not found:
            raise SystemExit(f"no extraction line in the {devices}-device run:\n{output[-2000:]}")
        figures[devices] = {
            "streaming_images_per_sec": round(streaming, 1),
            "extraction_images_per_sec": float(found.group(2)),
            "streaming_run_seconds": round(seconds, 1),
        }
        print(
            f"{devices} device{'s' if devices > 1 else ''}: streaming {streaming:7.1f} images/s (epochs after the "
            f"first), feature extraction {found.group(2)} images/s ({found.group(1)} images); "
            f"streaming run {seconds:.0f} s",
            flush=True,
        )
    one, many = figures[1], figures[args.devices]
    ratios = {key: round(many[key] / one[key], 3) for key in ("streaming_images_per_sec", "extraction_images_per_sec")}
    print(
        f"{args.devices} devices / 1 device: streaming {ratios['streaming_images_per_sec']:.2f}, extraction "
        f"{ratios['extraction_images_per_sec']:.2f} (target >= 0.8; logical CPUs share the same cores)"
    )
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "devices",
                "devices": args.devices,
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "train": args.train,
                "runs": figures,
                "ratio_streaming": ratios["streaming_images_per_sec"],
                "ratio_extraction": ratios["extraction_images_per_sec"],
                "target_ratio": 0.8,
            }
        )
    )


if __name__ == "__main__":
    main()
