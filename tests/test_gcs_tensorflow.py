"""trainer.main on gs:// through TensorFlow's own GCS filesystem, the only gs:// client of a trainer process.

The route (tests/helpers/gcs_for_tensorflow.py): libcurl inside TensorFlow goes through a loopback CONNECT proxy
that terminates TLS for *.googleapis.com with a certificate of a throw-away CA made here with openssl, and forwards
to gcp-storage-emulator. Records, the run folder and the shared feature cache are all on gs://: one epoch, a resume
to two, the export; and the trainer process never loads Beam's or google-cloud-storage's client.
"""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, free_port

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not

BUCKET = "tf-test"
RUN_TRAINER = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: sys.stderr.write('gs:// clients loaded: %s\\n' % sorted(\n"
    "    m for m in ('apache_beam', 'google.cloud.storage') if m in sys.modules)))\n"
    "sys.argv = ['trainer.main', *sys.argv[1:]]\n"
    "runpy.run_module('trainer.main', run_name='__main__', alter_sys=True)\n"
)


def _make_certificates(folder):
    """A throw-away CA and a *.googleapis.com server certificate signed by it: (ca.pem, server.pem, server.key)."""

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=celeba-tfrecords test CA",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=googleapis.com",
    )
    with open(os.path.join(folder, "ext.cnf"), "w") as f:
        f.write(
            "subjectAltName=DNS:*.googleapis.com,DNS:googleapis.com\nbasicConstraints=CA:FALSE\n"
            "extendedKeyUsage=serverAuth\n"
        )
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    )
    return [os.path.join(folder, name) for name in ("ca.pem", "server.pem", "server.key")]


@pytest.fixture(scope="module")
def gcs_for_tensorflow(tmp_path_factory):
    """(environment for a TensorFlow process, a google-cloud-storage bucket on the same emulator)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    ca, cert, key = _make_certificates(str(tmp_path_factory.mktemp("tls")))
    emulator_port, proxy_port = free_port(), free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "tests", "helpers", "gcs_for_tensorflow.py"),
            str(emulator_port),
            str(proxy_port),
            cert,
            key,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{emulator_port}"
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        bucket = client.create_bucket(BUCKET)
        if previous is None:
            del os.environ["STORAGE_EMULATOR_HOST"]
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_EMULATOR_HOST", "PYTHONPATH")}
        env.update(
            HTTPS_PROXY=f"http://127.0.0.1:{proxy_port}",
            https_proxy=f"http://127.0.0.1:{proxy_port}",
            CURL_CA_BUNDLE=ca,
            GOOGLE_AUTH_TOKEN_FOR_TESTING="test-token",
            NO_GCE_CHECK="true",
            TF_CPP_MIN_LOG_LEVEL="2",
            NO_PROXY="",
            no_proxy="",
        )
        yield env, bucket
    finally:
        server.kill()
        server.wait()


def _train(env, *flags):
    return subprocess.run(
        [sys.executable, "-c", RUN_TRAINER, *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_trainer_trains_resumes_and_exports_on_gcs_through_tensorflow(gcs_for_tensorflow, records_dir):
    env, bucket = gcs_for_tensorflow
    for name in os.listdir(records_dir):
        if os.path.isfile(os.path.join(records_dir, name)):
            bucket.blob(f"records/{name}").upload_from_filename(os.path.join(records_dir, name))
    flags = [
        f"--data_dir=gs://{BUCKET}/records",
        f"--model_dir=gs://{BUCKET}/runs/r1",
        f"--feature_cache_dir=gs://{BUCKET}/features",
        "--weights=none",
        "--batch_size=8",
        "--head_units=8",
    ]
    first = _train(env, *flags, "--epochs=1", "--noexport")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert "gs:// clients loaded: []" in first.stderr, first.stderr[-2000:]
    second = _train(env, *flags, "--epochs=2")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "Resumed after epoch 1" in second.stdout and "epoch 2/2" in second.stdout
    assert "feature cache: reusing" in second.stdout + second.stderr  # read back from gs://
    assert "gs:// clients loaded: []" in second.stderr
    names = {blob.name for blob in bucket.list_blobs()}
    for expected in (
        "runs/r1/metrics.json",
        "runs/r1/model.keras",
        "runs/r1/export/saved_model.pb",
        "runs/r1/history.csv",
        "runs/r1/run.json",
        "runs/r1/checkpoints/checkpoint",
    ):
        assert expected in names, sorted(names)
    assert any(n.startswith("features/") and n.endswith("/train/worker-0-of-1/_DONE") for n in names), sorted(names)
