"""Benchmark: a 2-worker local cluster (MultiWorkerMirroredStrategy) training the frozen phase, streaming images vs
each worker training on the cached features of its own shard, side by side on the same records.

Usage: python bench/bench_multiworker.py [--image_size=64 --train=960 --batch_size=32 --epochs=3]

Both runs go through `launch.local_cluster --num_workers=2`. Images/s are the trainer's own per-epoch figures
(history.csv) of the epochs after the first (the first traces the step and, with the cache, extracts the
features). Target: cached >= 5x streaming. Each log must hold no error-level line (an `E` absl line, a
StartAbort, a traceback). The last line is a JSON object.
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

ERROR_LINE = re.compile(r"^\[worker \d\] (E\d{4} |ERROR|Traceback)|StartAbort")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--train", type=int, default=960)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work_dir", default=None)
    args = parser.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_multiworker_")
    records = synthetic_records(work, "celeba", f"records{args.image_size}", args.train, args.image_size)
    figures, errors = {}, {}
    for name in ("streaming", "feature_cache"):
        model_dir = os.path.join(work, f"run_{name}")
        seconds, _, output = run_timed(
            [
                PYTHON,
                "-m",
                "launch.local_cluster",
                "--num_workers=2",
                "--",
                f"--data_dir={records}",
                f"--model_dir={model_dir}",
                "--weights=none",
                f"--batch_size={args.batch_size}",
                "--fresh",
                f"--epochs={args.epochs}",
                "--noexport",
                "--lr=1e-3",
                "--precision=mixed_bfloat16",
                f"--feature_cache={'on' if name == 'feature_cache' else 'off'}",
            ]
        )
        rows = history(model_dir)
        figures[name] = {
            "images_per_sec": mean(float(r["images_per_sec"]) for r in rows[1:]),
            "first_epoch_seconds": float(rows[0]["epoch_seconds"]),
            "run_seconds": round(seconds, 1),
        }
        errors[name] = [line for line in output.splitlines() if ERROR_LINE.search(line)]
        print(
            f"{name:>14}: {figures[name]['images_per_sec']:8.1f} images/s after the first epoch "
            f"(first epoch {figures[name]['first_epoch_seconds']:.1f} s; whole run {seconds:.0f} s); "
            f"error lines: {len(errors[name])}"
        )
    speedup = figures["feature_cache"]["images_per_sec"] / figures["streaming"]["images_per_sec"]
    print(f"2 workers, cached / streaming images/s: {speedup:.1f}x (target >= 5x)")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "multiworker_feature_cache",
                "workers": 2,
                "image_size": args.image_size,
                "train_images": args.train,
                "batch_size": args.batch_size,
                "runs": figures,
                "cached_vs_streaming": round(speedup, 2),
                "target_cached_vs_streaming": 5.0,
                "error_lines": {k: len(v) for k, v in errors.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
