"""Benchmark: the seed's grid at the cost of one epoch. A sweep with the shared feature cache vs one fresh cell.

Usage: python bench/bench_sweep.py [--train=4800 --image_size=64 --epochs=3]

Side by side in one run, each with an empty feature cache of its own:
  (a) one fresh cell: trainer.main, which extracts the features and trains the head
  (b) a 2 x 2 sweep (launch.sweep), which extracts once and runs 4 cells on the shared features
  (c) the seed's 4 x 3 grid (batch sizes 8,16,32,64 x lr 1e-2,1e-3,1e-4), the same way
Targets: (b) <= 2x (a), (c) <= 4x (a). Without the shared cache each cell extracts again: ~4x and ~12x.
The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import PYTHON, run_timed, synthetic_records  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=4800)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work_dir", default=None)
    args = parser.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_sweep_")
    records = synthetic_records(
        work,
        f"celeba{args.train}",
        f"records{args.image_size}",
        args.train,
        args.image_size,
        extra=args.train // 2,
        holdout=args.train // 8,
    )
    common = [f"--data_dir={records}", "--weights=none", "--precision=float32", "--noexport"]

    def cache(name):
        path = os.path.join(work, f"cache_{name}")
        shutil.rmtree(path, ignore_errors=True)
        return f"--feature_cache_dir={path}"

    single, _, _ = run_timed(
        [
            PYTHON,
            "-m",
            "trainer.main",
            *common,
            cache("single"),
            "--batch_size=32",
            "--lr=1e-3",
            f"--epochs={args.epochs}",
            f"--model_dir={work}/single",
            "--fresh",
        ]
    )
    grids = {"sweep_2x2": ("32,64", "1e-3,1e-4"), "sweep_4x3": ("8,16,32,64", "1e-2,1e-3,1e-4")}
    seconds = {"single_cell": single}
    for name, (batch_sizes, lrs) in grids.items():
        shutil.rmtree(os.path.join(work, name), ignore_errors=True)
        seconds[name], _, output = run_timed(
            [
                PYTHON,
                "-m",
                "launch.sweep",
                f"--batch_sizes={batch_sizes}",
                f"--lrs={lrs}",
                f"--epochs={args.epochs}",
                f"--output_dir={work}/{name}",
                "--",
                *common,
                cache(name),
            ]
        )
        assert "the backbone runs once" in output, output[-2000:]
    ratios = {name: seconds[name] / single for name in grids}
    for name, value in seconds.items():
        print(f"{name:>12}: {value:7.1f} s")
    print(
        f"2 x 2 sweep / one fresh cell = {ratios['sweep_2x2']:.2f}x (target <= 2); "
        f"4 x 3 grid / one fresh cell = {ratios['sweep_4x3']:.2f}x (target <= 4)"
    )
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "sweep_feature_cache",
                "train_images": args.train,
                "image_size": args.image_size,
                "epochs": args.epochs,
                "seconds": {k: round(v, 1) for k, v in seconds.items()},
                **{f"{k}_vs_single": round(v, 3) for k, v in ratios.items()},
                "targets": {"sweep_2x2_vs_single": 2.0, "sweep_4x3_vs_single": 4.0},
            }
        )
    )


if __name__ == "__main__":
    main()
