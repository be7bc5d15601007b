import os

import numpy as np
import pytest
import tensorflow as tf

from celeba_common.cli import UserError
from trainer import data


def _context(pipelines, index):
    return tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=index,
                                      num_replicas_in_sync=pipelines)


def test_training_batches(records_dir):
    info = data.load(records_dir)
    ds = data.make_dataset_fn(info.files("train"), info.image_size, 8, training=True, seed=1)()
    images, labels = next(iter(ds))
    assert images.dtype == tf.uint8 and images.shape == (8, 32, 32, 3)
    assert labels.shape == (8, 2) and np.allclose(labels.numpy().sum(axis=1), 1)


def test_eval_is_complete_and_ordered(records_dir):
    info = data.load(records_dir)
    make = data.make_dataset_fn(info.files("validation"), info.image_size, 7, training=False, with_extras=True)
    names = [n for _, _, extras in make() for n in extras["filename"].numpy()]
    assert len(names) == 20 and names == [n for _, _, e in make() for n in e["filename"].numpy()]
    assert sorted(n.decode() for n in names) == open(os.path.join(records_dir, "splits", "validation.txt")).read().split()


def test_per_replica_batch_and_sharding(records_dir):
    info = data.load(records_dir)

    def names(pipelines, index):
        fn = data.make_dataset_fn(info.files("train"), info.image_size, 8, training=False, with_extras=True)
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
    fn = data.make_dataset_fn(info.files("test"), info.image_size, 5, training=False, cache=True)
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
