"""The exported SavedModel (MODEL_DIR/export): what TF Serving and Vertex AI Prediction run, with no client code.

Signatures:
  serving_default   image_bytes: string [N], encoded JPEG, PNG, GIF (first frame) or BMP files as they are
                    -> probabilities float32 [N, 2], class string [N] (female|male), p_male float32 [N]
                    The image transform runs in the graph: decode (a JPEG at the reduced DCT scale the records job
                    uses), the dataset's resize mode (crop: central square; pad; stretch), resize to the training
                    size (area when shrinking, bilinear when enlarging), and the records' JPEG re-encode.
  serving_images    images: uint8 [N, S, S, 3], already transformed as the records are -> the same outputs

The in-graph transform uses TensorFlow's decoders and resize instead of the records job's Pillow/OpenCV and its
JPEG re-encode; tests/test_serving.py bounds the difference in p_male against trainer.predict.
REST: {"instances": [{"image_bytes": {"b64": "<base64 of the file>"}}]}.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from dataset_format import schema
from dataset_format.transform import Transform


def _decode(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """RGB uint8 of any supported format; a JPEG at libjpeg's reduced scale, as Pillow's draft() in the records job
    picks it: the largest of 1/8, 1/4, 1/2 that keeps both sides >= image_size."""

    def jpeg():
        shape = tf.io.extract_jpeg_shape(encoded)
        fits = tf.minimum(shape[0], shape[1]) // image_size
        branches = [(fits >= r, lambda r=r: tf.io.decode_jpeg(encoded, channels=3, ratio=r)) for r in (8, 4, 2)]
        return tf.case(branches, default=lambda: tf.io.decode_jpeg(encoded, channels=3), exclusive=False)

    return tf.cond(
        tf.io.is_jpeg(encoded),
        jpeg,
        lambda: tf.ensure_shape(tf.io.decode_image(encoded, channels=3, expand_animations=False), [None, None, 3]),
    )


def transform(encoded: tf.Tensor, settings: Transform) -> tf.Tensor:
    """One encoded image (string scalar) -> uint8 [S, S, 3], as dataset_format.transform does it, in TF ops: decode,
    crop / pad / stretch, resize, and the records' JPEG re-encode at their quality."""
    image_size, resize_mode = settings.image_size, settings.resize_mode
    image = _decode(encoded, image_size)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    if resize_mode == "crop":
        side = tf.minimum(height, width)
        image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
    if resize_mode == "pad":
        resized = tf.image.resize_with_pad(tf.cast(image, tf.float32), image_size, image_size, antialias=True)
    else:
        shrink = tf.logical_or(tf.shape(image)[0] > image_size, tf.shape(image)[1] > image_size)
        resized = tf.cond(
            shrink,
            lambda: tf.image.resize(image, [image_size, image_size], method="area"),
            lambda: tf.image.resize(image, [image_size, image_size], method="bilinear"),
        )
    square = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return tf.io.decode_jpeg(tf.io.encode_jpeg(square, quality=settings.jpeg_quality), channels=3)


def _outputs(net: keras.Model, images: tf.Tensor) -> dict:
    probs = tf.cast(net(images, training=False), tf.float32)
    names = tf.constant(list(schema.CLASS_NAMES))
    return {"probabilities": probs, "class": tf.gather(names, tf.argmax(probs, axis=-1)), "p_male": probs[:, 1]}


def export(net: keras.Model, export_dir: str, settings: Transform) -> None:
    """Writes the SavedModel with both signatures (keras.export.ExportArchive); serving_default applies `settings`
    to raw image bytes."""
    archive = keras.export.ExportArchive()
    archive.track(net)
    image_size = settings.image_size

    def from_bytes(image_bytes):
        images = tf.map_fn(
            lambda b: transform(b, settings),
            image_bytes,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
        )
        return _outputs(net, images)

    archive.add_endpoint(
        "serving_default", from_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    archive.add_endpoint(
        "serving_images",
        lambda images: _outputs(net, images),
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="images")],
    )
    archive.write_out(export_dir, verbose=False)
