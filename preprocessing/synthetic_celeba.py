"""A synthetic CelebA download: procedurally drawn 178x218 faces with CelebA's file formats and 40 attributes.

Usage:
  python -m preprocessing.synthetic_celeba --output_dir=data/synthetic_celeba --num_images=2000

The Male label is learnable but not trivial: it shows only through cues that each appear in part of the images
(long hair, beard, lipstick, face width), with a few percent of faces carrying the other sex's cues. Tests, the
demo and the benchmarks use it in place of the real download, which cannot be fetched here.
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
import os
import shutil
import zipfile
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from celeba_common.cli import run_main
from celeba_common.errors import UserError
from celeba_common.flagdefs import define_flags, from_flags, option
from dataset_format.schema import ATTRIBUTE_NAMES

WIDTH, HEIGHT = 178, 218  # img_align_celeba's size
PARTITION_SHARES = (0.814, 0.099)  # CelebA's train / validation shares; the rest is test
LAYOUTS = ("txt", "kaggle", "zip")


@dataclasses.dataclass
class SyntheticConfig:
    """The command line's settings (flags defined in cli() only, so tests and other modules import generate())."""

    output_dir: str = option(os.path.join("data", "synthetic_celeba"), "Where to write the download.")
    num_images: int = option(2000, "Number of images.", lower_bound=3)
    seed: int = option(0, "Generator seed.")
    layout: str = option(
        "txt",
        "txt: the original layout; zip: images in img_align_celeba.zip; kaggle: Kaggle's CSV layout.",
        choices=LAYOUTS,
    )


_SKIN = [(255, 224, 189), (234, 192, 134), (198, 134, 66), (141, 85, 36), (241, 194, 125), (224, 172, 105)]
_HAIR = {
    "Black_Hair": (30, 25, 20),
    "Blond_Hair": (225, 200, 120),
    "Brown_Hair": (110, 70, 40),
    "Gray_Hair": (160, 160, 160),
}


def _attributes(rng: np.random.Generator) -> dict:
    a = {name: bool(rng.random() < 0.2) for name in ATTRIBUTE_NAMES}
    male = bool(rng.random() < 0.42)  # CelebA is ~42 % male
    a["Male"] = male
    long_hair = rng.random() < (0.08 if male else 0.92)
    beard = male and rng.random() < 0.6
    a["No_Beard"] = not beard
    a["Goatee"] = beard and rng.random() < 0.4
    a["Mustache"] = beard and rng.random() < 0.5
    a["Wearing_Lipstick"] = rng.random() < (0.02 if male else 0.65)
    a["Heavy_Makeup"] = a["Wearing_Lipstick"] and rng.random() < 0.6
    hair = rng.choice(list(_HAIR))
    for name in _HAIR:
        a[name] = name == hair
    a["Bald"] = male and not long_hair and rng.random() < 0.05
    a["Eyeglasses"] = rng.random() < 0.07
    a["Wearing_Hat"] = rng.random() < 0.05
    a["Smiling"] = rng.random() < 0.48
    a["Young"] = rng.random() < 0.77
    a["_long_hair"] = long_hair
    return a


def draw_face(rng: np.random.Generator, a: dict) -> Image.Image:
    """One 178x218 face for the attributes `a`."""
    background = tuple(int(v) for v in rng.integers(40, 230, 3))
    image = Image.new("RGB", (WIDTH, HEIGHT), background)
    d = ImageDraw.Draw(image)
    cx = WIDTH // 2 + int(rng.integers(-8, 9))
    cy = HEIGHT // 2 + int(rng.integers(-6, 7))
    half_w = int(rng.integers(40, 48)) + (5 if a["Male"] else 0)
    half_h = int(rng.integers(56, 64))
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    skin = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in skin)
    hair = next((_HAIR[k] for k in _HAIR if a[k]), _HAIR["Brown_Hair"])
    if a["_long_hair"]:  # hair falling past the shoulders on both sides
        d.rectangle([cx - half_w - 14, cy - half_h + 10, cx + half_w + 14, cy + half_h + 45], fill=hair)
    d.ellipse([cx - half_w, cy - half_h, cx + half_w, cy + half_h], fill=skin)
    if not a["Bald"]:
        d.chord([cx - half_w - 4, cy - half_h - 12, cx + half_w + 4, cy + 10], 180, 360, fill=hair)
    if not a["No_Beard"]:
        shade = tuple(max(0, int(c * 0.45)) for c in hair)
        d.chord([cx - half_w + 2, cy - 5, cx + half_w - 2, cy + half_h], 0, 180, fill=shade)
    eye_y = cy - 8
    for side in (-1, 1):
        ex = cx + side * half_w // 2
        d.ellipse([ex - 7, eye_y - 4, ex + 7, eye_y + 4], fill=(250, 250, 250))
        d.ellipse([ex - 3, eye_y - 3, ex + 3, eye_y + 3], fill=(40, 30, 20))
        if a["Eyeglasses"]:
            d.rectangle([ex - 12, eye_y - 9, ex + 12, eye_y + 9], outline=(20, 20, 20), width=3)
    mouth_color = (200, 20, 50) if a["Wearing_Lipstick"] else tuple(int(c * 0.7) for c in skin)
    mouth_y = cy + half_h // 2
    if a["Smiling"]:
        d.arc([cx - 16, mouth_y - 10, cx + 16, mouth_y + 8], 10, 170, fill=mouth_color, width=5)
    else:
        d.line([cx - 14, mouth_y, cx + 14, mouth_y], fill=mouth_color, width=5)
    if a["Wearing_Hat"]:
        d.rectangle(
            [cx - half_w - 10, cy - half_h - 20, cx + half_w + 10, cy - half_h + 12],
            fill=tuple(int(v) for v in rng.integers(0, 255, 3)),
        )
    noise = rng.integers(-12, 13, (HEIGHT, WIDTH, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _make_one(args: Tuple[int, int]) -> Tuple[str, bytes, List[int]]:
    seed, index = args
    rng = np.random.default_rng([seed, index])
    a = _attributes(rng)
    out = io.BytesIO()
    draw_face(rng, a).save(out, format="JPEG", quality=90)
    return f"{index + 1:06d}.jpg", out.getvalue(), [1 if a[n] else -1 for n in ATTRIBUTE_NAMES]


def partition_of(index: int, num_images: int) -> int:
    """Contiguous official partitions, like CelebA's: train first, then validation, then test."""
    train = int(num_images * PARTITION_SHARES[0])
    val = int(num_images * PARTITION_SHARES[1])
    return 0 if index < train else (1 if index < train + val else 2)


def generate(
    output_dir: str, num_images: int, seed: int = 0, layout: str = "txt", processes: int = 0
) -> List[Tuple[str, List[int]]]:
    """Writes the download; returns [(file name, 40 attributes of -1/1)]. Refuses a non-empty output_dir."""
    if layout not in LAYOUTS:
        raise UserError(f"--layout={layout}: expected one of {', '.join(LAYOUTS)}")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise UserError(f"output folder {output_dir} exists and is not empty")
    tmp = output_dir.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    image_dir = os.path.join(tmp, "img_align_celeba", "img_align_celeba" if layout == "kaggle" else "")
    os.makedirs(image_dir, exist_ok=True)
    jobs = [(seed, i) for i in range(num_images)]
    processes = processes or min(os.cpu_count() or 1, 8)
    rows = []
    archive = zipfile.ZipFile(os.path.join(tmp, "img_align_celeba.zip"), "w") if layout == "zip" else None
    with (
        multiprocessing.get_context("spawn").Pool(processes)
        if processes > 1 and num_images > 500
        else _Serial() as pool
    ):
        for name, data, attrs in pool.imap(_make_one, jobs, chunksize=64):
            if archive:
                archive.writestr(f"img_align_celeba/{name}", data)
            else:
                with open(os.path.join(image_dir, name), "wb") as f:
                    f.write(data)
            rows.append((name, attrs))
    if archive:
        archive.close()
        shutil.rmtree(os.path.join(tmp, "img_align_celeba"))
    write_lists(tmp, rows, layout)
    if os.path.isdir(output_dir):
        os.rmdir(output_dir)
    os.replace(tmp, output_dir)
    return rows


def write_lists(folder: str, rows: Sequence[Tuple[str, Sequence[int]]], layout: str = "txt") -> None:
    """list_attr_celeba + list_eval_partition for `rows`, in CelebA's txt format or Kaggle's CSV format."""
    n = len(rows)
    if layout == "kaggle":
        attr = ["image_id," + ",".join(ATTRIBUTE_NAMES)] + [
            f"{name}," + ",".join(str(v) for v in attrs) for name, attrs in rows
        ]
        part = ["image_id,partition"] + [f"{name},{partition_of(i, n)}" for i, (name, _) in enumerate(rows)]
        files = {"list_attr_celeba.csv": attr, "list_eval_partition.csv": part}
    else:  # the original's spacing: two spaces before a 1, one before a -1
        attr = [str(n), " ".join(ATTRIBUTE_NAMES)] + [name + "".join(f" {v:>2}" for v in attrs) for name, attrs in rows]
        part = [f"{name} {partition_of(i, n)}" for i, (name, _) in enumerate(rows)]
        files = {"list_attr_celeba.txt": attr, "list_eval_partition.txt": part}
    for file_name, lines in files.items():
        with open(os.path.join(folder, file_name), "w", newline="\n") as f:
            f.write("\n".join(lines) + "\n")


class _Serial:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap(fn, jobs, chunksize=1):
        return map(fn, jobs)


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise UserError(f"unexpected argument {argv[1]}")
    config = from_flags(SyntheticConfig)
    rows = generate(config.output_dir, config.num_images, config.seed, config.layout)
    males = sum(1 for _, attrs in rows if attrs[ATTRIBUTE_NAMES.index("Male")] == 1)
    print(
        f"wrote {len(rows)} synthetic CelebA images ({males / len(rows):.1%} male, {config.layout} layout) "
        f"to {config.output_dir}"
    )
    return 0


def cli() -> None:
    run_main(main, define_flags=lambda: define_flags(SyntheticConfig))


if __name__ == "__main__":
    cli()
