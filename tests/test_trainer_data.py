import os

import numpy as np
import pytest
import tensorflow as tf

from celeba_common.errors import UserError
from trainer import data


def _context(pipelines, index):
    return tf.distribute.InputContext(
        num_input_pipelines=pipelines, input_pipeline_id=index, num_replicas_in_sync=pipelines
    )


def test_training_batches(records_dir):
    info = data.load(records_dir)
    ds = data.records_dataset_fn(info.records("train"), data.InputSpec(8, training=True, seed=1))()
    images, labels = next(iter(ds))
    assert images.dtype == tf.uint8 and images.shape == (8, 32, 32, 3)
    assert labels.shape == (8, 2) and np.allclose(labels.numpy().sum(axis=1), 1)


def test_eval_is_complete_and_ordered(records_dir):
    info = data.load(records_dir)
    make = data.records_dataset_fn(info.records("validation", with_extras=True), data.InputSpec(7, training=False))
    names = [n for _, _, extras in make() for n in extras["filename"].numpy()]
    assert len(names) == 20 and names == [n for _, _, e in make() for n in e["filename"].numpy()]
    listed = open(os.path.join(records_dir, "splits", "validation.txt")).read().split()
    assert sorted(n.decode() for n in names) == listed


def test_per_replica_batch_and_sharding(records_dir):
    info = data.load(records_dir)

    def names(pipelines, index):
        fn = data.records_dataset_fn(info.records("train", with_extras=True), data.InputSpec(8, training=False))
        ds = fn(_context(pipelines, index))
        batches = list(ds)
        assert batches[0][0].shape[0] == 8 // pipelines
        return [n for _, _, e in batches for n in e["filename"].numpy()]

    for pipelines in (2, 4):  # 2 shards: file sharding; 4 pipelines > 2 shards: record sharding
        parts = [names(pipelines, i) for i in range(pipelines)]
        everything = [n for part in parts for n in part]
        assert len(everything) == len(set(everything)) == 120


def test_cache_gives_same_data(records_dir):
    info = data.load(records_dir)
    fn = data.records_dataset_fn(info.records("test", cache=True), data.InputSpec(5, training=False))
    ds = fn()
    first = [x.numpy() for x, _ in ds]
    second = [x.numpy() for x, _ in ds]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_refuses_folder_without_success(records_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(records_dir, copy)
    os.remove(copy / "_SUCCESS")
    with pytest.raises(UserError, match="has no _SUCCESS"):
        data.load(str(copy))
    with pytest.raises(UserError, match="does not exist"):
        data.load(str(tmp_path / "missing"))


@pytest.mark.parametrize("damage,needle", [("truncate", "truncated or altered"), ("flip", "sha256")])
def test_damaged_shard_is_named(records_dir, tmp_path, damage, needle):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(records_dir, copy)
    shard = copy / "celeba-train.tfrecord-00001-of-00002"
    raw = bytearray(shard.read_bytes())
    if damage == "truncate":
        raw = raw[:-10]
    else:
        raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f"celeba-train.tfrecord-00001-of-00002.*{needle}"):
        data.load(str(copy))


def _epoch_names(info, epoch, skip_steps=0, steps=15, augment=False):
    """The file names (and flipped-ness) a training epoch feeds, batch 8, 120 train images."""
    make = data.records_dataset_fn(
        info.records("train", with_extras=True, augment=augment),
        data.InputSpec(8, training=True, seed=7, epoch=epoch, skip_steps=skip_steps),
    )
    out = []
    for images, _, extras in make().take(steps - skip_steps):
        out += list(
            zip(
                extras["filename"].numpy(),
                images.numpy().sum(axis=(1, 2, 3)) if augment else [0] * 8,
                images.numpy()[:, 0, 0, 0],
            )
        )
    return out


def test_each_epoch_has_its_own_order_reproducibly(records_dir):
    info = data.load(records_dir)
    one, two = _epoch_names(info, 1), _epoch_names(info, 2)
    assert [n for n, *_ in one] != [n for n, *_ in two]  # a new order every epoch
    assert sorted(n for n, *_ in one) == sorted(n for n, *_ in two)  # over the same 120 examples
    assert len({n for n, *_ in one}) == 120
    assert _epoch_names(info, 1) == one  # and the same order on every run


def test_a_resumed_epoch_sees_exactly_the_rest_of_its_own_order(records_dir):
    info = data.load(records_dir)
    whole = _epoch_names(info, 3, augment=True)
    resumed = _epoch_names(info, 3, skip_steps=6, augment=True)
    assert resumed == whole[6 * 8 :]  # same examples, same order, same flips
    assert sorted(n for n, *_ in whole[: 6 * 8] + resumed) == sorted(n for n, *_ in whole)
