import io

import numpy as np
import pytest
from PIL import Image

from dataset_format.transform import ImageError, Transform, transform_image


def _encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image


def _gradient(width=178, height=218) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None]
    return Image.fromarray(np.concatenate(np.broadcast_arrays(x, y, x // 2 + y // 2), axis=2).astype(np.uint8))


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
@pytest.mark.parametrize("size", [32, 224])
def test_output_is_square_rgb_jpeg(mode, size):
    image = _decode(transform_image(_encode(_gradient()), Transform(size, mode)))
    assert image.size == (size, size) and image.mode == "RGB"


def test_crop_takes_the_central_square():
    pixels = np.zeros((200, 100, 3), np.uint8)
    pixels[50:150] = 255  # the central 100x100 square is white, the rest black
    out = np.asarray(_decode(transform_image(_encode(Image.fromarray(pixels), "PNG"), Transform(50, "crop", 100))))
    assert out.mean() > 250


def test_pad_keeps_everything_and_adds_black_bars():
    pixels = np.full((200, 100, 3), 255, np.uint8)
    out = np.asarray(_decode(transform_image(_encode(Image.fromarray(pixels), "PNG"), Transform(64, "pad", 100))))
    assert out[:, :10].mean() < 5 and out[:, 28:36].mean() > 250


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16"])
def test_any_mode_becomes_rgb(mode):
    source = (
        _gradient().convert(mode)
        if mode != "I;16"
        else Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    )
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    image = _decode(transform_image(_encode(source, fmt), Transform(32)))
    assert image.mode == "RGB" and image.size == (32, 32)


def test_png_named_jpg_is_read_by_content():
    assert _decode(transform_image(_encode(_gradient(), "PNG"), Transform(32))).size == (32, 32)


@pytest.mark.parametrize("data", [b"", b"not an image at all", _encode(_gradient())[:300]])
def test_bad_bytes_raise_image_error(data):
    with pytest.raises(ImageError):
        transform_image(data, Transform(32))


def test_deterministic():
    data = _encode(_gradient())
    assert transform_image(data, Transform(64)) == transform_image(data, Transform(64))


def test_large_photo_is_shrunk_with_antialiasing():
    stripes = np.zeros((1000, 1000, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes average to grey when shrunk properly
    out = np.asarray(_decode(transform_image(_encode(Image.fromarray(stripes), "PNG"), Transform(50, "crop", 100))))
    assert 100 < out.mean() < 155 and out.std() < 20


def test_an_image_claiming_too_many_pixels_is_refused_before_it_is_decoded():
    """A 70-byte PNG whose header says 10000x10000 (100 M pixels, 300 MB decoded): refused from Pillow's limit on,
    where Pillow itself only warns up to twice that."""
    import struct
    import zlib

    png = bytearray(_encode(Image.new("RGB", (1, 1)), "PNG"))
    header = struct.pack(">II", 10000, 10000) + png[24:29]  # IHDR: width, height, then depth, colour, ...
    png[16:29] = header
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    assert Image.open(io.BytesIO(bytes(png))).size == (10000, 10000)
    with pytest.raises(ImageError, match=r"10000x10000 pixels exceed the limit"):
        transform_image(bytes(png), Transform(32))


def test_the_transform_is_one_frozen_value_with_its_defaults_in_one_place():
    import dataclasses

    from preprocessing.config import Config

    settings = Transform(32, "pad", 90)
    assert Transform.from_dict({**settings.as_dict(), "name": "celeba", "splits": {}}) == settings  # a manifest
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.image_size = 64
    config = Config(celeba_dir="x", output_dir="y")
    assert config.transform == Transform() == Transform(224, "crop", 95)  # the records job's flags take its defaults
    for bad, needle in (
        ({"image_size": 32, "resize_mode": "zoom", "jpeg_quality": 95}, "resize_mode 'zoom'"),
        ({"image_size": "32", "resize_mode": "crop", "jpeg_quality": 95}, "image_size '32'"),
        ({"image_size": 32, "resize_mode": "crop", "jpeg_quality": 101}, "jpeg_quality 101"),
        ({"image_size": 32, "resize_mode": "crop"}, "no jpeg_quality"),
        ([32], "not a JSON object"),
    ):
        with pytest.raises(ValueError, match=needle):
            Transform.from_dict(bad)
