"""Trains the CelebA gender classifier: frozen VGG16 + dense head on the records, on every device available.

Usage:
  python -m trainer.main --batch_size=64 --lr=1e-4
  python -m trainer.main --data_dir=gs://b/tfrecords/celeba --model_dir=gs://b/runs/r1 --fine_tune_from=block5_conv1 \
      --fine_tune_epochs=5

Then: python -m trainer.evaluate --model_dir=M, python -m trainer.predict --model_dir=M FILE...
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import flags

from preprocessing.cli import UserError, run_main

DEFAULT_DATA_DIR = os.path.join("tfrecords", "celeba")
DEFAULT_MODEL_DIR = os.path.join("runs", "celeba")

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", DEFAULT_DATA_DIR, "Records written by preprocessing.build_records.")
flags.DEFINE_string("model_dir", None, "Checkpoints, logs, metrics and the exported model "
                    f"(default $AIP_MODEL_DIR on Vertex AI, else {DEFAULT_MODEL_DIR}).")
flags.DEFINE_integer("epochs", 10, "Epochs with the backbone frozen.")
flags.DEFINE_integer("batch_size", 64, "Global batch size (all replicas together).")
flags.DEFINE_float("lr", 1e-4, "Adam learning rate of the frozen-backbone phase.")
flags.DEFINE_string("weights", "imagenet", "VGG16 weights: imagenet, none, or a local ..._notop.h5 file.")
flags.DEFINE_list("head_units", ["256"], "Units of the dense head layers, e.g. 512,256.")
flags.DEFINE_float("dropout", 0.5, "Dropout after each head layer.")
flags.DEFINE_enum("pooling", "flatten", ["flatten", "avg", "max"], "How the conv features enter the head.")
flags.DEFINE_string("precision", "auto", "auto, float32, mixed_float16 or mixed_bfloat16.")
flags.DEFINE_string("strategy", "auto", "auto, mirrored, multi_worker or one_device.")
flags.DEFINE_string("cross_device_ops", "auto", "MirroredStrategy all-reduce: auto, nccl, hierarchical_copy, "
                    "reduction_to_one_device (try another one if multi-GPU losses go NaN).")
flags.DEFINE_integer("num_cpu_devices", 0, "Split the CPU into N logical devices (to try MirroredStrategy "
                     "without GPUs).")
flags.DEFINE_integer("shuffle_buffer", 2048, "Shuffle buffer (examples).")
flags.DEFINE_bool("augment", False, "Random horizontal flips.")
flags.DEFINE_bool("cache", False, "Keep decoded images in memory after the first epoch when they fit.")
flags.DEFINE_string("feature_cache", "auto", "auto, on or off: train the head on backbone features computed once.")
flags.DEFINE_integer("seed", 42, "Seed of initialization, shuffling and dropout.")
flags.DEFINE_integer("checkpoint_steps", 0, "Also checkpoint every N steps (0: once per epoch).")
flags.DEFINE_bool("fresh", False, "Ignore existing checkpoints and history in --model_dir and start over.")
flags.DEFINE_string("fine_tune_from", "", "Unfreeze the backbone from this layer on (e.g. block5_conv1).")
flags.DEFINE_integer("fine_tune_epochs", 0, "Epochs of the fine-tuning phase.")
flags.DEFINE_float("fine_tune_lr", 1e-5, "Adam learning rate of the fine-tuning phase.")
flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch (0: one pass over the train split).")
flags.DEFINE_bool("verify_data", True, "Check every shard's size and sha256 against the manifest first.")
flags.DEFINE_bool("restore_best", True, "Evaluate and export the weights of the epoch with the lowest val_loss.")
flags.DEFINE_bool("export", True, "Write model.keras and export/ (SavedModel) at the end.")


def config_from_flags():
    from trainer import cluster
    from trainer.train import TrainConfig

    vertex = cluster.vertex_defaults()
    try:
        head_units = tuple(int(u) for u in FLAGS.head_units)
    except ValueError:
        raise UserError(f"--head_units={','.join(FLAGS.head_units)}: expected integers like 512,256") from None
    return TrainConfig(
        data_dir=FLAGS.data_dir, model_dir=FLAGS.model_dir or vertex.get("model_dir", DEFAULT_MODEL_DIR),
        epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, lr=FLAGS.lr, weights=FLAGS.weights,
        head_units=head_units, dropout=FLAGS.dropout, pooling=FLAGS.pooling, precision=FLAGS.precision,
        strategy=FLAGS.strategy, cross_device_ops=FLAGS.cross_device_ops, shuffle_buffer=FLAGS.shuffle_buffer,
        augment=FLAGS.augment, cache=FLAGS.cache, feature_cache=FLAGS.feature_cache, seed=FLAGS.seed,
        checkpoint_steps=FLAGS.checkpoint_steps, fresh=FLAGS.fresh, fine_tune_from=FLAGS.fine_tune_from,
        fine_tune_epochs=FLAGS.fine_tune_epochs, fine_tune_lr=FLAGS.fine_tune_lr,
        steps_per_epoch=FLAGS.steps_per_epoch, verify_data=FLAGS.verify_data, export=FLAGS.export,
        restore_best=FLAGS.restore_best,
        checkpoint_dir=vertex.get("checkpoint_dir"), tensorboard_dir=vertex.get("tensorboard_dir"))


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise UserError(f"unexpected argument {argv[1]}")
    config = config_from_flags()
    config.validate()  # before TensorFlow starts: bad flags fail in a second
    if FLAGS.num_cpu_devices < 0:
        raise UserError(f"--num_cpu_devices={FLAGS.num_cpu_devices}: must be >= 0")
    from trainer import distribute

    distribute.split_cpu(FLAGS.num_cpu_devices)
    from trainer.train import NonFiniteLoss, Preempted, Trainer

    trainer = Trainer(config)
    try:
        trainer.train()
        result = trainer.evaluate_and_export()
    except Preempted as e:
        sys.stderr.write(f"{e}; rerun the same command to resume\n")
        return 143
    except NonFiniteLoss as e:
        latest = trainer.manager.latest_checkpoint
        raise UserError(f"{e}; kept the last good checkpoint ({latest or 'none yet'}); try a lower --lr, "
                        f"--precision=float32 or another --cross_device_ops") from None
    finally:
        trainer.cleanup()
    split = result["split"]
    if trainer.is_chief:
        print(f"{split} accuracy {result[f'{split}_accuracy']:.4f}  loss {result[f'{split}_loss']:.4f}  "
              f"ROC AUC {result['roc_auc']:.4f}  ({result['num_examples']} images)")
        print(f"model, metrics and plots in {config.model_dir}")
    return 0


def cli() -> None:
    run_main(main, tensorflow=True)


if __name__ == "__main__":
    cli()
