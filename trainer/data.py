"""The input pipeline: verified shards -> tf.data, as a dataset_fn for strategy.distribute_datasets_from_function.

    files -> shard per input pipeline -> shuffle files -> interleave(TFRecordDataset) -> [cache] -> shuffle
          -> parse + decode (schema.py) -> [augment] -> batch(per-replica) -> prefetch

Images stay uint8 all the way; the model converts and normalizes them itself.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, List, Optional

import tensorflow as tf

from celeba_common.cli import UserError
from preprocessing import manifest as manifest_lib, schema

LOG = logging.getLogger("trainer")
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class DatasetInfo:
    data_dir: str
    manifest: dict

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    def files(self, split: str) -> List[str]:
        return manifest_lib.shard_paths(self.data_dir, self.manifest, split)

    def num_examples(self, split: str) -> int:
        return int(self.manifest["splits"][split]["num_examples"])

    def has(self, split: str) -> bool:
        return split in self.manifest["splits"]


def load(data_dir: str, verify: bool = True) -> DatasetInfo:
    """Refuses a folder without _SUCCESS; with verify, checks every shard's size and sha256 (UserError naming it)."""
    manifest = manifest_lib.load_verified(data_dir) if verify else manifest_lib.read_manifest(data_dir)
    return DatasetInfo(data_dir, manifest)


def load_for_training(data_dir: str, verify: bool, batch_size: int) -> DatasetInfo:
    """load(), plus what training needs: train and validation splits, and a train split of >= one batch."""
    info = load(data_dir, verify=verify)
    for split in ("train", "validation"):
        if not info.has(split):
            raise UserError(f"data folder {data_dir} has no {split} split")
    if batch_size > info.num_examples("train"):
        raise UserError(f"--batch_size={batch_size} is larger than the train split "
                        f"({info.num_examples('train')} images)")
    return info


def decode(serialized, image_size: int, with_extras: bool = False):
    """One serialized Example -> (uint8 image [S, S, 3], one-hot label [2]) (+ extras dict with attributes)."""
    parsed = schema.parse_example(serialized)
    image = tf.io.decode_jpeg(parsed[schema.IMAGE_KEY], channels=3)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    label = tf.one_hot(parsed[schema.LABEL_KEY], len(schema.CLASS_NAMES))
    if with_extras:
        return image, label, {"attributes": parsed[schema.ATTRIBUTES_KEY], "filename": parsed[schema.FILENAME_KEY]}
    return image, label


def augment(image, label, *rest):
    image = tf.image.random_flip_left_right(image)
    return (image, label, *rest)


def fits_in_memory(num_examples: int, image_size: int, fraction: float = 0.5) -> bool:
    """Whether decoded uint8 images would take under `fraction` of the available memory."""
    return num_examples * image_size * image_size * 3 < fraction * _available_memory()


def _available_memory() -> int:
    """MemAvailable on Linux (free + reclaimable cache), else the free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def make_dataset_fn(files: List[str], image_size: int, global_batch_size: int, training: bool,
                    shuffle_buffer: int = 2048, augment_images: bool = False, cache: bool = False,
                    seed: Optional[int] = None, with_extras: bool = False,
                    drop_remainder: Optional[bool] = None) -> Callable:
    """A dataset_fn(input_context) yielding per-replica batches; usable with or without a strategy."""
    drop_remainder = training if drop_remainder is None else drop_remainder
    deterministic = not training or seed is not None

    def dataset_fn(input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
        batch = global_batch_size
        pipelines, pipeline_id = 1, 0
        if input_context is not None:
            batch = input_context.get_per_replica_batch_size(global_batch_size)
            pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
        ds = tf.data.Dataset.from_tensor_slices(files)
        by_file = pipelines == 1 or len(files) >= pipelines
        if pipelines > 1 and by_file:  # FILE sharding: each input pipeline reads its own shards
            ds = ds.shard(pipelines, pipeline_id)
        if training:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
                           cycle_length=max(1, min(len(files), 16)), block_length=1,
                           num_parallel_calls=AUTOTUNE, deterministic=deterministic)
        if not by_file:  # fewer shards than pipelines: every pipeline reads all, keeps every n-th record
            ds = ds.shard(pipelines, pipeline_id)
        decode_fn = lambda r: decode(r, image_size, with_extras)  # noqa: E731
        if cache:  # decode once, keep the pixels; shuffling happens after the cache so each epoch differs
            ds = ds.map(decode_fn, num_parallel_calls=AUTOTUNE).cache()
            if training:
                ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        else:
            if training:
                ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
            ds = ds.map(decode_fn, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
        if training and augment_images:
            ds = ds.map(augment, num_parallel_calls=AUTOTUNE)
        ds = ds.batch(batch, drop_remainder=drop_remainder)
        options = tf.data.Options()
        options.deterministic = deterministic
        if input_context is not None and input_context.num_input_pipelines > 1:
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options).prefetch(AUTOTUNE)

    return dataset_fn


def streaming_dataset_fn(config, info: DatasetInfo, split: str, training: bool) -> Callable:
    """make_dataset_fn with a TrainConfig's settings (augment and --cache apply to training only)."""
    num_train = info.num_examples("train")
    return make_dataset_fn(
        info.files(split), info.image_size, config.batch_size, training=training,
        shuffle_buffer=config.shuffle_buffer, augment_images=config.augment and training,
        cache=config.cache and training and fits_in_memory(num_train, info.image_size), seed=config.seed)
