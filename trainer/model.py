"""The model: uint8 RGB -> VGG preprocessing -> VGG16 conv base (frozen) -> pooling -> dense head -> float32 softmax.

The head is its own sub-model, so it can be trained on cached backbone features (see feature_model) and the full
model still holds the trained weights. VGG's input preprocessing is a layer of the model, so the exported model
takes plain RGB images.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

import keras

from celeba_common import fileio
from celeba_common.errors import UserError
from dataset_format.schema import CLASS_NAMES
from trainer.config import POOLINGS, WEIGHTS_HELP, trained_model_file

VGG_MEAN_BGR = (103.939, 116.779, 123.68)
BACKBONE, POOL, HEAD = "vgg16", "pool", "head"


@keras.saving.register_keras_serializable(package="celeba")
class VGGPreprocess(keras.layers.Layer):
    """keras.applications.vgg16.preprocess_input as a layer: RGB uint8/float -> BGR, ImageNet mean removed."""

    def call(self, images):
        x = keras.ops.cast(images, "float32")
        x = keras.ops.flip(x, axis=-1)
        return x - keras.ops.convert_to_tensor(VGG_MEAN_BGR, dtype="float32")

    def compute_output_shape(self, input_shape):
        return input_shape


def _download_failure(error: Exception, limit: int = 200) -> str:
    """Why keras' download failed, whole words only: the cause after Keras' `URL fetch failure on URL: None --`
    (the URL is the one the `Downloading data from` line just named)."""
    text = " ".join(str(error).split())
    if text.startswith("URL fetch failure") and " -- " in text:
        text = text.split(" -- ", 1)[1]
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text or type(error).__name__


def _backbone(image_size: int, weights: str) -> keras.Model:
    kind = weights.lower()
    if kind not in ("imagenet", "none") and not os.path.exists(weights):
        raise UserError(f"--weights={weights}: no such file; {WEIGHTS_HELP}")
    try:
        base = keras.applications.VGG16(
            include_top=False,
            input_shape=(image_size, image_size, 3),
            weights="imagenet" if kind == "imagenet" else None,
        )
    except Exception as e:  # the download raises URLError/OSError/HTTPError/ValueError depending on the failure
        if kind != "imagenet":
            raise
        raise UserError(
            f"could not download the VGG16 ImageNet weights ({_download_failure(e)}); {WEIGHTS_HELP}"
        ) from None
    if kind not in ("imagenet", "none"):
        try:
            base.load_weights(weights)
        except Exception as e:
            raise UserError(f"--weights={weights}: not VGG16 notop weights ({type(e).__name__}: {e})") from None
    base.trainable = False
    return base


def build_model(
    image_size: int,
    weights: str = "imagenet",
    head_units: Sequence[int] = (256,),
    dropout: float = 0.5,
    pooling: str = "flatten",
    seed: Optional[int] = None,
) -> keras.Model:
    """The classifier. Under a mixed policy the conv base and head compute in 16 bits; the softmax is float32."""
    if pooling not in POOLINGS:  # the caller's mistake: --pooling is checked by TrainConfig
        raise ValueError(f"unknown pooling {pooling!r}, expected one of {POOLINGS}")
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = VGGPreprocess(name="vgg_preprocess")(inputs)
    base = _backbone(image_size, weights)
    x = base(x, training=False)
    pool = {
        "flatten": keras.layers.Flatten,
        "avg": keras.layers.GlobalAveragePooling2D,
        "max": keras.layers.GlobalMaxPooling2D,
    }[pooling]
    features = pool(name=POOL)(x)
    head_inputs = keras.Input(features.shape[1:], name="features")
    h = head_inputs
    for i, units in enumerate(head_units):
        h = keras.layers.Dense(
            units, activation="relu", name=f"dense_{i}", kernel_initializer=keras.initializers.GlorotUniform(seed)
        )(h)
        if dropout:
            h = keras.layers.Dropout(dropout, seed=seed, name=f"dropout_{i}")(h)
    h = keras.layers.Dense(len(CLASS_NAMES), name="logits", kernel_initializer=keras.initializers.GlorotUniform(seed))(
        h
    )
    probs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(h)
    head = keras.Model(head_inputs, probs, name=HEAD)
    return keras.Model(inputs, head(features), name="celeba_vgg16")


def feature_model(model: keras.Model) -> keras.Model:
    """image -> pooled backbone features, sharing the model's layers."""
    return keras.Model(model.input, model.get_layer(POOL).output, name="features")


def head_model(model: keras.Model) -> keras.Model:
    return model.get_layer(HEAD)


def backbone(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE)


def unfreeze_from(model: keras.Model, layer_name: str) -> int:
    """Makes the backbone trainable from `layer_name` on; returns the number of trainable backbone layers."""
    base = backbone(model)
    names = [layer.name for layer in base.layers]
    if layer_name not in names:
        raise UserError(f"--fine_tune_from={layer_name}: not a VGG16 layer (e.g. block5_conv1, block4_conv1)")
    base.trainable = True
    start = names.index(layer_name)
    for layer in base.layers[:start]:
        layer.trainable = False
    return sum(1 for layer in base.layers[start:] if layer.weights)


def load_trained(model_dir: str) -> keras.Model:
    """The trained model.keras of model_dir (UserError when it is missing)."""
    path = trained_model_file(model_dir)
    if fileio.is_remote(path):
        local = os.path.join(tempfile.mkdtemp(), "model.keras")
        fileio.write_bytes(local, fileio.read_bytes(path))
        path = local
    try:
        return keras.models.load_model(path)
    except Exception as e:  # Keras raises ValueError/OSError/zipfile errors... for a damaged or foreign file
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(
            f"{fileio.join(model_dir, 'model.keras')} cannot be loaded ({type(e).__name__}: {reason}); "
            f"retrain, or rerun trainer.main to export it again"
        ) from None
