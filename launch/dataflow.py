"""Runs the records job on Google Cloud Dataflow (Beam's DataflowRunner), or prints the command with --dry_run.

Usage:
  python -m launch.dataflow --project=P --region=us-central1 --temp_location=gs://B/tmp --max_num_workers=32 \
      [--machine_type=n2-standard-4] [--dry_run] -- --celeba_dir=gs://B/celeba --output_dir=gs://B/tfrecords/celeba \
      --split_sizes=all

The workers get the records job alone: a wheel of celeba_common, dataset_format and preprocessing, built here at
submit time and staged with Beam's --extra_package, that requires requirements/records.txt only (Pillow, OpenCV,
google-crc32c, absl; Beam is the workers' own). No TensorFlow, TFDS, TensorBoard or matplotlib: 0.19 GB to install
on each worker (measured: OpenCV 173 MB, Pillow 21 MB) instead of about 2.4 GB. Dataflow workers read and write
gs:// paths only, so --celeba_dir, --output_dir and --staging_location must be gs:// (or --source=tfds with a gs://
output).
"""

from __future__ import annotations

import configparser
import dataclasses
import glob
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence

from celeba_common.cli import passthrough_args, run_main
from celeba_common.errors import UserError
from celeba_common.flagdefs import define_flags, from_flags, option

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_DISTRIBUTION = "celeba-records-worker"
WORKER_PACKAGES = ("celeba_common", "dataset_format", "preprocessing")
WORKER_REQUIREMENTS = os.path.join("requirements", "records.txt")
# Flags that launch.dataflow sets itself: given after the --, they are refused with the flag to use instead.
OWN_BEAM_FLAGS = {
    "runner": None,
    "setup_file": None,
    "extra_package": None,
    "project": "--project",
    "region": "--region",
    "temp_location": "--temp_location",
    "staging_location": "--staging_location",
}


@dataclasses.dataclass
class DataflowJob:
    project: Optional[str] = option(None, "Google Cloud project.")
    region: str = option("us-central1", "Dataflow region.")
    temp_location: Optional[str] = option(None, "gs:// folder for Dataflow's temporary files.")
    staging_location: Optional[str] = option(None, "gs:// folder for staged code (default: under temp_location).")
    machine_type: Optional[str] = option(None, "Worker machine type, e.g. n2-standard-4.")
    max_num_workers: Optional[int] = option(None, "Autoscaling limit.")
    job_name: Optional[str] = option(None, "Dataflow job name.")
    worker_package_dir: str = option("", "Where to build the workers' package (default: a temporary folder).")
    dry_run: bool = option(False, "Print the command instead of running it (the workers' package is built).")


def _value(args: Sequence[str], name: str) -> Optional[str]:
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def build_worker_package(out_dir: str) -> str:
    """The wheel that Dataflow's workers install: WORKER_PACKAGES, requiring WORKER_REQUIREMENTS alone (no
    TensorFlow). Built with pip from a copy of just those packages; returns its path."""
    staging = tempfile.mkdtemp(prefix="celeba-worker-")
    try:
        for package in WORKER_PACKAGES:
            shutil.copytree(
                os.path.join(ROOT, package),
                os.path.join(staging, package),
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        os.makedirs(os.path.join(staging, "requirements"))
        shutil.copy(os.path.join(ROOT, WORKER_REQUIREMENTS), os.path.join(staging, WORKER_REQUIREMENTS))
        project = configparser.ConfigParser()
        project.read(os.path.join(ROOT, "setup.cfg"))
        with open(os.path.join(staging, "setup.cfg"), "w") as f:
            f.write(
                f"[metadata]\nname = {WORKER_DISTRIBUTION}\nversion = {project['metadata']['version']}\n"
                f"description = The CelebA records job (Apache Beam) for Dataflow workers: no TensorFlow\n"
                f"[options]\npackages = find:\npython_requires = >=3.10\n"
                f"install_requires = file: {WORKER_REQUIREMENTS}\n"
            )
        with open(os.path.join(staging, "setup.py"), "w") as f:
            f.write("from setuptools import setup\n\nsetup()\n")
        isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
        os.makedirs(out_dir, exist_ok=True)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                *isolation,
                f"--wheel-dir={out_dir}",
                staging,
            ],
            capture_output=True,
            text=True,
            cwd=staging,
        )
        if proc.returncode:
            raise UserError(f"building the workers' package failed: {' '.join(proc.stderr.split())[-300:]}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    name = WORKER_DISTRIBUTION.replace("-", "_")
    return sorted(glob.glob(os.path.join(out_dir, f"{name}-*.whl")), key=os.path.getmtime)[-1]


def build_command(records_args: Sequence[str], job: DataflowJob, worker_package: str) -> List[str]:
    """The build_records command line that runs on Dataflow, its workers installing `worker_package`."""
    project, region, temp_location = job.project, job.region, job.temp_location
    max_num_workers = job.max_num_workers
    if not project:
        raise UserError("--project is required")
    if not temp_location or not temp_location.startswith("gs://"):
        raise UserError(f"--temp_location={temp_location}: a gs:// folder is required")
    if job.staging_location and not job.staging_location.startswith("gs://"):
        raise UserError(
            f"--staging_location={job.staging_location}: a gs:// folder is required (Dataflow's "
            f"workers read the staged code from it)"
        )
    if max_num_workers is not None and max_num_workers < 1:
        raise UserError(f"--max_num_workers={max_num_workers}: must be >= 1")
    output_dir = _value(records_args, "output_dir")
    if not output_dir or not output_dir.startswith("gs://"):
        raise UserError(
            f"--output_dir={output_dir}: Dataflow workers write only to gs:// paths; pass "
            f"--output_dir=gs://... after --"
        )
    if _value(records_args, "source") != "tfds":
        celeba_dir = _value(records_args, "celeba_dir")
        if not celeba_dir or not celeba_dir.startswith("gs://"):
            raise UserError(
                f"--celeba_dir={celeba_dir}: Dataflow workers read only gs:// paths; copy CelebA to a "
                f"bucket (gsutil -m cp -r) and pass --celeba_dir=gs://... after --"
            )
    for beam_flag, own_flag in OWN_BEAM_FLAGS.items():
        if _value(records_args, beam_flag) is not None:
            instead = (
                f"pass {own_flag} before the --"
                if own_flag
                else "launch.dataflow sets it (the workers install its records-only package)"
            )
            raise UserError(f"--{beam_flag} after the --: {instead}")
    command = [
        sys.executable,
        "-m",
        "preprocessing.build_records",
        *records_args,
        "--runner=DataflowRunner",
        f"--project={project}",
        f"--region={region}",
        f"--temp_location={temp_location}",
        f"--extra_package={worker_package}",
    ]
    for name in ("staging_location", "machine_type", "max_num_workers", "job_name"):
        if getattr(job, name):
            command.append(f"--{name}={getattr(job, name)}")
    return command


def main(argv: Sequence[str]) -> int:
    job = from_flags(DataflowJob)
    build_command(passthrough_args(argv), job, "")  # the checks, before anything is built
    package_dir = job.worker_package_dir or tempfile.mkdtemp(prefix="celeba-worker-package-")
    command = build_command(passthrough_args(argv), job, build_worker_package(package_dir))
    if job.dry_run:
        print(shlex.join(command))
        return 0
    try:
        import apache_beam.runners.dataflow  # noqa: F401  (imports prove the cloud extra is there)
        import google.cloud.storage  # noqa: F401
        from apache_beam.io.gcp import gcsio  # noqa: F401
    except ImportError:
        raise UserError("Beam's GCP support is not installed: pip install -e '.[cloud]'") from None
    return subprocess.call(command)


def cli() -> None:
    run_main(main, define_flags=lambda: define_flags(DataflowJob))


if __name__ == "__main__":
    cli()
