"""CelebA -> sharded, fixed-split TFRecords (an Apache Beam job).

Usage:
  python -m preprocessing.build_records --split_sizes=24000,3000,3000
  python -m preprocessing.build_records --celeba_dir=gs://b/celeba --output_dir=gs://b/tfrecords/celeba \
      --runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp --setup_file=./setup.py

Flags this job does not define are handed to Beam's PipelineOptions.
"""
from __future__ import annotations

import os
from typing import Sequence

from absl import flags

from preprocessing import splits
from preprocessing.manifest import summary
from preprocessing.cli import run_main
from preprocessing.pipeline import Config, check_beam_args, run
from preprocessing.transform import RESIZE_MODES

DEFAULT_OUTPUT_DIR = os.path.join("tfrecords", "celeba")

FLAGS = flags.FLAGS
flags.DEFINE_string("celeba_dir", os.environ.get("CELEBA_DIR", os.path.join("data", "celeba")),
                    "CelebA download (txt, zip or Kaggle layout); default $CELEBA_DIR or data/celeba.")
flags.DEFINE_enum("source", "folder", ["folder", "tfds"], "folder: --celeba_dir; tfds: TensorFlow Datasets celeb_a.")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir for --source=tfds.")
flags.DEFINE_string("output_dir", DEFAULT_OUTPUT_DIR, "Where the dataset goes (local or gs://).")
flags.DEFINE_string("split_sizes", splits.DEFAULT_SPLIT_SIZES, "TRAIN,VAL,TEST image counts, or 'all'.")
flags.DEFINE_integer("seed", Config.seed, "Seed of the ranking that picks the images.")
flags.DEFINE_bool("balance", False, "Equal numbers of male and female images per split.")
flags.DEFINE_integer("image_size", 224, "Side of the square output images.", lower_bound=16, upper_bound=4096)
flags.DEFINE_enum("resize_mode", "crop", list(RESIZE_MODES), "crop: central square; pad: letterbox; stretch.")
flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of the stored images.", lower_bound=1, upper_bound=100)
flags.DEFINE_integer("num_shards", 0, "Shards per split; 0 picks ~100-200 MB shards.", lower_bound=0)
flags.DEFINE_string("name", "celeba", "Dataset name, the prefix of shard files.")
flags.DEFINE_bool("overwrite", False, "Replace an existing output folder completely.")


def main(argv: Sequence[str]) -> int:
    beam_args = list(argv[1:])
    check_beam_args(beam_args)
    config = Config(
        celeba_dir=FLAGS.celeba_dir, output_dir=FLAGS.output_dir, split_sizes=FLAGS.split_sizes, seed=FLAGS.seed,
        balance=FLAGS.balance, image_size=FLAGS.image_size, resize_mode=FLAGS.resize_mode,
        jpeg_quality=FLAGS.jpeg_quality, num_shards=FLAGS.num_shards, name=FLAGS.name,
        overwrite=FLAGS.overwrite, source=FLAGS.source, tfds_data_dir=FLAGS.tfds_data_dir)
    splits.parse_split_sizes(config.split_sizes)  # fail fast, before any file is read
    manifest = run(config, beam_args)
    print(summary(manifest, config.output_dir))
    return 0


def cli() -> None:
    run_main(main, known_only=True)


if __name__ == "__main__":
    cli()
