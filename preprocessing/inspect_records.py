"""Prints a dataset's manifest summary, verifies every shard against it, and draws a contact sheet.

Usage:
  python -m preprocessing.inspect_records --data_dir=tfrecords/celeba [--samples=32 --sheet=PATH]

Exits non-zero, naming each bad shard, when a shard's record count, size or sha256 differs from the manifest.
"""
from __future__ import annotations

import io
import os
from typing import Sequence, Tuple

from absl import flags

from celeba_common import fileio
from celeba_common.cli import UserError, run_main
from preprocessing import manifest as manifest_lib, schema, tfrecord

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("data_dir", os.path.join("tfrecords", "celeba"), "Dataset folder written by build_records.")
    flags.DEFINE_integer("samples", 32, "Images on the contact sheet.", lower_bound=0)
    flags.DEFINE_string("sheet", None, "Contact sheet PNG path; default DATA_DIR/contact_sheet.png.")


def decode_record(record: bytes) -> Tuple[bytes, int, str]:
    """(jpeg bytes, label, file name) of one serialized Example, through TensorFlow's parser."""
    import tensorflow as tf

    parsed = schema.parse_example(tf.constant(record))
    return (parsed[schema.IMAGE_KEY].numpy(), int(parsed[schema.LABEL_KEY].numpy()),
            parsed[schema.FILENAME_KEY].numpy().decode())


def contact_sheet(samples: Sequence[Tuple[bytes, int, str]], path: str, columns: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = max(1, (len(samples) + columns - 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 2.1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (jpeg, label, name) in zip(axes.flat, samples):
        ax.imshow(Image.open(io.BytesIO(jpeg)))
        ax.set_title(f"{name}\n{schema.CLASS_NAMES[label]}", fontsize=7)
    fig.tight_layout()
    with fileio.open_write(path) as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise UserError(f"unexpected argument {argv[1]}")
    data_dir = FLAGS.data_dir
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
    if FLAGS.samples:
        first = next(iter(manifest["splits"].values()))["shards"][0]["file"]
        records = tfrecord.read_records(fileio.join(data_dir, first), FLAGS.samples)
        sheet = FLAGS.sheet or fileio.join(data_dir, "contact_sheet.png")
        contact_sheet([decode_record(r) for r in records], sheet)
        print(f"contact sheet of {len(records)} images: {sheet}")
    print(f"all {sum(len(i['shards']) for i in manifest['splits'].values())} shards match the manifest")
    return 0


def cli() -> None:
    run_main(main, define_flags=_define_flags, tensorflow=True)


if __name__ == "__main__":
    cli()
