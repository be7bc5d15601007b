"""Re-evaluates a trained model on a split of a dataset.

Usage:
  python -m trainer.evaluate --model_dir=runs/celeba [--data_dir=tfrecords/celeba --split=test]

Prints accuracy, loss and ROC AUC, and writes metrics_<split>.json and confusion_matrix_<split>.png in model_dir.
"""
from __future__ import annotations

import os
from typing import Sequence

from absl import flags

from preprocessing.cli import UserError, run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", os.path.join("runs", "celeba"), "A trainer.main output folder.")
flags.DEFINE_string("data_dir", None, "Dataset to evaluate on (default: the one the model was trained on).")
flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
flags.DEFINE_integer("batch_size", 64, "Batch size.", lower_bound=1)


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise UserError(f"unexpected argument {argv[1]}")
    from trainer.model import load_trained, trained_metrics

    trained = trained_metrics(FLAGS.model_dir)
    data_dir = FLAGS.data_dir or trained.get("data_dir")
    if not data_dir:
        raise UserError(f"pass --data_dir: {FLAGS.model_dir} does not say which data it was trained on")
    from trainer import data
    from trainer.train import evaluate_model, save_evaluation

    info = data.load(data_dir)
    if not info.has(FLAGS.split):
        raise UserError(f"data folder {data_dir} has no {FLAGS.split} split")
    model = load_trained(FLAGS.model_dir)
    expected = model.input_shape[1]
    if expected != info.image_size:
        raise UserError(f"the model takes {expected} px images but {data_dir} holds {info.image_size} px images")
    result = evaluate_model(model, info, FLAGS.split, FLAGS.batch_size)
    result["data_dir"] = data_dir
    save_evaluation(result, FLAGS.model_dir, suffix=f"_{FLAGS.split}")
    split = FLAGS.split
    print(f"{split} accuracy {result[f'{split}_accuracy']:.4f}  loss {result[f'{split}_loss']:.4f}  "
          f"ROC AUC {result['roc_auc']:.4f}  ({result['num_examples']} images from {data_dir})")
    return 0


def cli() -> None:
    run_main(main, tensorflow=True)


if __name__ == "__main__":
    cli()
