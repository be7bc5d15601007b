"""Trains the CelebA gender classifier: frozen VGG16 + dense head on the records, on every device available.

Usage:
  python -m trainer.main --batch_size=64 --lr=1e-4
  python -m trainer.main --data_dir=gs://b/tfrecords/celeba --model_dir=gs://b/runs/r1 --fine_tune_from=block5_conv1 \
      --fine_tune_epochs=5

Then: python -m trainer.evaluate --model_dir=M, python -m trainer.predict --model_dir=M FILE...
Every flag is a field of trainer.config.TrainConfig.
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import flags

from celeba_common.cli import import_tensorflow_for_remote, import_tensorflow_quietly, run_main
from celeba_common.errors import UserError
from celeba_common.flagdefs import define_flags, from_flags
from trainer import cluster, runlock
from trainer.config import DEFAULT_MODEL_DIR, TrainConfig, check_data_folder


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> TrainConfig:
    """TrainConfig from the flags; on Vertex AI the AIP_* folders fill what the flags leave open."""
    vertex = cluster.vertex_defaults()
    model_dir = flag_values.model_dir or vertex.get("model_dir", DEFAULT_MODEL_DIR)
    return from_flags(
        TrainConfig,
        flag_values,
        model_dir=model_dir,
        checkpoint_dir=vertex.get("checkpoint_dir"),
        tensorboard_dir=vertex.get("tensorboard_dir"),
    )


def _checked_config():
    """The flags' TrainConfig once every check that needs no TensorFlow passed (bad flags and data folders fail in
    a second), the run folder locked by the chief."""
    config = config_from_flags()
    # a remote path: TensorFlow's own filesystem (tf.io.gfile) from the first check on, the only gs:// client here
    import_tensorflow_for_remote(config.data_dir, config.weights, writes=(config.model_dir, config.feature_cache_dir))
    config.validate()
    cluster.check_cpu_devices(config.num_cpu_devices, cluster.ensure_tf_config())
    check_data_folder(config.data_dir, config.batch_size)
    if cluster.is_chief(cluster.tf_config()):
        runlock.hold(config.model_dir)
    return config


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise UserError(f"unexpected argument {argv[1]}")
    config = _checked_config()
    import_tensorflow_quietly()
    from trainer import distribute

    distribute.split_cpu(config.num_cpu_devices)
    import tensorflow as tf

    from trainer import evaluation
    from trainer.train import NonFiniteLoss, Preempted, Trainer

    errors = tf.errors
    lost = (errors.UnavailableError, errors.AbortedError, errors.CancelledError, errors.DeadlineExceededError)
    trainer = Trainer(config)
    try:
        trainer.train()
        if trainer.finished_before:
            if trainer.is_chief:
                print(evaluation.finished_message(config), flush=True)
            trainer.finish()
            return 0
        result = trainer.evaluate_and_export()
        trainer.finish()
    except Preempted as e:
        sys.stderr.write(f"{e}; rerun the same command to resume\n")
        return 143
    except lost as e:  # a collective with a worker gone
        if trainer.num_workers < 2:
            raise
        raise UserError(
            f"the cluster lost a worker ({type(e).__name__} in a collective); rerun the same command "
            f"on every worker to resume from the last checkpoint"
        ) from None
    except tf.errors.DataLossError as e:  # a damaged shard read with --noverify_data
        raise UserError(
            f"a shard of {config.data_dir} is damaged ({' '.join(e.message.split())[:160]}); run with "
            f"--verify_data (the default) to name it, or rebuild the records"
        ) from None
    except NonFiniteLoss as e:
        raise UserError(
            f"{e}; kept the last good checkpoint ({trainer.checkpoints.latest or 'none yet'}); try a "
            f"lower --lr, --precision=float32 or another --cross_device_ops"
        ) from None
    finally:
        trainer.cleanup()
    if trainer.is_chief:
        _report(result, config.model_dir)
    return 0


def _report(result: dict, model_dir: str) -> None:
    split = result["split"]
    print(
        f"{split} accuracy {result[f'{split}_accuracy']:.4f}  loss {result[f'{split}_loss']:.4f}  "
        f"ROC AUC {result['roc_auc']:.4f}  ({result['num_examples']} images)"
    )
    print(f"model, metrics and plots in {model_dir}")


def cli() -> None:
    run_main(main, define_flags=lambda: define_flags(TrainConfig))


if __name__ == "__main__":
    cli()
