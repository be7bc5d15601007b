"""CelebA -> sharded, fixed-split TFRecords (an Apache Beam job).

Usage:
  python -m preprocessing.build_records --split_sizes=24000,3000,3000
  python -m preprocessing.build_records --celeba_dir=gs://b/celeba --output_dir=gs://b/tfrecords/celeba \
      --runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp --setup_file=./setup.py

Flags this job does not define (preprocessing.config.Config) are handed to Beam's PipelineOptions.
"""

from __future__ import annotations

from typing import Sequence

from celeba_common.cli import run_main
from celeba_common.flagdefs import define_flags, from_flags
from preprocessing.config import Config


def main(argv: Sequence[str]) -> int:
    from dataset_format.manifest import summary
    from preprocessing import splits
    from preprocessing.pipeline import check_beam_args, run

    beam_args = list(argv[1:])
    check_beam_args(beam_args)
    config = from_flags(Config)
    splits.parse_split_sizes(config.split_sizes)  # fail fast, before any file is read
    manifest = run(config, beam_args)
    print(summary(manifest, config.output_dir))
    return 0


def cli() -> None:
    run_main(main, define_flags=lambda: define_flags(Config), known_only=True)


if __name__ == "__main__":
    cli()
