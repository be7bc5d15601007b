"""Helpers shared by the benchmarks: timing a command with the peak memory of its whole process tree."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Tuple

import psutil

PYTHON = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The trainers a benchmark starts share a feature cache of its own (removed at exit), not the user's ~/.cache.
if "CELEBA_FEATURE_CACHE" not in os.environ:
    os.environ["CELEBA_FEATURE_CACHE"] = tempfile.mkdtemp(prefix="bench_feature_cache_")
    atexit.register(shutil.rmtree, os.environ["CELEBA_FEATURE_CACHE"], True)


def run_timed(cmd: List[str]) -> Tuple[float, int, str]:
    """Runs cmd; returns (seconds, peak RSS in bytes summed over the process and its children, output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample():
        parent = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = parent.memory_info().rss + sum(c.memory_info().rss for c in parent.children(recursive=True))
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    output, _ = proc.communicate()
    seconds = time.perf_counter() - start
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return seconds, peak[0], output


def synthetic_records(
    work: str,
    celeba_name: str,
    records_name: str,
    train: int,
    image_size: int,
    extra: int = 400,
    num_shards: int = 4,
    holdout: int = 64,
) -> str:
    """A synthetic download (train / 0.8 + extra images) and its records (train,holdout,holdout) under work, each
    made only when the work folder lacks it; returns the records folder."""
    celeba = os.path.join(work, celeba_name)
    if not os.path.exists(os.path.join(celeba, "list_attr_celeba.txt")):
        run_timed(
            [
                PYTHON,
                "-m",
                "preprocessing.synthetic_celeba",
                f"--output_dir={celeba}",
                f"--num_images={int(train / 0.8) + extra}",
            ]
        )
    records = os.path.join(work, records_name)
    if not os.path.exists(os.path.join(records, "_SUCCESS")):
        shutil.rmtree(records, ignore_errors=True)
        run_timed(
            [
                PYTHON,
                "-m",
                "preprocessing.build_records",
                f"--celeba_dir={celeba}",
                f"--output_dir={records}",
                f"--split_sizes={train},{holdout},{holdout}",
                f"--image_size={image_size}",
                f"--num_shards={num_shards}",
            ]
        )
    return records
