"""Runs the records job on Google Cloud Dataflow (Beam's DataflowRunner), or prints the command with --dry_run.

Usage:
  python -m launch.dataflow --project=P --region=us-central1 --temp_location=gs://B/tmp --max_num_workers=32 \
      [--machine_type=n2-standard-4] [--dry_run] -- --celeba_dir=gs://B/celeba --output_dir=gs://B/tfrecords/celeba \
      --split_sizes=all

The job ships this project to the workers with --setup_file (this project's setup.py); Dataflow workers read and
write gs:// paths only, so --celeba_dir and --output_dir must be gs:// (or --source=tfds with a gs:// output).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import List, Optional, Sequence

from absl import flags

from preprocessing.cli import UserError, passthrough_args, run_main

SETUP_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")

FLAGS = flags.FLAGS
flags.DEFINE_string("project", None, "Google Cloud project.")
flags.DEFINE_string("region", "us-central1", "Dataflow region.")
flags.DEFINE_string("temp_location", None, "gs:// folder for Dataflow's temporary files.")
flags.DEFINE_string("staging_location", None, "gs:// folder for staged code (default: under temp_location).")
flags.DEFINE_string("machine_type", None, "Worker machine type, e.g. n2-standard-4.")
flags.DEFINE_integer("max_num_workers", None, "Autoscaling limit.")
flags.DEFINE_string("job_name", None, "Dataflow job name.")
flags.DEFINE_bool("dry_run", False, "Print the command instead of running it.")


def _value(args: Sequence[str], name: str) -> Optional[str]:
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def build_command(records_args: Sequence[str], project: Optional[str], region: str, temp_location: Optional[str],
                  machine_type: Optional[str] = None, max_num_workers: Optional[int] = None,
                  job_name: Optional[str] = None, staging_location: Optional[str] = None) -> List[str]:
    """The build_records command line that runs on Dataflow."""
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
    if staging_location:
        command.append(f"--staging_location={staging_location}")
    if machine_type:
        command.append(f"--machine_type={machine_type}")
    if max_num_workers:
        command.append(f"--max_num_workers={max_num_workers}")
    if job_name:
        command.append(f"--job_name={job_name}")
    return command


def main(argv: Sequence[str]) -> int:
    args = passthrough_args(argv)
    command = build_command(args, FLAGS.project, FLAGS.region, FLAGS.temp_location, FLAGS.machine_type,
                            FLAGS.max_num_workers, FLAGS.job_name, FLAGS.staging_location)
    if FLAGS.dry_run:
        print(shlex.join(command))
        return 0
    try:
        import apache_beam.runners.dataflow  # noqa: F401  (imports prove the cloud extra is there)
        from apache_beam.io.gcp import gcsio  # noqa: F401
        import google.cloud.storage  # noqa: F401
    except ImportError:
        raise UserError("Beam's GCP support is not installed: pip install -e '.[cloud]'") from None
    return subprocess.call(command)


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
