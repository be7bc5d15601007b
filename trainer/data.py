"""The input pipeline: verified shards -> tf.data, as a dataset_fn for strategy.distribute_datasets_from_function.

    files -> shard per input pipeline -> shuffle files -> interleave(TFRecordDataset) -> [cache] -> shuffle
          -> parse + decode (schema.py) -> [augment] -> batch(per-replica) -> prefetch

Images stay uint8 all the way; the model converts and normalizes them itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import socket
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from celeba_common import fileio
from celeba_common.errors import UserError
from dataset_format import manifest as manifest_lib, schema, tfrecord
from dataset_format.transform import Transform
from trainer.config import check_training_splits

LOG = logging.getLogger("trainer")
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class DatasetInfo:
    data_dir: str
    manifest: dict

    @property
    def transform(self) -> Transform:
        """The image transform the records were made with: what serving and predict apply to a raw image."""
        return manifest_lib.transform_of(self.manifest)

    @property
    def image_size(self) -> int:
        return self.transform.image_size

    def files(self, split: str) -> List[str]:
        return manifest_lib.shard_paths(self.data_dir, self.manifest, split)

    def records(self, split: str, **options) -> "RecordsInput":
        """The split's shards as a RecordsInput at the records' image size; `options` are its other fields."""
        return RecordsInput(self.files(split), self.image_size, **options)

    def num_examples(self, split: str) -> int:
        return int(self.manifest["splits"][split]["num_examples"])

    def has(self, split: str) -> bool:
        return split in self.manifest["splits"]


def load(data_dir: str, verify: bool = True) -> DatasetInfo:
    """Refuses a folder without _SUCCESS or whose shards hold other record counts than the manifest says (headers
    only, cheap); with verify, also checks every shard's size and sha256 (UserError naming the shard)."""
    manifest = manifest_lib.load_verified(data_dir, check_hashes=verify)
    return DatasetInfo(data_dir, manifest)


def records_changed(info: DatasetInfo) -> bool:
    """Whether the records under a running trainer are no longer the ones it started on (rebuilt with --overwrite
    meanwhile): training on would mix two datasets in one run. One small read; asked once per epoch."""
    try:
        return manifest_lib.read_manifest(info.data_dir)["splits"] != info.manifest["splits"]
    except UserError:  # gone, or half rebuilt
        return True


def changed_records_error(info: DatasetInfo) -> UserError:
    return UserError(
        f"the records in {info.data_dir} changed while this run trained (rebuilt with --overwrite?); "
        f"the checkpoints so far are of the old records: rerun with --fresh to train on the new ones"
    )


def load_for_training(data_dir: str, verify: bool, batch_size: int) -> DatasetInfo:
    """load(), plus what training needs: train and validation splits, a train split of >= one batch, records of
    the manifest's image size; and a warning when a split holds one class only."""
    info = load(data_dir, verify=verify)
    check_training_splits(info.manifest, data_dir, batch_size)
    _check_image_size(info)
    for split, facts in info.manifest["splits"].items():
        labels = {int(k): v for k, v in (facts.get("labels") or {}).items() if v}
        if facts["num_examples"] and len(labels) == 1:
            LOG.warning(
                "the %s split of %s holds %s images only: a classifier cannot learn (or be judged) on one "
                "class; is the download complete?",
                split,
                data_dir,
                schema.CLASS_NAMES[next(iter(labels))],
            )
    return info


def _check_image_size(info: DatasetInfo) -> None:
    """UserError when the first train record's image is not the manifest's size (an edited manifest): the input
    pipeline would fail on it in its first step, with a TensorFlow traceback."""
    with fileio.open_read(info.files("train")[0]) as handle:
        first = next(tfrecord.iter_records(handle), None)
    if first is None:
        return
    feature = tf.train.Example.FromString(first).features.feature
    height, width = feature[schema.HEIGHT_KEY].int64_list.value, feature[schema.WIDTH_KEY].int64_list.value
    if list(height) + list(width) != [info.image_size] * 2:
        raise UserError(
            f"{info.data_dir}: the records hold {list(width)[:1]}x{list(height)[:1]} px images, but "
            f"manifest.json says {info.image_size} px; rebuild with --overwrite"
        )


def decode(serialized, image_size: int, with_extras: bool = False):
    """One serialized Example -> (uint8 image [S, S, 3], one-hot label [2]) (+ extras dict with attributes)."""
    parsed = schema.parse_example(serialized)
    image = tf.io.decode_jpeg(parsed[schema.IMAGE_KEY], channels=3)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    label = tf.one_hot(parsed[schema.LABEL_KEY], len(schema.CLASS_NAMES))
    if with_extras:
        return image, label, {"attributes": parsed[schema.ATTRIBUTES_KEY], "filename": parsed[schema.FILENAME_KEY]}
    return image, label


def fits_in_memory(num_examples: int, image_size: int, fraction: float = 0.5) -> bool:
    """Whether decoded uint8 images would take under `fraction` of the available memory."""
    return num_examples * image_size * image_size * 3 < fraction * available_memory()


def available_memory() -> int:
    """MemAvailable on Linux (free + reclaimable cache), else the free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def epoch_seed(seed: Optional[int], epoch: int) -> Optional[int]:
    """The shuffle seed of one epoch: a different order every epoch, the same order on every run and resume."""
    return None if seed is None else (seed * 1_000_003 + epoch) % (1 << 31)


def _records(
    files: List[str],
    pipelines: int,
    pipeline_id: int,
    shuffle_seed: Optional[int],
    deterministic: bool,
    shuffle_files: bool = False,
) -> tf.data.Dataset:
    """The serialized records of this input pipeline's share: its own shards (FILE sharding), or every n-th record
    of all of them when there are fewer shards than pipelines; in file order unless `shuffle_files`."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    by_file = pipelines == 1 or len(files) >= pipelines
    if pipelines > 1 and by_file:
        ds = ds.shard(pipelines, pipeline_id)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=shuffle_seed)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
        cycle_length=max(1, min(len(files), 16)),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    if not by_file:
        ds = ds.shard(pipelines, pipeline_id)
    return ds


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """How an input pipeline cuts one pass over its data, shared by the streamed records (records_dataset_fn) and
    the cached features (feature_cache.dataset_fn): the global batch; for training, the shuffle (its buffer, and the
    epoch's seed derived from the run's) and the resume point (the steps the epoch already trained)."""

    global_batch: int
    training: bool
    shuffle_buffer: int = 2048
    seed: Optional[int] = None
    epoch: int = 0
    skip_steps: int = 0

    @property
    def shuffle_seed(self) -> Optional[int]:
        return epoch_seed(self.seed, self.epoch)

    @property
    def deterministic(self) -> bool:
        return not self.training or self.seed is not None

    def share(self, input_context: Optional[tf.distribute.InputContext]) -> Tuple[int, int, int]:
        """(per-replica batch, number of input pipelines, this pipeline's index)."""
        if input_context is None:
            return self.global_batch, 1, 0
        return (
            input_context.get_per_replica_batch_size(self.global_batch),
            input_context.num_input_pipelines,
            input_context.input_pipeline_id,
        )

    def skip_examples(self, pipelines: int) -> int:
        """The examples this input pipeline already fed in the resumed epoch (its share of skip_steps batches)."""
        return self.skip_steps * (self.global_batch // pipelines)

    def shuffled(self, ds: tf.data.Dataset, pipelines: int) -> tf.data.Dataset:
        """Training order: shuffled with the epoch's seed, repeated, resumed where the epoch stopped."""
        ds = ds.shuffle(self.shuffle_buffer, seed=self.shuffle_seed, reshuffle_each_iteration=True).repeat()
        return ds.skip(self.skip_examples(pipelines))

    def batched(
        self, ds: tf.data.Dataset, batch: int, pipelines: int, drop_remainder: Optional[bool] = None
    ) -> tf.data.Dataset:
        """Per-replica batches (partial ones dropped in training unless said otherwise), options, prefetch."""
        ds = ds.batch(batch, drop_remainder=self.training if drop_remainder is None else drop_remainder)
        options = tf.data.Options()
        options.deterministic = self.deterministic
        if pipelines > 1:  # each pipeline already reads its own share
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options).prefetch(AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class RecordsInput:
    """What an input pipeline reads from the records and makes of each example: the shards at their image size,
    with or without the extras (file name, attributes), the decoded pixels kept in memory across passes (`cache`);
    for training, seeded flips (`augment`) or the whole pipeline run by a tf.data service (`data_service`, its
    consumers sharing `job_name`)."""

    files: Sequence[str]
    image_size: int
    with_extras: bool = False
    augment: bool = False
    cache: bool = False
    data_service: str = ""
    job_name: str = ""


def records_dataset_fn(
    records: RecordsInput,
    spec: InputSpec,
    memory_cache: Optional[Dict[int, tf.data.Dataset]] = None,
    drop_remainder: Optional[bool] = None,
) -> Callable:
    """A dataset_fn(input_context) of the records, per-replica batches; usable with or without a strategy.

    Training pipelines follow `spec` (the epoch's order, resumed after its skip_steps: every example of the epoch
    is seen once). Each input pipeline reads its own shards (or every n-th record when there are fewer shards than
    pipelines), so each example is read exactly once. With `records.cache`, pass the same `memory_cache` dict every
    epoch: the decoded images it holds are then kept. With `records.data_service` (training only), the whole
    pipeline runs on the tf.data service's workers instead; see _from_service.
    """
    decode_fn = lambda r: decode(r, records.image_size, records.with_extras)  # noqa: E731
    cached = {} if memory_cache is None else memory_cache  # --cache: one decoded dataset per pipeline
    files, training, deterministic = records.files, spec.training, spec.deterministic

    def dataset_fn(input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
        batch, pipelines, pipeline_id = spec.share(input_context)
        if training and records.data_service:
            return _from_service(records, decode_fn, batch, spec.shuffle_buffer)
        if records.cache:  # decode once, keep the pixels; the shuffle comes after the cache, so each epoch differs
            if pipeline_id not in cached:
                cached[pipeline_id] = (
                    _records(files, pipelines, pipeline_id, None, deterministic)
                    .map(decode_fn, num_parallel_calls=AUTOTUNE)
                    .cache()
                )
            ds = cached[pipeline_id]
            if training:
                ds = spec.shuffled(ds, pipelines)
        else:
            ds = _records(
                files,
                pipelines,
                pipeline_id,
                spec.shuffle_seed if training else None,
                deterministic,
                shuffle_files=training,
            )
            if training:
                ds = spec.shuffled(ds, pipelines)
            ds = ds.map(decode_fn, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
        if training and records.augment:  # flips seeded per epoch too, by position in the epoch
            ds = ds.enumerate(start=spec.skip_examples(pipelines)).map(
                _seeded_flip(spec.shuffle_seed), num_parallel_calls=AUTOTUNE
            )
        return spec.batched(ds, batch, pipelines, drop_remainder)

    return dataset_fn


# How long a trainer waits for a tf.data service dispatcher to answer: one given by address should be up already;
# a Vertex AI job's pool boots beside the trainers and may come up minutes later.
SERVICE_WAIT_SECONDS = {"address": 20.0, "vertex": 600.0}


def check_service(address: str, wait: float = SERVICE_WAIT_SECONDS["address"]) -> None:
    """UserError unless the tf.data service dispatcher at grpc://HOST:PORT accepts connections within `wait`
    seconds (it may still be starting): TensorFlow itself would wait for it forever."""
    host, port = address.split("://", 1)[-1].rsplit(":", 1)
    deadline = time.monotonic() + wait
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                reason = e.strerror or str(e)
                raise UserError(
                    f"--data_service={address}: no tf.data service dispatcher answers there ({reason}) "
                    f"after {wait:.0f} s; start one with python -m launch.data_service"
                ) from None
            time.sleep(1.0)


def _from_service(records: RecordsInput, decode_fn: Callable, batch: int, shuffle_buffer: int) -> tf.data.Dataset:
    """The training input read from a tf.data service in distributed_epoch mode (ShardingPolicy.DYNAMIC).

    The dispatcher hands the shard files out to the service's workers one at a time; each worker reads, shuffles,
    decodes, augments and batches what it got, and every consumer (input pipeline) sharing `job_name` takes the
    next ready batch. Within one pass over the files each example is produced at most once (exactly once unless a
    service worker dies mid-file); the pass repeats, and an epoch takes its steps from this stream. The order is
    not reproducible, and a resumed epoch does not skip the batches it already trained on.
    """
    ds = _records(records.files, 1, 0, None, deterministic=False)  # one pipeline: the service's workers split the files
    ds = ds.shuffle(shuffle_buffer).map(decode_fn, num_parallel_calls=AUTOTUNE, deterministic=False)
    if records.augment:
        ds = ds.map(lambda image, label: (tf.image.random_flip_left_right(image), label), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=True).repeat()
    ds = ds.apply(
        tf.data.experimental.service.distribute(
            processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
            service=records.data_service,
            job_name=records.job_name,
        )
    )
    return ds.prefetch(AUTOTUNE)


def _seeded_flip(seed: Optional[int]) -> Callable:
    """Random flips that depend on (seed, position in the epoch) only: reproducible, and the same after a resume."""

    def flip(index, example):
        key = tf.stack([tf.constant(seed or 0, tf.int64), tf.cast(index, tf.int64)])
        return (tf.image.stateless_random_flip_left_right(example[0], seed=key), *example[1:])

    return flip


def streaming_dataset_fn(
    config,
    info: DatasetInfo,
    split: str,
    training: bool,
    epoch: int = 0,
    skip_steps: int = 0,
    with_extras: bool = False,
    memory_cache: Optional[Dict[int, tf.data.Dataset]] = None,
) -> Callable:
    """records_dataset_fn with a TrainConfig's settings (augment, --cache and --data_service apply to training only).

    A service job is named after the run folder, the epoch and the step it starts at: the input pipelines of every
    worker share it, and a rerun or resume starts a job of its own."""
    job = hashlib.sha256(f"{config.model_dir}|{epoch}|{skip_steps}".encode()).hexdigest()[:16]
    num_train = info.num_examples("train")
    spec = InputSpec(config.batch_size, training, config.shuffle_buffer, config.seed, epoch, skip_steps)
    records = info.records(
        split,
        with_extras=with_extras,
        augment=config.augment and training,
        cache=config.cache and training and fits_in_memory(num_train, info.image_size),
        data_service=config.data_service if training else "",
        job_name=f"celeba-train-{job}",
    )
    return records_dataset_fn(records, spec, memory_cache)
