"""--source=tfds: CelebA through TensorFlow Datasets (`celeb_a`) instead of a folder.

TFDS's train/validation/test splits are CelebA's official partitions. Its examples carry no file name, so images
are named `<split>_<index>.jpg` by their position in TFDS's deterministic read order. The candidates that the
selection picks are staged as files in the job's work folder, and the same Beam graph runs on them.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from celeba_common import fileio
from celeba_common.errors import UserError
from dataset_format import schema
from preprocessing import celeba, splits

DATASET = "celeb_a"
STAGING = ".source"


DOWNLOAD_HOST = "drive.google.com"  # where TFDS's celeb_a builder downloads from


def _reachable(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    """Whether TFDS's download could start: host:port answers, through $HTTPS_PROXY when one is set."""
    return fileio.unanswered(host, port, timeout, fileio.https_proxy()) is None


def _load_builder(data_dir: Optional[str]):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(DATASET, data_dir=data_dir)
        if not builder.is_prepared() and not _reachable(DOWNLOAD_HOST):
            raise UserError(
                f"TFDS has no prepared {DATASET} in {builder.data_dir} and cannot download it: "
                f"{DOWNLOAD_HOST} is unreachable (offline?); use a CelebA folder with --celeba_dir, "
                f"or --tfds_data_dir pointing at a prepared copy"
            )
        builder.download_and_prepare()
    except UserError:
        raise
    except Exception as e:  # network, auth or disk failures come as many exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"TFDS could not prepare {DATASET} ({type(e).__name__}: {first[:200]}); it needs network "
            f"access to download CelebA, or a prepared copy in --tfds_data_dir"
        ) from None
    return builder


def _examples(builder, split: str):
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    return tfds.as_numpy(ds)


def _attributes(example) -> Tuple[int, ...]:
    attrs = example["attributes"]
    return tuple(1 if bool(attrs[name]) else -1 for name in schema.ATTRIBUTE_NAMES)


def prepare(config, sizes: Optional[Dict[str, int]], work_dir: str):
    """Rows, an ImageSource over staged candidates, source info for the manifest, and the candidate groups."""
    builder = _load_builder(config.tfds_data_dir)
    rows: List[celeba.Row] = []
    for split in schema.SPLITS:
        for index, example in enumerate(_examples(builder, split)):
            rows.append(celeba.Row(f"{split}_{index:06d}.jpg", split, _attributes(example)))
    groups = splits.select_candidates(rows, sizes, config.seed, config.balance)
    wanted = {row.name for group in groups for row in group.candidates}
    staging = fileio.join(work_dir, STAGING)
    for split in schema.SPLITS:
        for index, example in enumerate(_examples(builder, split)):
            name = f"{split}_{index:06d}.jpg"
            if name in wanted:
                fileio.write_bytes(fileio.join(staging, name), bytes(example["image"]))
    info = {
        "kind": "tfds",
        "dataset": f"{DATASET}:{builder.info.version}",
        "tfds_data_dir": config.tfds_data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"),
    }
    return rows, celeba.ImageSource(image_dir=staging), info, groups
