"""Reading a CelebA download: the original txt layout, the official zip, or Kaggle's CSV layout.

`find_layout(dir)` detects the layout, `read_rows(layout)` returns one Row per image (file name, official
partition, 40 attributes as -1/1) and `ImageSource` reads an image's bytes by file name, from a folder or from
inside img_align_celeba.zip without unpacking it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
import zlib
from typing import Dict, List, Optional, Tuple

from celeba_common import fileio
from celeba_common.errors import UserError
from dataset_format.schema import ATTRIBUTE_NAMES, LABEL_ATTRIBUTE

PARTITIONS = {0: "train", 1: "validation", 2: "test"}
DOWNLOAD_HELP = (
    "get CelebA from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (img_align_celeba.zip + Anno/ + Eval/) "
    "or https://www.kaggle.com/datasets/jessicali9530/celeba-dataset, or use --source=tfds; "
    "the demo (make demo) needs no download"
)


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # e.g. "000001.jpg"
    partition: str  # train | validation | test
    attributes: Tuple[int, ...]  # 40 values of -1/1 in ATTRIBUTE_NAMES order

    @property
    def label(self) -> int:
        return 1 if self.attributes[ATTRIBUTE_NAMES.index(LABEL_ATTRIBUTE)] == 1 else 0


@dataclasses.dataclass(frozen=True)
class Layout:
    kind: str  # "txt" | "kaggle"
    attr_path: str
    partition_path: str
    image_dir: Optional[str]  # folder holding the jpgs, or None when reading from image_zip
    image_zip: Optional[str] = None


def _first_existing(candidates: List[str], test=fileio.exists) -> Optional[str]:
    for c in candidates:
        if test(c):
            return c
    return None


def find_layout(celeba_dir: str) -> Layout:
    """Detects the layout of a CelebA folder, or raises UserError saying what was looked for and where to get it."""
    j = lambda *p: fileio.join(celeba_dir, *p)  # noqa: E731
    if not fileio.isdir(celeba_dir):
        what = "is a file, not a folder" if fileio.exists(celeba_dir) else "does not exist"
        raise UserError(f"CelebA folder {celeba_dir} {what}; {DOWNLOAD_HELP}")
    attr_txt = _first_existing([j("list_attr_celeba.txt"), j("Anno", "list_attr_celeba.txt")])
    part_txt = _first_existing([j("list_eval_partition.txt"), j("Eval", "list_eval_partition.txt")])
    if attr_txt and part_txt:
        image_dir = _first_existing([j("img_align_celeba"), j("Img", "img_align_celeba")], fileio.isdir)
        image_zip = (
            None if image_dir else _first_existing([j("img_align_celeba.zip"), j("Img", "img_align_celeba.zip")])
        )
        if image_dir or image_zip:
            return Layout("txt", attr_txt, part_txt, image_dir, image_zip)
    attr_csv, part_csv = j("list_attr_celeba.csv"), j("list_eval_partition.csv")
    if fileio.exists(attr_csv) and fileio.exists(part_csv):
        image_dir = _first_existing([j("img_align_celeba", "img_align_celeba"), j("img_align_celeba")], fileio.isdir)
        if image_dir:
            return Layout("kaggle", attr_csv, part_csv, image_dir)
    raise UserError(
        f"no CelebA download found in {celeba_dir}: looked for list_attr_celeba.txt + list_eval_partition.txt + "
        f"img_align_celeba/ (or img_align_celeba.zip), and for Kaggle's list_attr_celeba.csv + "
        f"list_eval_partition.csv + img_align_celeba/img_align_celeba/; {DOWNLOAD_HELP}"
    )


def _lines(path: str) -> List[str]:
    try:
        text = fileio.read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file") from None
    return [line.strip() for line in text.splitlines()]  # tolerates CRLF and trailing spaces


_VALUES = {"1": 1, "-1": -1}


def _parse_attr_values(path: str, lineno: int, values: List[str]) -> Tuple[int, ...]:
    try:
        parsed = tuple(map(_VALUES.__getitem__, values))
    except KeyError:
        parsed = ()
    if len(parsed) != len(ATTRIBUTE_NAMES):
        raise UserError(f"{path} line {lineno}: expected a file name and {len(ATTRIBUTE_NAMES)} values of -1/1")
    return parsed


def _check_names(path: str, names: List[str]) -> List[int]:
    """Column indices mapping the file's attribute order onto ATTRIBUTE_NAMES."""
    missing = [n for n in ATTRIBUTE_NAMES if n not in names]
    if missing:
        raise UserError(f"{path}: attribute header lacks {', '.join(missing[:3])}; is this list_attr_celeba?")
    return [names.index(n) for n in ATTRIBUTE_NAMES]


def _add_row(path: str, lineno: int, name: str, value, out: dict, first_line: Dict[str, int]) -> None:
    """out[name] = value, refusing names that leave the image folder and names listed twice."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or os.path.isabs(name):
        raise UserError(f"{path} line {lineno}: {name!r} is not a plain file name inside the image folder")
    if name in out:
        raise UserError(f"{path} line {lineno}: {name} is listed twice (first on line {first_line[name]})")
    out[name] = value
    first_line[name] = lineno


def read_attributes(path: str) -> Dict[str, Tuple[int, ...]]:
    """file name -> 40 values of -1/1 (ATTRIBUTE_NAMES order), from list_attr_celeba.txt or .csv."""
    lines = _lines(path)
    out: Dict[str, Tuple[int, ...]] = {}
    if path.endswith(".csv"):
        header = lines[0].split(",") if lines else []
        order = _check_names(path, header[1:])
        body, start, split = lines[1:], 2, lambda s: s.split(",")
    else:
        if len(lines) < 2 or not lines[0].isdigit():
            raise UserError(f"{path}: the first line must be the image count and the second the attribute names")
        order = _check_names(path, lines[1].split())
        body, start, split = lines[2:], 3, lambda s: s.split()
    identity = order == list(range(len(ATTRIBUTE_NAMES)))
    first_line: Dict[str, int] = {}
    for lineno, line in enumerate(body, start):
        if not line:
            continue
        fields = split(line)
        values = _parse_attr_values(path, lineno, fields[1:])
        _add_row(path, lineno, fields[0], values if identity else tuple(values[i] for i in order), out, first_line)
    if not path.endswith(".csv") and int(lines[0]) != len(out):
        raise UserError(f"{path}: the first line says {lines[0]} images but {len(out)} rows follow")
    return out


def read_partitions(path: str) -> Dict[str, str]:
    """file name -> train | validation | test, from list_eval_partition.txt or .csv."""
    lines = _lines(path)
    csv = path.endswith(".csv")
    out: Dict[str, str] = {}
    first_line: Dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line or (csv and lineno == 1):
            continue
        fields = line.split(",") if csv else line.split()
        if len(fields) != 2 or fields[1].strip() not in ("0", "1", "2"):
            raise UserError(f"{path} line {lineno}: expected '<file name> <0|1|2>'")
        _add_row(path, lineno, fields[0].strip(), PARTITIONS[int(fields[1])], out, first_line)
    return out


def read_rows(layout: Layout) -> List[Row]:
    """All images of the download, sorted by file name. The two list files must name the same images: a row in one
    and not the other is an error (CelebA's own files agree; a mismatch means a damaged or mixed download)."""
    attributes = read_attributes(layout.attr_path)
    partitions = read_partitions(layout.partition_path)
    for names, has, lacks in (
        (partitions, layout.partition_path, layout.attr_path),
        (attributes, layout.attr_path, layout.partition_path),
    ):
        other = attributes if names is partitions else partitions
        missing = sorted(n for n in names if n not in other)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(
                f"{lacks} has no row for {missing[0]}{more} listed in {has}; both list files must name the same images"
            )
    return [Row(name, partitions[name], attributes[name]) for name in sorted(partitions)]


def fingerprint(path: str) -> str:
    return hashlib.sha256(fileio.read_bytes(path)).hexdigest()


class ImageSource:
    """Reads image bytes by CelebA file name from a folder or a zip; picklable, so Beam can ship it to workers."""

    def __init__(self, image_dir: Optional[str] = None, image_zip: Optional[str] = None):
        self.image_dir = image_dir
        self.image_zip = image_zip
        self._zip: Optional[zipfile.ZipFile] = None
        self._prefix = ""

    @classmethod
    def for_layout(cls, layout: Layout) -> "ImageSource":
        return cls(layout.image_dir, layout.image_zip)

    def __getstate__(self):
        return {"image_dir": self.image_dir, "image_zip": self.image_zip}

    def __setstate__(self, state):
        self.__init__(**state)

    def check(self) -> None:
        """UserError, in the driver before any worker starts, when the zip cannot be opened (truncated, empty, not a
        zip): every worker would otherwise fail on it with a traceback."""
        if self.image_zip is None:
            return
        try:
            self._open_zip()
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise UserError(f"{self.image_zip} is not a readable zip ({e}); download it again") from None

    def _open_zip(self) -> zipfile.ZipFile:
        if self._zip is None:
            handle = self.image_zip if not fileio.is_remote(self.image_zip) else fileio.open_read(self.image_zip)
            self._zip = zipfile.ZipFile(handle)
            jpgs = [n for n in self._zip.namelist() if not n.endswith("/")]
            self._prefix = os.path.dirname(jpgs[0]) + "/" if jpgs and "/" in jpgs[0] else ""
        return self._zip

    def read(self, name: str) -> bytes:
        """The file's bytes; FileNotFoundError when it is listed but absent."""
        from dataset_format.transform import ImageError

        if self.image_dir is not None:
            path = fileio.join(self.image_dir, name)
            if fileio.is_remote(path) and not fileio.exists(path):
                raise FileNotFoundError(path)
            try:
                return fileio.read_regular(path)
            except ValueError as e:  # a FIFO, a device, a huge file: left out as an image that cannot be read
                raise ImageError(str(e)) from None
        archive = self._open_zip()
        try:
            entry = archive.getinfo(self._prefix + name)
        except KeyError:
            raise FileNotFoundError(f"{self.image_zip}:{self._prefix}{name}") from None
        if entry.file_size > fileio.MAX_IMAGE_BYTES:  # what the entry unpacks to (a zip bomb), before unpacking
            raise ImageError(
                f"{entry.file_size / 2**20:.0f} MB unpacked, over the limit of "
                f"{fileio.MAX_IMAGE_BYTES / 2**20:.0f} MB per image"
            )
        try:
            return archive.read(entry)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:  # one damaged entry: a dead letter
            raise ImageError(f"damaged zip entry ({e})") from None
