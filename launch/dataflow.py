"""Runs the records job on Google Cloud Dataflow (Beam's DataflowRunner), or prints the command with --dry_run.

Usage:
  python -m launch.dataflow --project=P --region=us-central1 --temp_location=gs://B/tmp --max_num_workers=32 \
      [--machine_type=n2-standard-4] [--dry_run] -- --celeba_dir=gs://B/celeba --output_dir=gs://B/tfrecords/celeba \
      --split_sizes=all

The job ships this project to the workers with --setup_file (this project's setup.py); Dataflow workers read and
write gs:// paths only, so --celeba_dir and --output_dir must be gs:// (or --source=tfds with a gs:// output).
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from typing import List, Optional, Sequence

from celeba_common.cli import UserError, passthrough_args, run_main
from celeba_common.flagdefs import define_flags, from_flags, option

SETUP_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


@dataclasses.dataclass
class DataflowJob:
    project: Optional[str] = option(None, "Google Cloud project.")
    region: str = option("us-central1", "Dataflow region.")
    temp_location: Optional[str] = option(None, "gs:// folder for Dataflow's temporary files.")
    staging_location: Optional[str] = option(None, "gs:// folder for staged code (default: under temp_location).")
    machine_type: Optional[str] = option(None, "Worker machine type, e.g. n2-standard-4.")
    max_num_workers: Optional[int] = option(None, "Autoscaling limit.")
    job_name: Optional[str] = option(None, "Dataflow job name.")
    dry_run: bool = option(False, "Print the command instead of running it.")


def _value(args: Sequence[str], name: str) -> Optional[str]:
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def build_command(records_args: Sequence[str], job: DataflowJob) -> List[str]:
    """The build_records command line that runs on Dataflow."""
    project, region, temp_location = job.project, job.region, job.temp_location
    max_num_workers = job.max_num_workers
    if not project:
        raise UserError("--project is required")
    if not temp_location or not temp_location.startswith("gs://"):
        raise UserError(f"--temp_location={temp_location}: a gs:// folder is required")
    if max_num_workers is not None and max_num_workers < 1:
        raise UserError(f"--max_num_workers={max_num_workers}: must be >= 1")
    output_dir = _value(records_args, "output_dir")
    if not output_dir or not output_dir.startswith("gs://"):
        raise UserError(f"--output_dir={output_dir}: Dataflow workers write only to gs:// paths; pass "
                        f"--output_dir=gs://... after --")
    if _value(records_args, "source") != "tfds":
        celeba_dir = _value(records_args, "celeba_dir")
        if not celeba_dir or not celeba_dir.startswith("gs://"):
            raise UserError(f"--celeba_dir={celeba_dir}: Dataflow workers read only gs:// paths; copy CelebA to a "
                            f"bucket (gsutil -m cp -r) and pass --celeba_dir=gs://... after --")
    for beam_flag in ("runner", "setup_file", "project", "region", "temp_location"):
        if _value(records_args, beam_flag) is not None:
            raise UserError(f"--{beam_flag} is set by launch.dataflow; pass it before the --, not after")
    command = [sys.executable, "-m", "preprocessing.build_records", *records_args, "--runner=DataflowRunner",
               f"--project={project}", f"--region={region}", f"--temp_location={temp_location}",
               f"--setup_file={SETUP_FILE}"]
    for name in ("staging_location", "machine_type", "max_num_workers", "job_name"):
        if getattr(job, name):
            command.append(f"--{name}={getattr(job, name)}")
    return command


def main(argv: Sequence[str]) -> int:
    job = from_flags(DataflowJob)
    command = build_command(passthrough_args(argv), job)
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
