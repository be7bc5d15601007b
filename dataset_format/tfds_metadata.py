"""TFDS metadata next to the shards, so that `tfds.builder_from_directory(dir)` and `tfds.load` open the dataset.

The files are the three that `tfds.folder_dataset.write_metadata` writes: dataset_info.json (split infos with the
exact shard lengths from the manifest), features.json (the feature connectors matching schema.py's keys) and
image-class-label.labels.txt. They are written here as JSON, without importing TFDS: the records job's main process
never imports TensorFlow (whose gs:// filesystem would then replace Beam's), and TFDS imports it.
tests/test_tfds.py checks that the files equal what write_metadata itself writes for the same dataset, and that
TFDS loads every split.

What a TFDS user sees (TFDS nests the '/'-separated record keys):
  ex["image"]["encoded"]         uint8 [S, S, 3]          ex["image"]["class"]["label"]  0 female, 1 male
  ex["image"]["attributes"]      int64 [40], 0/1 in schema.ATTRIBUTE_NAMES order
  ex["image"]["filename"], ["format"], ["height"], ["width"]
"""

from __future__ import annotations

import json
from typing import Dict

from celeba_common import fileio
from dataset_format import schema, tfrecord
from dataset_format.transform import Transform

TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
LABELS_FILE = "image-class-label.labels.txt"
_TFDS = "tensorflow_datasets.core.features."
DESCRIPTION = (
    "CelebA face images with the Male attribute as the label (female/male) and all 40 attributes, built "
    "by preprocessing.build_records."
)


def _tensor(dtype: str, shape=()) -> dict:
    return {"dtype": dtype, "encoding": "none", "shape": {"dimensions": [str(d) for d in shape]} if shape else {}}


def _dict(features: dict) -> dict:
    return {"featuresDict": {"features": features}, "pythonClassName": _TFDS + "features_dict.FeaturesDict"}


def _connector(feature: schema.Feature, image_size: int) -> dict:
    """The TFDS feature connector JSON of one declared feature."""
    if feature.tfds == "image":
        return {
            "image": {
                "dtype": "uint8",
                "encodingFormat": "jpeg",
                "shape": {"dimensions": [str(image_size), str(image_size), "3"]},
            },
            "pythonClassName": _TFDS + "image_feature.Image",
        }
    if feature.tfds == "text":
        return {"pythonClassName": _TFDS + "text_feature.Text", "text": {}}
    if feature.tfds == "scalar":
        return {"pythonClassName": _TFDS + "scalar.Scalar", "tensor": _tensor(feature.dtype)}
    if feature.tfds == "class_label":
        return {
            "classLabel": {"numClasses": str(len(schema.CLASS_NAMES))},
            "pythonClassName": _TFDS + "class_label_feature.ClassLabel",
        }
    if feature.tfds == "tensor":
        return {"pythonClassName": _TFDS + "tensor_feature.Tensor", "tensor": _tensor(feature.dtype, (feature.length,))}
    raise ValueError(f"{feature.key}: no TFDS connector {feature.tfds!r}")


def features_json(image_size: int) -> dict:
    """features.json, from schema.FEATURES: each record key's connector, nested along its '/'-separated parts as
    TFDS nests them (image/class/label -> image > class > label)."""
    tree: dict = {}
    for feature in schema.FEATURES:
        *parents, leaf = feature.key.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _connector(feature, image_size)

    def wrap(node: dict) -> dict:
        return _dict({name: wrap(child) if "pythonClassName" not in child else child for name, child in node.items()})

    return wrap(tree)


def dataset_info_json(manifest: dict) -> dict:
    """dataset_info.json: name, version and each split's exact shard lengths and bytes (from the manifest; TFDS
    counts the serialized examples, without the TFRecord framing)."""
    framing = tfrecord.HEADER_BYTES + tfrecord.FOOTER_BYTES
    splits = [
        {
            "filepathTemplate": TEMPLATE,
            "name": split,
            "numBytes": str(sum(s["bytes"] - framing * s["num_records"] for s in info["shards"])),
            "shardLengths": [str(s["num_records"]) for s in info["shards"]],
        }
        for split, info in sorted(manifest["splits"].items())
    ]
    return {
        "description": DESCRIPTION,
        "fileFormat": "tfrecord",
        "name": manifest["name"],
        "splits": splits,
        "version": "1.0.0",
    }


def files(manifest: dict) -> Dict[str, bytes]:
    """File name -> content of the TFDS metadata of a dataset."""
    dump = lambda obj: json.dumps(obj, indent=4, sort_keys=True).encode()  # noqa: E731
    return {
        "dataset_info.json": dump(dataset_info_json(manifest)),
        "features.json": dump(features_json(Transform.from_dict(manifest).image_size)),
        LABELS_FILE: ("\n".join(schema.CLASS_NAMES) + "\n").encode(),
    }


def write(folder: str, manifest: dict) -> None:
    for name, content in files(manifest).items():
        fileio.write_bytes(fileio.join(folder, name), content)
