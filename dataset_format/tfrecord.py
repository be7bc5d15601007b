"""TFRecord framing, defined once and without TensorFlow: write, read and count records of a TFRecord file.

Each record is: uint64 length (little endian), uint32 masked crc32c of the length, the data, uint32 masked crc32c
of the data (tensorflow/core/lib/io/record_writer.cc). The records job's workers write shards with this, and
inspect_records / the manifest checks read them, all without importing TensorFlow.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterator, List

import google_crc32c

from celeba_common import fileio

_MASK_DELTA = 0xA282EAD8
HEADER_BYTES, FOOTER_BYTES = 12, 4


class CorruptRecord(ValueError):
    """A record's length or data does not match its checksum, or the file ends inside a record."""


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record, framed."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def write_record(handle, data: bytes) -> None:
    handle.write(frame(data))


def iter_records(handle: BinaryIO, verify: bool = True) -> Iterator[bytes]:
    """The records of an open TFRecord file; CorruptRecord on a bad checksum or a cut record."""
    while True:
        header = handle.read(HEADER_BYTES)
        if not header:
            return
        if len(header) < HEADER_BYTES:
            raise CorruptRecord("file ends inside a record header")
        (length,) = struct.unpack("<Q", header[:8])
        if verify and struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
            raise CorruptRecord("record length checksum mismatch")
        data, footer = handle.read(length), handle.read(FOOTER_BYTES)
        if len(data) < length or len(footer) < FOOTER_BYTES:
            raise CorruptRecord("file ends inside a record")
        if verify and struct.unpack("<I", footer)[0] != masked_crc32c(data):
            raise CorruptRecord("record data checksum mismatch")
        yield data


def read_records(path: str, limit: int) -> List[bytes]:
    """The first `limit` records of a TFRecord file."""
    out: List[bytes] = []
    if limit <= 0:
        return out
    with fileio.open_read(path) as f:
        for record in iter_records(f):
            out.append(record)
            if len(out) >= limit:
                break
    return out


def count_records(path: str) -> int:
    """Counts the records of a TFRecord file by walking its length headers (no data read); -1 when it is cut."""
    count = 0
    with fileio.open_read(path) as f:
        while True:
            header = f.read(HEADER_BYTES)
            if not header:
                return count
            if len(header) < HEADER_BYTES:
                return -1
            (length,) = struct.unpack("<Q", header[:8])
            f.seek(length + FOOTER_BYTES, 1)
            count += 1
