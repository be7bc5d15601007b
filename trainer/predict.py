"""Predicts male/female for raw image files with a trained model.

Usage:
  python -m trainer.predict --model_dir=runs/celeba photo1.jpg photo2.png ...

Prints one line per file: the file, `male` or `female`, and P(male). Files of any size and format go through the
very transform the records job applied to the training images (preprocessing.transform.transform_image).
"""
from __future__ import annotations

import dataclasses
from typing import List, Sequence

from celeba_common import fileio
from celeba_common.cli import UserError, run_main
from celeba_common.flagdefs import define_flags, from_flags, option
from trainer.config import DEFAULT_MODEL_DIR


@dataclasses.dataclass
class PredictConfig:
    model_dir: str = option(DEFAULT_MODEL_DIR, "A trainer.main output folder.")
    batch_size: int = option(32, "Images per forward pass.", lower_bound=1)


def prepare(paths: Sequence[str], image_size: int, resize_mode: str = "crop", jpeg_quality: int = 95):
    """Raw files -> uint8 array [N, S, S, 3]: the records job's transform, then the trainer's JPEG decode."""
    import numpy as np
    import tensorflow as tf

    from preprocessing.transform import ImageError, transform_image

    images = []
    for path in paths:
        if not fileio.exists(path) or fileio.isdir(path):
            raise UserError(f"{path}: no such file" if not fileio.exists(path) else f"{path}: is a folder, not an image")
        try:
            jpeg = transform_image(fileio.read_bytes(path), image_size, resize_mode, jpeg_quality)
        except ImageError as e:
            raise UserError(f"{path}: {e}") from None
        images.append(tf.io.decode_jpeg(jpeg, channels=3).numpy())  # as trainer/data.py decodes records
    return np.stack(images)


def predict_files(model, paths: Sequence[str], transform: dict, batch_size: int = 32) -> List[float]:
    """P(male) for each file."""
    image_size = model.input_shape[1]
    images = prepare(paths, image_size, transform.get("resize_mode", "crop"), transform.get("jpeg_quality", 95))
    probs = model.predict(images, batch_size=batch_size, verbose=0)
    return [float(p[1]) for p in probs]


def _transform_of(model_dir: str) -> dict:
    """The records job's transform settings the model was trained with, from the run folder itself (run.json, or
    metrics.json): never from the data folder, which may have moved since."""
    from trainer.fingerprint import read_run
    from trainer.model import trained_metrics

    transform = (read_run(model_dir) or {}).get("transform") or trained_metrics(model_dir).get("transform")
    if not transform:
        raise UserError(f"{model_dir} does not say which image transform its model was trained with (no run.json; "
                        f"trained by an older version): retrain it with python -m trainer.main")
    return transform


def main(argv: Sequence[str]) -> int:
    paths = list(argv[1:])
    if not paths:
        raise UserError("no image files given: python -m trainer.predict --model_dir=M FILE...")
    from preprocessing.schema import CLASS_NAMES
    from trainer.model import load_trained

    config = from_flags(PredictConfig)
    model = load_trained(config.model_dir)
    for path, p_male in zip(paths, predict_files(model, paths, _transform_of(config.model_dir), config.batch_size)):
        print(f"{path}\t{CLASS_NAMES[int(p_male >= 0.5)]}\t{p_male:.4f}")
    return 0


def cli() -> None:
    run_main(main, define_flags=lambda: define_flags(PredictConfig), tensorflow=True)


if __name__ == "__main__":
    cli()
