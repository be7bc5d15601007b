"""The records job's settings, declared once: each field is also a flag of preprocessing.build_records."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from celeba_common.errors import UserError
from celeba_common.flagdefs import check_choices, option
from dataset_format.transform import IMAGE_SIZES, RESIZE_MODES, Transform
from preprocessing.splits import DEFAULT_SPLIT_SIZES

DEFAULT_OUTPUT_DIR = os.path.join("tfrecords", "celeba")
SOURCES = ("folder", "tfds")


@dataclasses.dataclass
class Config:
    """Everything the job needs besides Beam's own options."""

    celeba_dir: str = option(
        help="CelebA download (txt, zip or Kaggle layout); default $CELEBA_DIR or data/celeba.",
        flag_default=os.environ.get("CELEBA_DIR", os.path.join("data", "celeba")),
    )
    output_dir: str = option(help="Where the dataset goes (local or gs://).", flag_default=DEFAULT_OUTPUT_DIR)
    split_sizes: str = option(DEFAULT_SPLIT_SIZES, "TRAIN,VAL,TEST image counts, or 'all'.")
    seed: int = option(20150401, "Seed of the ranking that picks the images.")
    balance: bool = option(False, "Equal numbers of male and female images per split.")
    image_size: int = option(
        Transform.image_size,
        "Side of the square output images.",
        lower_bound=IMAGE_SIZES[0],
        upper_bound=IMAGE_SIZES[1],
    )
    resize_mode: str = option(
        Transform.resize_mode, "crop: central square; pad: letterbox; stretch.", choices=RESIZE_MODES
    )
    jpeg_quality: int = option(
        Transform.jpeg_quality, "JPEG quality of the stored images.", lower_bound=1, upper_bound=100
    )
    num_shards: int = option(0, "Shards per split; 0 picks ~100-200 MB shards.", lower_bound=0)
    name: str = option("celeba", "Dataset name, the prefix of shard files.")
    overwrite: bool = option(False, "Replace an existing output folder completely.")
    source: str = option("folder", "folder: --celeba_dir; tfds: TensorFlow Datasets celeb_a.", choices=SOURCES)
    tfds_data_dir: Optional[str] = option(None, "TFDS data_dir for --source=tfds.")

    @property
    def transform(self) -> Transform:
        """The image transform these settings describe, as one value (validate() first)."""
        return Transform(self.image_size, self.resize_mode, self.jpeg_quality)

    def validate(self) -> None:
        """UserError naming the first bad setting."""
        check_choices(self)
        if not self.name or any(c in self.name for c in "/\\ -"):
            raise UserError(f"--name={self.name!r}: expected a non-empty name without '/', '-' or spaces")
