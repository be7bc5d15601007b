"""Benchmark: the records job on a local Dask cluster (a scheduler + N single-threaded worker processes, Beam's Dask
runner) against the local default (Beam's FnApiRunner, one worker process per core), side by side, same flags.

Usage: python bench/bench_dask.py [--num_images=6000 --image_size=224 --workers=2]

Prints both throughputs and their ratio (on one machine the cluster cannot beat the local default: the point is
what the cluster's scheduling costs; its gain comes from more machines). The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import PYTHON, ROOT, run_timed  # noqa: E402


def _cluster(workers: int):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dask = os.path.join(os.path.dirname(PYTHON), "dask")
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host=127.0.0.1", f"--port={port}", "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    procs += [
        subprocess.Popen(
            [dask, "worker", f"tcp://127.0.0.1:{port}", "--nworkers=1", "--nthreads=1", "--no-dashboard"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    from distributed import Client

    time.sleep(2)
    with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
        client.wait_for_workers(workers, timeout=60)
    return f"tcp://127.0.0.1:{port}", procs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_images", type=int, default=6000)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench_dask_")
    celeba = os.path.join(work, "celeba")
    run_timed(
        [PYTHON, "-m", "preprocessing.synthetic_celeba", f"--output_dir={celeba}", f"--num_images={args.num_images}"]
    )
    # within the synthetic download's official partitions (80 / 10 / 10 %, minus the spare candidates)
    sizes = f"{int(args.num_images * 0.7)},{int(args.num_images * 0.07)},{int(args.num_images * 0.07)}"
    total = sum(int(x) for x in sizes.split(","))
    common = [
        PYTHON,
        "-m",
        "preprocessing.build_records",
        f"--celeba_dir={celeba}",
        f"--split_sizes={sizes}",
        f"--image_size={args.image_size}",
        "--num_shards=4",
    ]
    local_seconds, _, _ = run_timed([*common, f"--output_dir={work}/local"])
    address, procs = _cluster(args.workers)
    try:
        dask_seconds, _, _ = run_timed(
            [*common, f"--output_dir={work}/dask", "--runner=DaskRunner", f"--dask_client_address={address}"]
        )
    finally:
        for proc in procs:
            proc.kill()
    same = (
        open(f"{work}/local/manifest.json").read().split('"splits"')[1].split('"source"')[0]
        == open(f"{work}/dask/manifest.json").read().split('"splits"')[1].split('"source"')[0]
    )
    local_rate, dask_rate = total / local_seconds, total / dask_seconds
    print(f"local default (FnApiRunner, {os.cpu_count()} processes): {local_rate:.0f} images/s ({local_seconds:.1f} s)")
    print(f"Dask cluster ({args.workers} workers):                 {dask_rate:.0f} images/s ({dask_seconds:.1f} s)")
    print(f"dask / local: {dask_rate / local_rate:.2f}; shards identical: {same}")
    shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "records_on_dask",
                "images": total,
                "image_size": args.image_size,
                "workers": args.workers,
                "local_images_per_sec": round(local_rate, 1),
                "dask_images_per_sec": round(dask_rate, 1),
                "dask_vs_local": round(dask_rate / local_rate, 3),
                "identical_shards": same,
            }
        )
    )


if __name__ == "__main__":
    main()
