"""The records open with TFDS: builder_from_directory / tfds.load, with exact split infos and the right features."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dataset_format import schema, tfds_metadata
from trainer import data

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not


def test_tfds_opens_every_split_with_exact_counts_and_our_examples(learn_records):
    """On the 800/100/100 fixture: every split's counts, and the test split example by example."""
    records_dir = learn_records
    builder = tfds.builder_from_directory(records_dir)
    manifest = json.load(open(os.path.join(records_dir, "manifest.json")))
    assert set(builder.info.splits) == set(manifest["splits"])
    for split, info in manifest["splits"].items():
        assert builder.info.splits[split].num_examples == info["num_examples"]
        assert builder.info.splits[split].shard_lengths == [s["num_records"] for s in info["shards"]]
    label = builder.info.features["image"]["class"]["label"]
    assert label.names == list(schema.CLASS_NAMES)
    test = data.load(records_dir).records("test", with_extras=True)
    images, labels, extras = list(data.records_dataset_fn(test, data.InputSpec(100, False))())[0]
    ours = {
        f: (i, y, a)
        for f, i, y, a in zip(
            extras["filename"].numpy(), images.numpy(), np.argmax(labels.numpy(), -1), extras["attributes"].numpy()
        )
    }
    theirs = list(tfds.as_numpy(builder.as_dataset(split="test")))
    assert sorted(t["image"]["filename"] for t in theirs) == sorted(ours)
    for t in theirs:
        image, label, attributes = ours[t["image"]["filename"]]
        np.testing.assert_array_equal(t["image"]["encoded"], image)
        assert t["image"]["class"]["label"] == label
        np.testing.assert_array_equal(t["image"]["attributes"], attributes)
    assert sum(1 for _ in builder.as_dataset(split="validation")) == manifest["splits"]["validation"]["num_examples"]


def test_our_metadata_files_equal_what_tfds_write_metadata_writes(records_dir, tmp_path):
    """The files are written without importing TFDS; this pins them to TFDS's own writer (the installed version)."""
    copy = tmp_path / "celeba"
    shutil.copytree(records_dir, copy)
    for name in tfds_metadata.files(json.load(open(copy / "manifest.json"))):
        os.remove(copy / name)
    manifest = json.load(open(copy / "manifest.json"))
    size = manifest["image_size"]
    features = tfds.features.FeaturesDict(
        {
            "image": {
                "encoded": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
                "format": tfds.features.Text(),
                "filename": tfds.features.Text(),
                "height": tfds.features.Scalar(dtype=np.int64),
                "width": tfds.features.Scalar(dtype=np.int64),
                "class": {"label": tfds.features.ClassLabel(names=list(schema.CLASS_NAMES))},
                "attributes": tfds.features.Tensor(shape=(40,), dtype=np.int64),
            }
        }
    )
    tfds.folder_dataset.write_metadata(
        data_dir=str(copy),
        features=features,
        filename_template=tfds_metadata.TEMPLATE,
        check_data=False,
        description=tfds_metadata.DESCRIPTION,
    )
    for name, content in tfds_metadata.files(manifest).items():
        theirs = (copy / name).read_bytes()
        if name.endswith(".json"):
            assert json.loads(content) == json.loads(theirs), name
        else:
            assert content.decode().split() == theirs.decode().split(), name
    assert tf.io.gfile.exists(str(copy / "features.json"))
