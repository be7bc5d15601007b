"""What Dataflow's workers are shipped: launch.dataflow's records-only package, installed alone into a clean venv
(no TensorFlow, TFDS, TensorBoard or matplotlib), runs the records job and writes the full install's shards byte for
byte. (A real Dataflow worker has Beam in its SDK container; the clean venv gets it, and everything else, from the
registry at the versions of constraints.txt, as `make install` does.)"""

import hashlib
import os
import re
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT, SMALL_RECORDS, assert_one_line_error, run_cli

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not

TRAINING_ONLY = ("tensorflow", "tensorflow-datasets", "tensorboard", "matplotlib", "keras")


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_the_workers_install_runs_the_records_job_without_tensorflow(celeba_txt, records_dir, tmp_path):
    proc = run_cli(
        "-m",
        "launch.dataflow",
        "--project=p",
        "--temp_location=gs://b/tmp",
        "--dry_run",
        f"--worker_package_dir={tmp_path / 'dist'}",
        "--",
        "--celeba_dir=gs://b/c",
        "--output_dir=gs://b/o",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = re.findall(r"--extra_package=(\S+)", proc.stdout)
    assert "--setup_file" not in proc.stdout and os.path.dirname(wheel) == str(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        top = {n.split("/")[0] for n in z.namelist() if not n.split("/")[0].endswith(".dist-info")}
    required = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert top == {"celeba_common", "dataset_format", "preprocessing"}
    assert not [r for r in required if re.split(r"[\[<>=; ]", r)[0].lower() in TRAINING_ONLY], required

    venv = str(tmp_path / "worker")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    install = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            f"--constraint={os.path.join(ROOT, 'constraints.txt')}",
            wheel,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    installed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    assert not [line for line in installed.splitlines() if line.split("==")[0].lower() in TRAINING_ONLY], installed

    out = str(tmp_path / "records")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    job = subprocess.run(
        [
            python,
            "-m",
            "preprocessing.build_records",
            f"--celeba_dir={celeba_txt}",
            f"--output_dir={out}",
            *SMALL_RECORDS,
            "--direct_running_mode=in_memory",
            "--direct_num_workers=1",
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    shards = sorted(n for n in os.listdir(records_dir) if ".tfrecord-" in n)
    assert len(shards) == 6 and sorted(n for n in os.listdir(out) if ".tfrecord-" in n) == shards
    for name in shards:
        assert _sha256(os.path.join(out, name)) == _sha256(os.path.join(records_dir, name)), name


def test_launch_dataflow_names_the_flags_it_has():
    base = ["-m", "launch.dataflow", "--project=p", "--temp_location=gs://b/tmp", "--dry_run"]
    records = ["--celeba_dir=gs://b/c", "--output_dir=gs://b/o"]
    line = assert_one_line_error(run_cli(*base, "--", *records, "--setup_file=./setup.py"), "--setup_file")
    assert "before the --" not in line  # launch.dataflow has no --setup_file to pass there
    assert_one_line_error(run_cli(*base, "--", *records, "--region=x"), "--region", "before the --")
    assert_one_line_error(
        run_cli(*base, "--staging_location=/tmp/staging", "--", *records), "--staging_location=/tmp/staging", "gs://"
    )
