"""The image transform, defined once: raw file bytes -> square RGB JPEG of the training size.

The records job applies it to every CelebA image and trainer/predict.py applies it to every file it is asked
about, so a model never sees a different crop, resize or JPEG re-encode at serving time than in training. Its
settings are one frozen value, `Transform`, written whole to the manifest and to the run folder's run.json and
passed whole to the records job's workers, the trainer's export (serving) and predict.
"""

from __future__ import annotations

import dataclasses
import io
import re
from typing import Mapping

import cv2
import numpy as np
from PIL import Image, ImageOps

RESIZE_MODES = ("crop", "pad", "stretch")
IMAGE_SIZES = (16, 4096)  # the smallest and largest side the records job writes


def use_one_thread() -> None:
    """OpenCV resizes about 6x faster than Pillow (SIMD), on one thread per process: the records job calls this in
    its workers, since it already runs one process per core."""
    cv2.setNumThreads(1)


class ImageError(ValueError):
    """The bytes are not an image we can decode (truncated, garbage, unsupported)."""


def decode_rgb(data: bytes, min_side: int = 0) -> Image.Image:
    """Decodes any format Pillow reads (whatever the file name says) to an RGB image, EXIF orientation applied.

    With min_side, a JPEG may be decoded at a reduced scale (libjpeg's DCT scaling, much faster) as long as both
    sides stay >= min_side.
    """
    try:
        image = Image.open(io.BytesIO(data))
        if image.size[0] * image.size[1] > (Image.MAX_IMAGE_PIXELS or float("inf")):
            # Pillow only warns below twice its limit; we refuse (the image is dead-lettered) from the limit on.
            raise Image.DecompressionBombError(
                f"{image.size[0]}x{image.size[1]} pixels exceed the limit of {Image.MAX_IMAGE_PIXELS}"
            )
        if min_side and image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))
        image.load()
        image = ImageOps.exif_transpose(image)
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad bytes
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))  # Pillow names its buffer
        raise ImageError(f"cannot decode image: {type(e).__name__}: {reason}") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, I;16, CMYK, YCbCr, P, 1 ...
    return image


def _resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear when enlarging, area averaging (antialiased) when shrinking."""
    shrink = pixels.shape[0] > height or pixels.shape[1] > width
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_square(image: Image.Image, size: int, mode: str = "crop") -> Image.Image:
    """crop: central square then resize; pad: fit inside, pad with black; stretch: resize ignoring aspect."""
    width, height = image.size
    pixels = np.asarray(image)
    if mode == "crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return Image.fromarray(_resize(pixels[top : top + side, left : left + side], size, size))
    if mode == "pad":
        scale = size / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        canvas = np.zeros((size, size, 3), np.uint8)
        top, left = (size - new_h) // 2, (size - new_w) // 2
        canvas[top : top + new_h, left : left + new_w] = _resize(pixels, new_w, new_h)
        return Image.fromarray(canvas)
    if mode == "stretch":
        return Image.fromarray(_resize(pixels, size, size))
    raise ValueError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")


@dataclasses.dataclass(frozen=True)
class Transform:
    """What turns a raw image into a training image: the square's side, how the square is cut, the JPEG quality
    the records store. The defaults here are the only ones (the records job's flags take theirs from it)."""

    image_size: int = 224
    resize_mode: str = "crop"
    jpeg_quality: int = 95

    def __post_init__(self):
        if type(self.image_size) is not int or not IMAGE_SIZES[0] <= self.image_size <= IMAGE_SIZES[1]:
            raise ValueError(
                f"image_size {self.image_size!r}: expected a whole number of pixels from "
                f"{IMAGE_SIZES[0]} to {IMAGE_SIZES[1]}"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {self.resize_mode!r}: expected one of {', '.join(RESIZE_MODES)}")
        if type(self.jpeg_quality) is not int or not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality {self.jpeg_quality!r}: expected a whole number from 1 to 100")

    def apply(self, data: bytes) -> bytes:
        """Raw image bytes -> JPEG bytes of an image_size x image_size RGB image. Raises ImageError on bad input."""
        image = resize_square(decode_rgb(data, self.image_size), self.image_size, self.resize_mode)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=self.jpeg_quality)
        return out.getvalue()

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> "Transform":
        """The Transform a manifest or run.json records (their other keys ignored); ValueError when a field is
        missing or wrong."""
        if not isinstance(values, Mapping):
            raise ValueError("not a JSON object")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})

    def describe(self) -> str:
        """e.g. `image_size=224, jpeg_quality=95, resize_mode=crop`: what error messages compare."""
        return ", ".join(f"{key}={value}" for key, value in sorted(self.as_dict().items()))


def transform_image(data: bytes, transform: Transform = Transform()) -> bytes:
    """transform.apply(data): the function the records job and predict call."""
    return transform.apply(data)
