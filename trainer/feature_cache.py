"""The frozen-feature cache: the backbone's pooled features of each split, computed once and saved with tf.data.

While the backbone is frozen, the head is the only thing that trains, so the images need to go through VGG16 only
once; every later epoch trains the head on the saved features (tf.data.Dataset.save / load).

The cache is shared and content-addressed: --feature_cache_dir (default: config.default_feature_cache_dir())
holds one folder per key, and the key is what determines the features (the shards' sha256, the backbone weights,
pooling, precision; the seed only for random weights). Any run with the same key reuses them: another --lr,
--batch_size or head, every cell of a sweep. A worker's features are written into a temporary folder and renamed
into place complete, so a half-written cache is never read, and of two runs extracting together the first rename
wins and the other uses it.
The _DONE marker written last holds every file's size and sha256; each run checks them before using an entry, and
a damaged one (a flipped byte, a cut file, a lost part) is computed again, never trusted (trainer/cache_layout.py).
`python -m trainer.cache` lists and clears the cache.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from typing import Callable, Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from celeba_common import fileio
from celeba_common.errors import UserError
from trainer import data, distribute, metrics as metrics_lib, model as model_lib
from trainer.cache_layout import DONE, INFO, cache_key, damage, inventory, key_facts, read_info, worker_folder
from trainer.config import default_feature_cache_dir
from trainer.steps import infer

LOG = logging.getLogger("trainer")


def wanted(config) -> bool:
    """Whether the head phase trains on cached features; UserError when --feature_cache=on cannot apply."""
    if config.feature_cache == "off":
        return False
    reason = None
    if config.augment:
        reason = "--augment changes the images every epoch"
    elif config.epochs == 0:
        reason = "there is no frozen-backbone phase"
    if reason and config.feature_cache == "on":
        raise UserError(f"--feature_cache=on cannot be used here: {reason}")
    return reason is None


PART_EXAMPLES = 4096  # features are saved in parts of this many examples, so extraction memory stays bounded


def _save_part(folder: str, index: int, features: List[np.ndarray], labels: List[np.ndarray]) -> int:
    part = (np.concatenate(features), np.concatenate(labels))
    tf.data.Dataset.from_tensor_slices(part).save(fileio.join(folder, f"part-{index:05d}"))
    return len(part[1])


def extract(
    strategy: tf.distribute.Strategy, net: keras.Model, info: data.DatasetInfo, split: str, path: str, batch_size: int
) -> None:
    """Runs the backbone over the split on every replica; each worker saves the features of its own input shard.

    Every worker must call this together (the distributed iterator synchronizes them).
    """
    features = model_lib.feature_model(net)
    forward = tf.function(lambda x, y: (infer(features, x), y))
    seen: Dict[str, int] = {}
    source_fn = data.records_dataset_fn(info.records(split), data.InputSpec(batch_size, training=False))

    def dataset_fn(context):
        seen.update(pipeline=context.input_pipeline_id, pipelines=context.num_input_pipelines)
        return source_fn(context)

    dist = strategy.distribute_datasets_from_function(dataset_fn)
    run = tf.function(lambda images, labels: strategy.run(forward, args=(images, labels)), reduce_retracing=True)
    folder = worker_folder(path, seen["pipeline"], seen["pipelines"])
    final, folder = folder, f"{folder}.tmp-{uuid.uuid4().hex[:8]}"  # renamed into place once complete
    LOG.info("feature cache: computing the backbone features of the %s split (once) into %s", split, final)
    share = -(-info.num_examples(split) // seen["pipelines"])  # this worker's, about
    progress = metrics_lib.Progress(f"feature cache: {split} split", share, "images", shown=seen["pipeline"] == 0)
    parts = total = pending = 0
    buffered_f: List[np.ndarray] = []
    buffered_l: List[np.ndarray] = []
    for images, labels in dist:
        outputs = run(images, labels)
        buffered_f += [t.numpy() for t in strategy.experimental_local_results(outputs[0])]
        buffered_l += [t.numpy() for t in strategy.experimental_local_results(outputs[1])]
        pending = sum(len(b) for b in buffered_l)
        progress.update(total + pending)
        if pending >= PART_EXAMPLES:
            total += _save_part(folder, parts, buffered_f, buffered_l)
            parts, buffered_f, buffered_l = parts + 1, [], []
    if sum(len(b) for b in buffered_l):
        total += _save_part(folder, parts, buffered_f, buffered_l)
        parts += 1
    progress.done(total)
    _publish(folder, final, json.dumps({"parts": parts, "examples": total, "files": inventory(folder)}).encode())


def _publish(tmp: str, final: str, done: bytes) -> None:
    """Moves a complete temporary folder into place, its DONE marker last; if another run got there first, its
    (identical) features stay and ours go. A leftover without DONE (an interrupted remote move) is replaced."""
    if fileio.exists(final) and not fileio.exists(fileio.join(final, DONE)):
        fileio.delete_tree(final)
    if not fileio.is_remote(final):
        fileio.write_bytes(fileio.join(tmp, DONE), done)
    try:
        fileio.move_tree(tmp, final)  # local: one atomic rename, which fails if the folder exists meanwhile
    except OSError:
        if not fileio.exists(fileio.join(final, DONE)):
            raise
        LOG.info("feature cache: another run finished %s first; using its features", final)
        fileio.delete_tree(tmp)
        return
    if fileio.is_remote(final):
        fileio.write_bytes(fileio.join(final, DONE), done)


def load(folder: str) -> tf.data.Dataset:
    """One worker's saved features, in order."""
    done = json.loads(fileio.read_bytes(fileio.join(folder, DONE)))
    parts = [tf.data.Dataset.load(fileio.join(folder, f"part-{i:05d}")) for i in range(done["parts"])]
    if not parts:
        raise RuntimeError(f"feature cache {folder} holds no examples")
    return functools.reduce(lambda a, b: a.concatenate(b), parts)


def dataset_fn(path: str, spec: data.InputSpec) -> Callable:
    """A dataset_fn(input_context) over this pipeline's cached features read from their folder, cut as `spec` says
    (the same InputSpec as the streamed records: shuffled per epoch and resumed for training; in order, every
    example once, otherwise). Training on features that fit in memory takes the faster resident path: `Resident`."""

    def make(input_context=None):
        batch, pipelines, pipeline_id = spec.share(input_context)
        ds = load(worker_folder(path, pipeline_id, pipelines))
        if spec.training:
            ds = spec.shuffled(ds, pipelines)
        return spec.batched(ds, batch, pipelines)

    return make


MEMORY_FRACTION = 0.25  # cached features are kept in memory when they take under this share of the available memory


def _in_memory(folder: str) -> Optional[tuple]:
    """(features, labels) tensors of one worker's cached features on this host; None when they would not fit."""
    ds = load(folder)
    examples, spec = int(ds.cardinality()), ds.element_spec[0]  # Dataset.save records the counts
    size = examples * int(np.prod(spec.shape)) * spec.dtype.size
    if not 0 < size < MEMORY_FRACTION * data.available_memory():
        return None
    with tf.device("CPU:0"):
        arrays = next(iter(ds.batch(examples)))
    LOG.info("feature cache: %d examples (%.0f MB) kept in memory", examples, size / 2**20)
    return arrays


class Resident:
    """A worker's cached training features held in host memory for the whole run, and each epoch's order.

    An epoch is a seeded permutation (one after another when it is longer than the data) cut into batches of
    indices, one [steps, batch] matrix per local replica. The train loop gathers each step's batch by index
    inside its traced call (steps.make_train_step(resident=...)): no input pipeline, no shuffle buffer to refill,
    no iterator call per step. This is the path that keeps a GPU busy at head-training speed.
    """

    def __init__(
        self, strategy: tf.distribute.Strategy, arrays: tuple, pipeline_id: int, global_batch: int, num_workers: int
    ):
        self.strategy, (self.features, self.labels), self.pipeline_id = strategy, arrays, pipeline_id
        self.replicas = strategy.num_replicas_in_sync // num_workers  # on this worker
        self.batch = global_batch // strategy.num_replicas_in_sync

    def epoch_indices(self, seed: int, steps: int):
        """The epoch's per-replica index matrices (host tensors), distributed to this worker's replicas."""
        n, per_step = int(self.labels.shape[0]), self.replicas * self.batch
        rng = np.random.default_rng([seed, self.pipeline_id])
        order = np.concatenate([rng.permutation(n) for _ in range(-(-steps * per_step // n))])
        # step s, replica r takes the r-th batch of the step's share, as an input pipeline would hand them out
        matrices = order[: steps * per_step].reshape(steps, self.replicas, self.batch).transpose(1, 0, 2)
        dist = self.strategy.distribute_datasets_from_function(
            lambda _: tf.data.Dataset.from_tensor_slices(matrices.astype(np.int32)),
            tf.distribute.InputOptions(experimental_fetch_to_device=False),
        )
        return next(iter(dist))


class FeatureCache:
    """The cached features of one model's backbone on one dataset, extracted split by split on first use.

    Each worker keeps the features of its own input shard (worker-I-of-N), the same shard its input pipeline reads.
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        net: keras.Model,
        info: data.DatasetInfo,
        root: str,
        facts: dict,
        batch_size: int,
        worker_index: int = 0,
        num_workers: int = 1,
    ):
        self.strategy, self.net, self.info, self.batch_size = strategy, net, info, batch_size
        self.votes = distribute.Votes(strategy)
        self.root, self.path, self.facts = root, fileio.join(root, cache_key(facts)), facts
        self.worker_index, self.num_workers = worker_index, num_workers
        self._ready: Dict[str, bool] = {}
        self._resident: Optional[Resident] = None
        self._resident_decided = False  # once per run, by a vote

    def split_path(self, split: str) -> str:
        """The split's cache folder, extracted first if any worker lacks its part (all workers call this together)."""
        path = fileio.join(self.path, split)
        if not self._ready.get(split):
            mine = worker_folder(path, self.worker_index, self.num_workers)
            why = damage(mine)
            if why and fileio.exists(mine):  # computed again, not trusted: the others' intact parts are kept
                LOG.warning("feature cache: %s cannot be used (%s); computing it again", mine, why)
                fileio.delete_tree(mine)
            self._describe()
            if self.votes.any_worker(why is not None):
                extract(self.strategy, self.net, self.info, split, path, self.batch_size)
            else:
                LOG.info("feature cache: reusing the %s split's features from %s", split, path)
            self._ready[split] = True
        return path

    def resident(self) -> Optional[Resident]:
        """The training features held in memory, read once per run, when every worker's share fits (a vote, so
        that all workers take the same path); otherwise None, and training reads them from the folder."""
        if not self._resident_decided:
            arrays = _in_memory(worker_folder(self.split_path("train"), self.worker_index, self.num_workers))
            if not self.votes.any_worker(arrays is None):
                self._resident = Resident(self.strategy, arrays, self.worker_index, self.batch_size, self.num_workers)
            self._resident_decided = True
        return self._resident

    def _describe(self) -> None:
        """info.json next to the splits: what the key stands for (for `python -m trainer.cache`)."""
        info = fileio.join(self.path, INFO)
        if self.worker_index == 0 and read_info(self.path) is None:
            fileio.write_bytes(
                info,
                json.dumps(
                    {**self.facts, "records": self.info.data_dir, "created": time.strftime("%Y-%m-%d %H:%M:%S")},
                    indent=1,
                ).encode(),
            )


def for_run(
    config,
    strategy: tf.distribute.Strategy,
    net: keras.Model,
    info: data.DatasetInfo,
    policy: str,
    workers: Tuple[int, int],
) -> FeatureCache:
    """The feature cache of a training run: in --feature_cache_dir (shared), keyed by what decides the features;
    `workers`: (this worker's index, the number of workers)."""
    facts = key_facts(info.manifest, config.weights, config.pooling, policy, config.seed)
    root = config.feature_cache_dir or default_feature_cache_dir()
    return FeatureCache(strategy, net, info, root, facts, config.batch_size, *workers)
