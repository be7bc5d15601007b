"""Fills the shared feature cache for a set of trainer flags, without training: what a sweep runs once for its grid.

Usage:
  python -m trainer.extract_features --data_dir=tfrecords/celeba [--feature_cache_dir=D] [other trainer.main flags]

It takes trainer.main's flags, so the cache key (records, weights, pooling, precision) is the one the runs with the
same flags will look up; --lr, --batch_size and the head do not enter it. Every run or sweep cell after it trains
the head on the saved features from its first epoch.
"""

from __future__ import annotations

from typing import Sequence

from celeba_common.cli import import_tensorflow_for_remote, import_tensorflow_quietly, run_main
from celeba_common.errors import UserError
from celeba_common.flagdefs import define_flags
from trainer import cluster
from trainer.config import TrainConfig, check_data_folder


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise UserError(f"unexpected argument {argv[1]}")
    from trainer.main import config_from_flags

    config = config_from_flags()
    # a remote path: TensorFlow's own filesystem (tf.io.gfile) from the first check on, the only gs:// client here
    import_tensorflow_for_remote(config.data_dir, config.model_dir, config.weights, writes=(config.feature_cache_dir,))
    config.validate()
    cluster.check_cpu_devices(config.num_cpu_devices, cluster.ensure_tf_config())
    check_data_folder(config.data_dir, config.batch_size)
    import_tensorflow_quietly()
    from trainer import feature_cache

    if not feature_cache.wanted(config):
        raise UserError(
            "the feature cache does not apply to these flags (--feature_cache=off, --augment or "
            "--epochs=0): nothing to extract"
        )
    from trainer.train import Trainer

    trainer = Trainer(config)
    trainer.build()
    for split in ("train", "validation"):
        path = trainer.features.split_path(split)
    print(f"features of the train and validation splits in {path.rsplit('/', 1)[0]}")
    return 0


def cli() -> None:
    run_main(main, define_flags=lambda: define_flags(TrainConfig))


if __name__ == "__main__":
    cli()
