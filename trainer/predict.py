"""Predicts male/female for raw image files with a trained model.

Usage:
  python -m trainer.predict --model_dir=runs/celeba photo1.jpg photo2.png ...
  python -m trainer.predict --model_dir=runs/celeba photos/ 'more/*.png' --output=preds.csv

Each argument is a file, a folder (its files, recursively) or a glob pattern. Prints one line per file: the file,
`male` or `female`, and P(male); a file that cannot be predicted gets `error` and the reason in its line, the others
go on, and the exit status is non-zero then. --output also writes the rows as CSV (file, class, p_male, error).
Files of any size and format go through the very transform the records job applied to the training images
(dataset_format.transform.Transform.apply), with the Transform recorded in the run folder.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import Iterator, List, Optional, Sequence, Tuple

from celeba_common import fileio
from celeba_common.cli import import_tensorflow_for_remote, import_tensorflow_quietly, run_main
from celeba_common.errors import UserError
from celeba_common.flagdefs import define_flags, from_flags, option
from dataset_format.transform import Transform
from trainer.config import DEFAULT_MODEL_DIR, trained_model_file


@dataclasses.dataclass
class PredictConfig:
    model_dir: str = option(DEFAULT_MODEL_DIR, "A trainer.main output folder.")
    batch_size: int = option(32, "Images per forward pass.", lower_bound=1)
    output: Optional[str] = option(None, "Also write the predictions as CSV here (file, class, p_male, error).")


def expand(arguments: Sequence[str]) -> List[str]:
    """Files named by the arguments: a file as is, a folder's files (recursively, sorted), a glob's matches. A name
    that is none of these stays, to get its own 'no such file' row."""
    paths: List[str] = []
    for argument in arguments:
        if fileio.isdir(argument):
            paths += [fileio.join(argument, name) for name in fileio.listdir(argument)]
        elif any(c in argument for c in "*?[") and not fileio.exists(argument):
            paths += fileio.glob(argument) or [argument]
        else:
            paths.append(argument)
    return paths


def prepare_one(path: str, transform: Transform):
    """One raw file -> uint8 array [S, S, 3]: the records job's transform, then the trainer's JPEG decode.
    ImageError (or OSError) says why it cannot."""
    import tensorflow as tf

    from dataset_format.transform import ImageError

    if not fileio.exists(path):
        raise ImageError("no such file")
    if fileio.isdir(path):
        raise ImageError("is a folder, not an image")
    try:
        raw = fileio.read_regular(path)
    except ValueError as e:  # a FIFO, /dev/zero, an 8 GB file: this row's error, no hang
        raise ImageError(str(e)) from None
    jpeg = transform.apply(raw)
    return tf.io.decode_jpeg(jpeg, channels=3).numpy()  # as trainer/data.py decodes records


def predict_files(
    model, paths: Sequence[str], transform: Transform, batch_size: int = 32
) -> Iterator[Tuple[Optional[float], Optional[str]]]:
    """(P(male), None) for each file that could be read, (None, reason) for each that could not, in order. Streams:
    a batch of files is read, predicted and yielded before the next is read, so memory holds one batch whatever the
    number of files (CelebA's 202,599 images at 224 px would be about 30 GB at once)."""
    import numpy as np

    from dataset_format.transform import ImageError

    for start in range(0, len(paths), batch_size):
        results: List[Tuple[Optional[float], Optional[str]]] = []
        images, rows = [], []
        for path in paths[start : start + batch_size]:
            try:
                images.append(prepare_one(path, transform))
                rows.append(len(results))
                results.append((None, None))
            except (ImageError, OSError) as e:
                results.append((None, " ".join(str(getattr(e, "strerror", None) or e).split())))
        if images:
            probs = np.asarray(model.predict_on_batch(np.stack(images)))
            for row, p in zip(rows, probs):
                results[row] = (float(p[1]), None)
        yield from results


def write_csv(path: str, rows: Sequence[Tuple[str, str, str, str]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "class", "p_male", "error"])
    writer.writerows(rows)
    fileio.write_bytes(path, out.getvalue().encode())


def _transform_of(model_dir: str, model) -> Transform:
    """fingerprint.trained_transform, or UserError when the run folder does not say or disagrees with its model."""
    from trainer.fingerprint import trained_transform

    transform = trained_transform(model_dir)
    if not transform:
        raise UserError(
            f"{model_dir} does not say which image transform its model was trained with (no run.json; "
            f"trained by an older version): retrain it with python -m trainer.main"
        )
    if model.input_shape[1] != transform.image_size:
        raise UserError(
            f"{model_dir}: the model takes {model.input_shape[1]} px images but the run folder says it "
            f"was trained on {transform.describe()}; retrain it with python -m trainer.main --fresh"
        )
    return transform


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        raise UserError("no image files given: python -m trainer.predict --model_dir=M FILE|FOLDER|GLOB...")
    from dataset_format.schema import CLASS_NAMES

    config = from_flags(PredictConfig)
    import_tensorflow_for_remote(config.model_dir, *argv[1:], writes=(config.output,))
    paths = expand(argv[1:])
    if not paths:
        raise UserError(f"no files in {', '.join(argv[1:])}")
    trained_model_file(config.model_dir)
    import_tensorflow_quietly()
    from trainer.model import load_trained

    model = load_trained(config.model_dir)
    rows = []
    for path, (p_male, error) in zip(
        paths, predict_files(model, paths, _transform_of(config.model_dir, model), config.batch_size)
    ):
        row = (path, "error", "", error) if error else (path, CLASS_NAMES[int(p_male >= 0.5)], f"{p_male:.4f}", "")
        rows.append(row)
        print(f"{path}\terror\t{error}" if error else f"{path}\t{row[1]}\t{row[2]}", flush=True)
    if config.output:
        write_csv(config.output, rows)
    failed = sum(1 for row in rows if row[3])
    if failed:
        raise UserError(f"{failed} of {len(rows)} files could not be predicted (their rows say why)")
    return 0


def cli() -> None:
    run_main(main, define_flags=lambda: define_flags(PredictConfig))


if __name__ == "__main__":
    cli()
