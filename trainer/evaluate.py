"""Re-evaluates a trained model on a split of a dataset.

Usage:
  python -m trainer.evaluate --model_dir=runs/celeba [--data_dir=tfrecords/celeba --split=test]

Prints accuracy, loss and ROC AUC, and writes metrics_<split>.json and confusion_matrix_<split>.png in model_dir.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from celeba_common.cli import import_tensorflow_for_remote, import_tensorflow_quietly, run_main
from celeba_common.errors import UserError
from celeba_common.flagdefs import define_flags, from_flags, option
from dataset_format.schema import SPLITS
from trainer.config import DEFAULT_MODEL_DIR, trained_metrics, trained_model_file


@dataclasses.dataclass
class EvaluateConfig:
    model_dir: str = option(DEFAULT_MODEL_DIR, "A trainer.main output folder.")
    data_dir: Optional[str] = option(None, "Dataset to evaluate on (default: the one the model was trained on).")
    split: str = option("test", "Split to evaluate.", choices=SPLITS)
    batch_size: int = option(64, "Global batch size (all replicas together).", lower_bound=1)
    num_cpu_devices: int = option(
        0,
        "Split the CPU into N logical devices (MirroredStrategy without GPUs); with "
        "GPUs, every GPU of this machine evaluates.",
        lower_bound=0,
    )


def run(config: EvaluateConfig) -> dict:
    """Evaluates model_dir's model on config.split; writes metrics_<split>.json; returns the metrics."""
    import_tensorflow_for_remote(writes=(config.model_dir,))
    data_dir = config.data_dir or trained_metrics(config.model_dir).get("data_dir")
    if not data_dir:
        raise UserError(f"pass --data_dir: {config.model_dir} does not say which data it was trained on")
    trained_model_file(config.model_dir)
    import_tensorflow_quietly()
    from trainer import data, distribute
    from trainer.evaluation import evaluate_model, save_evaluation
    from trainer.model import load_trained

    distribute.split_cpu(config.num_cpu_devices)
    strategy = distribute.make_strategy("auto")
    distribute.check_global_batch(strategy, config.batch_size)
    info = data.load(data_dir)
    if not info.has(config.split):
        raise UserError(f"data folder {data_dir} has no {config.split} split")
    with strategy.scope():
        model = load_trained(config.model_dir)
    expected = model.input_shape[1]
    if expected != info.image_size:
        raise UserError(f"the model takes {expected} px images but {data_dir} holds {info.image_size} px images")
    from trainer.fingerprint import trained_transform

    trained = trained_transform(config.model_dir)
    if trained and trained != info.transform:  # same size, another crop or JPEG quality: wrong, not failing
        raise UserError(
            f"the model was trained on records made with {trained.describe()}, but {data_dir} holds "
            f"records made with {info.transform.describe()}"
        )
    result = evaluate_model(model, info, config.split, config.batch_size, strategy)
    result["replicas"] = strategy.num_replicas_in_sync
    result["data_dir"] = data_dir
    save_evaluation(result, config.model_dir, suffix=f"_{config.split}")
    return result


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise UserError(f"unexpected argument {argv[1]}")
    config = from_flags(EvaluateConfig)
    result = run(config)
    split = config.split
    replicas = result["replicas"]
    print(
        f"{split} accuracy {result[f'{split}_accuracy']:.4f}  loss {result[f'{split}_loss']:.4f}  "
        f"ROC AUC {result['roc_auc']:.4f}  ({result['num_examples']} images from {result['data_dir']}; "
        f"{replicas} replica{'s' if replicas != 1 else ''})"
    )
    return 0


def cli() -> None:
    run_main(main, define_flags=lambda: define_flags(EvaluateConfig))


if __name__ == "__main__":
    cli()
