"""The record format, defined once: feature keys, how an Example is written, and how it is parsed.

The writer (the Beam job), the reader (trainer/data.py), the inspector and the tests all import this module;
no other file spells a feature key. The features are declared once, in FEATURES; the encoder, the parse spec and
the TFDS feature connectors (tfds_metadata.features_json) are all derived from that declaration.

`encode_example` writes the tf.train.Example protobuf wire format directly (a handful of varints), so the Beam
workers never import TensorFlow (about 4 s per worker process). The tests check that TensorFlow parses it.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence

SCHEMA_VERSION = 1

IMAGE_KEY = "image/encoded"
FORMAT_KEY = "image/format"
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
FILENAME_KEY = "image/filename"
LABEL_KEY = "image/class/label"
ATTRIBUTES_KEY = "image/attributes"

LABEL_ATTRIBUTE = "Male"
CLASS_NAMES = ("female", "male")  # label 0, label 1

# CelebA's 40 attributes in the order of list_attr_celeba.txt; records store them as 0/1 in this order.
ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Feature:
    """One feature of a record: its key ('/' nests it in TFDS), its value type, how many values every record holds,
    the TFDS connector that reads it (image, text, scalar, class_label, tensor), and a parse default if optional."""

    key: str
    dtype: str  # "bytes" or "int64"
    tfds: str
    length: int = 1
    default: Optional[bytes] = None


FEATURES = (
    Feature(IMAGE_KEY, "bytes", "image"),
    Feature(FORMAT_KEY, "bytes", "text", default=b"jpeg"),
    Feature(HEIGHT_KEY, "int64", "scalar"),
    Feature(WIDTH_KEY, "int64", "scalar"),
    Feature(FILENAME_KEY, "bytes", "text"),
    Feature(LABEL_KEY, "int64", "class_label"),
    Feature(ATTRIBUTES_KEY, "int64", "tensor", length=len(ATTRIBUTE_NAMES)),
)


def shard_name(name: str, split: str, index: int, num_shards: int) -> str:
    """TFDS-style shard file name, e.g. celeba-train.tfrecord-00000-of-00004."""
    return f"{name}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}"


# --- protobuf wire format -------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL = [bytes([v]) for v in range(128)]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(values: Sequence[bytes]) -> bytes:
    return _field(1, b"".join(_field(1, v) for v in values))  # Feature.bytes_list { value }


def _int64_feature(values: Sequence[int]) -> bytes:
    if all(0 <= v < 128 for v in values):
        packed = bytes(values)  # one-byte varints: the common case of labels and 0/1 attributes
    else:
        packed = b"".join(_varint(int(v)) for v in values)
    return _field(3, _field(1, packed))  # Feature.int64_list { packed value }


def _example(features: Dict[str, bytes]) -> bytes:
    # Example.features (1) -> Features.feature (1): map<string, Feature>, entries in sorted key order so the
    # bytes are the same on every run.
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, feature)) for key, feature in sorted(features.items())
    )
    return _field(1, entries)


def encode_example(
    image_jpeg: bytes, height: int, width: int, filename: str, label: int, attributes: Sequence[int]
) -> bytes:
    """Serialized tf.train.Example for one image; attributes are 0/1 in ATTRIBUTE_NAMES order."""
    return encode_features(
        {
            IMAGE_KEY: [image_jpeg],
            FORMAT_KEY: [b"jpeg"],
            HEIGHT_KEY: [height],
            WIDTH_KEY: [width],
            FILENAME_KEY: [filename.encode()],
            LABEL_KEY: [label],
            ATTRIBUTES_KEY: list(attributes),
        }
    )


def encode_features(values: Dict[str, Sequence]) -> bytes:
    """Serialized tf.train.Example of the values of every feature in FEATURES (ValueError for a missing key or a
    wrong number of values)."""
    encoded = {}
    for feature in FEATURES:
        given = values.get(feature.key)
        if given is None or len(given) != feature.length:
            count = "none" if given is None else len(given)
            raise ValueError(f"{feature.key}: expected {feature.length} values, got {count}")
        encoded[feature.key] = _bytes_feature(given) if feature.dtype == "bytes" else _int64_feature(given)
    return _example(encoded)


# --- reading (TensorFlow side) --------------------------------------------------------------------------------


def feature_spec() -> dict:
    """The tf.io.parse_example spec of a record, from FEATURES."""
    import tensorflow as tf

    return {
        f.key: tf.io.FixedLenFeature(
            [f.length] if f.length > 1 else [], tf.string if f.dtype == "bytes" else tf.int64, default_value=f.default
        )
        for f in FEATURES
    }


def parse_example(serialized):
    """Parses one serialized Example (a scalar string tensor) into a dict of tensors; the image stays encoded."""
    import tensorflow as tf

    return tf.io.parse_single_example(serialized, feature_spec())
