"""The records job on a real Dask cluster (a scheduler and two worker processes on 127.0.0.1), through Beam's Dask
runner: the same shards, byte for byte, as the local runner's."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, SMALL_RECORDS, build, free_port, wait_for_port

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not


@pytest.fixture(scope="module")
def dask_cluster():
    port = free_port()
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    address = f"tcp://127.0.0.1:{port}"
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host=127.0.0.1", f"--port={port}", "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    wait_for_port(port, procs[0], "the Dask scheduler")
    procs += [
        subprocess.Popen(
            [dask, "worker", address, "--nworkers=1", "--nthreads=1", "--no-dashboard"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
    try:
        yield address
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_records_job_on_a_dask_cluster_matches_the_local_runner(dask_cluster, celeba_copy, records_dir, tmp_path):
    """With an image the split picks missing: its dead letter must survive too (Beam's Dask runner computes only
    the last leaf of a graph; the job's results therefore end in one sink)."""
    missing = open(os.path.join(records_dir, "splits", "train.txt")).read().split()[0]
    os.remove(os.path.join(celeba_copy, "img_align_celeba", missing))
    celeba_txt = celeba_copy
    out = str(tmp_path / "dask")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocessing.build_records",
            f"--celeba_dir={celeba_txt}",
            f"--output_dir={out}",
            *SMALL_RECORDS,
            "--runner=DaskRunner",
            f"--dask_client_address={dask_cluster}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from dataset_format import manifest as manifest_lib

    on_dask = manifest_lib.load_verified(out)
    local = build(celeba_txt, str(tmp_path / "local"), num_shards=2)
    assert on_dask["splits"] == local["splits"]  # sizes, counts and sha256 of every shard
    for info in local["splits"].values():
        for shard in info["shards"]:
            assert (
                open(os.path.join(out, shard["file"]), "rb").read()
                == open(os.path.join(tmp_path / "local", shard["file"]), "rb").read()
            )
    errors = open(os.path.join(out, "errors.jsonl")).read()
    assert missing in errors and errors == open(tmp_path / "local" / "errors.jsonl").read()
