"""Prints a dataset's manifest summary, verifies every shard against it, and draws a contact sheet.

Usage:
  python -m preprocessing.inspect_records --data_dir=tfrecords/celeba [--split=train --samples=32 --sheet=PATH]

Exits non-zero, naming each bad shard, when a shard's record count, size or sha256 differs from the manifest.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Optional, Sequence, Tuple

from celeba_common import fileio
from celeba_common.cli import import_tensorflow_quietly, run_main
from celeba_common.errors import UserError
from celeba_common.flagdefs import define_flags, from_flags, option
from dataset_format import manifest as manifest_lib, schema, tfrecord


@dataclasses.dataclass
class InspectConfig:
    data_dir: str = option(os.path.join("tfrecords", "celeba"), "Dataset folder written by build_records.")
    samples: int = option(32, "Images on the contact sheet.", lower_bound=0)
    sheet: Optional[str] = option(None, "Contact sheet PNG path; default DATA_DIR/contact_sheet.png.")
    split: str = option("train", "The split the contact sheet shows.", choices=schema.SPLITS)


def decode_record(record: bytes) -> Tuple[bytes, int, str]:
    """(jpeg bytes, label, file name) of one serialized Example, through TensorFlow's parser."""
    import tensorflow as tf

    parsed = schema.parse_example(tf.constant(record))
    return (
        parsed[schema.IMAGE_KEY].numpy(),
        int(parsed[schema.LABEL_KEY].numpy()),
        parsed[schema.FILENAME_KEY].numpy().decode(),
    )


def contact_sheet(samples: Sequence[Tuple[bytes, int, str]], path: str, title: str, columns: int = 8) -> None:
    """A grid of the images under `title`, each captioned with its label (colored by class) and file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = max(1, (len(samples) + columns - 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.0, rows * 2.5 + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (jpeg, label, name) in zip(axes.flat, samples):
        ax.imshow(Image.open(io.BytesIO(jpeg)))
        ax.set_title(f"{schema.CLASS_NAMES[label]}\n{name}", fontsize=11, color=("tab:red", "tab:blue")[label])
    fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    with fileio.open_write(path) as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise UserError(f"unexpected argument {argv[1]}")
    config = from_flags(InspectConfig)
    data_dir = config.data_dir
    manifest = manifest_lib.read_manifest(data_dir)
    print(manifest_lib.summary(manifest, data_dir))
    problems = manifest_lib.verify_shards(data_dir, manifest, check_records=True)
    for split in [s for s in schema.SPLITS if s in manifest["splits"]]:
        for shard in manifest["splits"][split]["shards"]:
            status = problems.get(shard["file"], "ok")
            print(f"  {shard['file']}: {shard['num_records']} records, {shard['bytes']} bytes: {status}")
    if problems:
        bad = ", ".join(problems)
        raise UserError(f"{len(problems)} bad shard(s) in {data_dir}: {bad}")
    if config.samples:
        if config.split not in manifest["splits"]:
            raise UserError(f"--split={config.split}: {data_dir} has no such split ({', '.join(manifest['splits'])})")
        info = manifest["splits"][config.split]
        first = info["shards"][0]["file"]
        records = tfrecord.read_records(fileio.join(data_dir, first), config.samples)
        import_tensorflow_quietly()  # decode_record decodes as the trainer does
        sheet = config.sheet or fileio.join(data_dir, "contact_sheet.png")
        transform = manifest_lib.transform_of(manifest)
        title = (
            f"{data_dir}: {config.split} split, the first {len(records)} of {info['num_examples']} images "
            f"({transform.image_size}x{transform.image_size}, {transform.resize_mode}); label and file name "
            f"under each"
        )
        contact_sheet([decode_record(r) for r in records], sheet, title)
        print(f"contact sheet of {len(records)} {config.split} images: {sheet}")
    print(f"all {sum(len(i['shards']) for i in manifest['splits'].values())} shards match the manifest")
    return 0


def cli() -> None:
    run_main(main, define_flags=lambda: define_flags(InspectConfig))


if __name__ == "__main__":
    cli()
