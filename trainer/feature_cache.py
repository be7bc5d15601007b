"""The frozen-feature cache: the backbone's pooled features of each split, computed once and saved with tf.data.

While the backbone is frozen, the head is the only thing that trains, so the images need to go through VGG16 only
once; every later epoch trains the head on the saved features (tf.data.Dataset.save / load).
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Callable, Dict

import keras
import tensorflow as tf

from celeba_common import fileio
from celeba_common.cli import UserError
from trainer import data, model as model_lib

DONE = "_DONE"
LOG = logging.getLogger("trainer")


def wanted(config, multi_worker: bool) -> bool:
    """Whether the head phase trains on cached features; UserError when --feature_cache=on cannot apply."""
    if config.feature_cache == "off":
        return False
    reason = None
    if config.augment:
        reason = "--augment changes the images every epoch"
    elif multi_worker:
        reason = "it is single-machine (multi-worker training streams)"
    elif config.epochs == 0:
        reason = "there is no frozen-backbone phase"
    if reason and config.feature_cache == "on":
        raise UserError(f"--feature_cache=on cannot be used here: {reason}")
    return reason is None


def cache_key(info: data.DatasetInfo, weights: str, pooling: str, policy: str, seed: int) -> str:
    """What determines the features: the shards' sha256, the backbone weights (a file's content), pooling, policy."""
    shards = [s["sha256"] for split in info.manifest["splits"].values() for s in split["shards"]]
    weights_id = weights if weights.lower() in ("imagenet", "none") else f"sha256:{fileio.sha256_file(weights)}"
    key = json.dumps([shards, weights_id, pooling, policy, seed], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def build_split(net: keras.Model, info: data.DatasetInfo, split: str, path: str,
                batch_size: int) -> tf.data.Dataset:
    """The pooled features of one split as a dataset of (features, one-hot label); computed only when not saved."""
    if fileio.exists(fileio.join(path, DONE)):
        return tf.data.Dataset.load(path)
    LOG.info("feature cache: computing the backbone features of the %s split (once) into %s", split, path)
    features = model_lib.feature_model(net)
    forward = tf.function(lambda x: features(x, training=False))
    source = data.make_dataset_fn(info.files(split), info.image_size, batch_size, training=False,
                                  with_extras=False)()

    def generate():
        for images, labels in source:
            yield forward(images), labels

    spec = (tf.TensorSpec([None, features.output.shape[-1]], features.output.dtype),
            tf.TensorSpec([None, 2], tf.float32))
    tf.data.Dataset.from_generator(generate, output_signature=spec).unbatch().save(path)
    fileio.write_bytes(fileio.join(path, DONE), b"")  # last: a half-written cache is never loaded
    return tf.data.Dataset.load(path)


def dataset_fn(cached: tf.data.Dataset, global_batch: int, training: bool, buffer: int, seed: int) -> Callable:
    """A dataset_fn(input_context) over cached features: shuffled and repeated for training, in order otherwise."""

    def make(input_context=None):
        ds = cached
        batch = global_batch
        if input_context is not None:
            batch = input_context.get_per_replica_batch_size(global_batch)
        if training:
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        return ds.batch(batch, drop_remainder=training).prefetch(tf.data.AUTOTUNE)

    return make


class FeatureCache:
    """The cached features of one model's backbone on one dataset, built split by split on first use."""

    def __init__(self, net: keras.Model, info: data.DatasetInfo, root: str, key: str, batch_size: int):
        self.net, self.info, self.batch_size = net, info, batch_size
        self.root, self.path = root, fileio.join(root, key)
        self._splits: Dict[str, tf.data.Dataset] = {}

    def split(self, name: str) -> tf.data.Dataset:
        if name not in self._splits:
            self._splits[name] = build_split(self.net, self.info, name, fileio.join(self.path, name),
                                             self.batch_size)
        return self._splits[name]

    def remove(self) -> None:
        if fileio.exists(self.root):
            fileio.delete_tree(self.root)
