"""The records job writing to gs://, against a real GCS emulator (gcp-storage-emulator, in memory, on 127.0.0.1).

The job runs as a user runs it (a `python -m preprocessing.build_records` process, which never imports TensorFlow,
so its gs:// paths go through Beam's GCS client, which honours STORAGE_EMULATOR_HOST). TensorFlow's own gs://
filesystem cannot be pointed at an emulator; the trainer's remote paths are tested on ram:// instead.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, assert_one_line_error, build, free_port, wait_for_port

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not

BUCKET = "records-test"


@pytest.fixture(scope="module")
def gcs():
    """(emulator URL, a storage client on it)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = free_port()
    emulator = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    proc = subprocess.Popen(
        [emulator, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_port(port, proc, "the GCS emulator")
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    client.create_bucket(BUCKET)
    try:
        yield url, client
    finally:
        proc.kill()
        proc.wait()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


def _objects(client, prefix):
    return {b.name: b.md5_hash for b in client.list_blobs(BUCKET, prefix=prefix)}


def _build(url, celeba_dir, output, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocessing.build_records",
            f"--celeba_dir={celeba_dir}",
            f"--output_dir=gs://{BUCKET}/{output}",
            "--split_sizes=120,20,20",
            "--image_size=32",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "STORAGE_EMULATOR_HOST": url},
    )


def test_a_dataset_on_gcs_is_complete_refused_then_replaced_whole(gcs, celeba_txt, tmp_path):
    url, client = gcs
    proc = _build(url, celeba_txt, "data/celeba", "--num_shards=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = _objects(client, "data/")
    shards = sorted(n for n in first if ".tfrecord-" in n)
    assert len(shards) == 6 and all(n.endswith("-of-00002") for n in shards)
    assert {"data/celeba/manifest.json", "data/celeba/_SUCCESS", "data/celeba/errors.jsonl"} <= set(first)
    assert not [n for n in first if ".partial-" in n]
    manifest = json.loads(client.bucket(BUCKET).blob("data/celeba/manifest.json").download_as_bytes())
    local = build(celeba_txt, str(tmp_path / "local"), num_shards=2)  # the same flags on local disk
    assert manifest["splits"] == local["splits"]  # byte-identical shards (sizes, counts, sha256)
    # The TFDS metadata went to gs:// too. TFDS reads gs:// through TensorFlow's filesystem, which cannot be pointed
    # at an emulator, so the dataset is fetched from it and opened with TFDS from a local copy.
    fetched = tmp_path / "fetched" / "celeba"
    fetched.mkdir(parents=True)
    for name in first:
        client.bucket(BUCKET).blob(name).download_to_filename(str(fetched / name.rsplit("/", 1)[-1]))
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(fetched))
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 120, "validation": 20, "test": 20}
    assert sum(1 for _ in builder.as_dataset(split="train")) == 120

    again = _build(url, celeba_txt, "data/celeba", "--num_shards=2")  # no --overwrite: refused, nothing changed
    assert_one_line_error(again, "gs://records-test/data/celeba", "--overwrite")
    assert _objects(client, "data/") == first

    replaced = _build(url, celeba_txt, "data/celeba", "--num_shards=1", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    now = _objects(client, "data/")
    shards = sorted(n for n in now if ".tfrecord-" in n)
    assert len(shards) == 3 and all(n.endswith("-of-00001") for n in shards)  # no stale shard of the old build
    assert not [n for n in now if ".partial-" in n]


def test_a_failed_job_on_gcs_leaves_no_object(gcs, celeba_copy):
    from preprocessing import celeba

    url, client = gcs
    rows = celeba.read_rows(celeba.find_layout(celeba_copy))
    for name in [r.name for r in rows if r.partition == "validation"][:10]:
        open(os.path.join(celeba_copy, "img_align_celeba", name), "wb").write(b"garbage")
    proc = _build(url, celeba_copy, "short/celeba")
    assert_one_line_error(proc, "split validation is 1 images short")
    assert _objects(client, "short") == {}


def test_a_killed_jobs_work_folder_on_gcs_is_removed_by_the_next_run(gcs, celeba_txt):
    url, client = gcs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs: the owner of the abandoned work folder
    started = {"host": socket.gethostname(), "pid": dead.pid}
    bucket = client.bucket(BUCKET)
    bucket.blob("left/celeba.partial-0badc0de/.meta/started").upload_from_string(json.dumps(started))
    bucket.blob("left/celeba.partial-0badc0de/.chunks/chunk-000000").upload_from_string(b"x" * 100)
    other_host = {"host": "another-host", "pid": 1}
    bucket.blob("left/celeba.partial-0therh0s/.meta/started").upload_from_string(json.dumps(other_host))
    proc = _build(url, celeba_txt, "left/celeba")
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = _objects(client, "left/")
    assert not [n for n in names if "0badc0de" in n]
    assert [n for n in names if "0therh0s" in n]  # another host's run is not ours to judge
