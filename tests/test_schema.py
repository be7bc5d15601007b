import numpy as np
import pytest
import tensorflow as tf

from dataset_format import schema


def _example(label=1, attrs=None, name="000042.jpg"):
    attrs = attrs or [i % 2 for i in range(len(schema.ATTRIBUTE_NAMES))]
    jpeg = tf.io.encode_jpeg(np.full((8, 8, 3), 200, np.uint8)).numpy()
    return jpeg, schema.encode_example(jpeg, 8, 8, name, label, attrs), attrs


def test_encoded_example_is_a_tf_example():
    jpeg, serialized, attrs = _example()
    example = tf.train.Example.FromString(serialized)
    feature = example.features.feature
    assert feature[schema.IMAGE_KEY].bytes_list.value == [jpeg]
    assert feature[schema.LABEL_KEY].int64_list.value == [1]
    assert feature[schema.FILENAME_KEY].bytes_list.value == [b"000042.jpg"]
    assert list(feature[schema.ATTRIBUTES_KEY].int64_list.value) == attrs
    assert feature[schema.HEIGHT_KEY].int64_list.value == [8]


def test_parse_example_round_trip_with_large_values():
    jpeg = b"\xff\xd8" + bytes(300)  # > 127 bytes: multi-byte length varints
    serialized = schema.encode_example(jpeg, 4096, 300, "x.jpg", 0, [0] * 40)
    parsed = schema.parse_example(tf.constant(serialized))
    assert parsed[schema.IMAGE_KEY].numpy() == jpeg
    assert int(parsed[schema.HEIGHT_KEY]) == 4096 and int(parsed[schema.WIDTH_KEY]) == 300
    assert int(parsed[schema.LABEL_KEY]) == 0


def test_encoding_is_deterministic_and_matches_tensorflow_bytes():
    _, a, _ = _example()
    _, b, _ = _example()
    assert a == b
    # TensorFlow's own deterministic serialization of the same message gives the same bytes.
    assert tf.train.Example.FromString(a).SerializeToString(deterministic=True) == a


def test_attribute_count_checked():
    try:
        schema.encode_example(b"", 1, 1, "a", 0, [0] * 39)
    except ValueError as e:
        assert "40" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_shard_name_matches_tfds_convention():
    assert schema.shard_name("celeba", "train", 3, 16) == "celeba-train.tfrecord-00003-of-00016"


def test_the_parse_spec_and_the_tfds_features_come_from_the_one_declaration():
    from dataset_format.tfds_metadata import features_json

    assert sorted(schema.feature_spec()) == sorted(f.key for f in schema.FEATURES)
    tfds = features_json(32)
    for feature in schema.FEATURES:
        node = tfds
        for part in feature.key.split("/"):
            node = node["featuresDict"]["features"][part]
        assert (
            node["pythonClassName"].split(".")[-1].lower().replace("_", "")
            in {"image": "image", "text": "text", "scalar": "scalar", "class_label": "classlabel", "tensor": "tensor"}[
                feature.tfds
            ]
        )
    with pytest.raises(ValueError, match="image/attributes: expected 40 values, got 39"):
        schema.encode_example(b"jpeg", 32, 32, "a.jpg", 1, [0] * 39)
