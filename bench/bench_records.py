"""Benchmark: build_records end to end vs a one-process Pillow loop doing the same per-image work.

Usage: python bench/bench_records.py [--num_images=40000 --split_sizes=24000,3000,3000 --image_size=224]

Both run side by side on the same synthetic CelebA download; the loop reads, decodes, converts to RGB, crops the
central square, resizes and encodes JPEG q95 for as many images as the job keeps. Prints the figures; the last
line is a JSON object with the ratio (target >= 1.5) and the job's peak RSS (target < 2 GiB).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import PYTHON, run_timed  # noqa: E402


def pillow_loop(image_dir: str, names, image_size: int) -> float:
    from PIL import Image

    start = time.perf_counter()
    for name in names:
        with open(os.path.join(image_dir, name), "rb") as f:
            image = Image.open(io.BytesIO(f.read())).convert("RGB")
        w, h = image.size
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        image = image.crop(box).resize((image_size, image_size), Image.Resampling.BILINEAR)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=95)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_images", type=int, default=40000)
    parser.add_argument("--split_sizes", default="24000,3000,3000")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--work_dir", default=None, help="reuses the synthetic download found there")
    parser.add_argument("--keep", action="store_true")
    args, job_args = parser.parse_known_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_records_")
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
    out = os.path.join(work, "records")
    shutil.rmtree(out, ignore_errors=True)
    seconds, peak, output = run_timed(
        [
            PYTHON,
            "-m",
            "preprocessing.build_records",
            f"--celeba_dir={celeba}",
            f"--output_dir={out}",
            f"--split_sizes={args.split_sizes}",
            f"--image_size={args.image_size}",
            *job_args,
        ]
    )
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    names = []
    for split in manifest["splits"]:
        with open(os.path.join(out, "splits", f"{split}.txt")) as f:
            names += f.read().split()
    loop_seconds = pillow_loop(os.path.join(celeba, "img_align_celeba"), names, args.image_size)
    job_rate, loop_rate = len(names) / seconds, len(names) / loop_seconds
    print(output.strip().splitlines()[-1])
    print(f"images: {len(names)} at {args.image_size} px")
    print(f"build_records end to end: {seconds:.1f} s, {job_rate:.0f} images/s, peak RSS {peak / 2**30:.2f} GiB")
    print(f"one-process Pillow loop:  {loop_seconds:.1f} s, {loop_rate:.0f} images/s")
    print(f"ratio: {job_rate / loop_rate:.2f}x (target >= 1.5x)")
    if not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "records",
                "images": len(names),
                "image_size": args.image_size,
                "job_seconds": round(seconds, 2),
                "job_images_per_sec": round(job_rate, 1),
                "loop_images_per_sec": round(loop_rate, 1),
                "ratio": round(job_rate / loop_rate, 3),
                "target_ratio": 1.5,
                "peak_rss_gib": round(peak / 2**30, 3),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
