"""Path helpers that work for local folders and gs:// (or any Beam filesystem) alike."""
from __future__ import annotations

import hashlib
import os
import posixpath
from typing import List


def is_remote(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def exists(path: str) -> bool:
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.exists(path)
    return os.path.exists(path)


def isdir(path: str) -> bool:
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        prefix = path.rstrip("/") + "/"
        return bool(FileSystems.match([prefix + "*"], limits=[1])[0].metadata_list)  # one object is enough
    return os.path.isdir(path)


def listdir(path: str) -> List[str]:
    """Names (not paths) directly or indirectly under `path`, relative to it."""
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        prefix = path.rstrip("/") + "/"
        matches = FileSystems.match([prefix + "**"])[0].metadata_list
        return sorted(m.path[len(prefix):] for m in matches)
    out = []
    for root, _, files in os.walk(path):
        for f in files:
            out.append(os.path.relpath(os.path.join(root, f), path))
    return sorted(out)


def open_read(path: str):
    if is_remote(path):
        from apache_beam.io.filesystems import CompressionTypes, FileSystems

        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return open(path, "rb")


def open_write(path: str):
    if is_remote(path):
        from apache_beam.io.filesystems import CompressionTypes, FileSystems

        return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return open(path, "wb")


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    with open_write(path) as f:
        f.write(data)


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open_read(path) as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def size(path: str) -> int:
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    return os.path.getsize(path)


def delete_tree(path: str) -> None:
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        names = listdir(path)
        if names:
            FileSystems.delete([join(path, n) for n in names])
        return
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def move_tree(src: str, dst: str) -> None:
    """Moves the folder src to dst (dst must not exist). Atomic for local folders."""
    if is_remote(src):
        from apache_beam.io.filesystems import FileSystems

        names = listdir(src)
        FileSystems.rename([join(src, n) for n in names], [join(dst, n) for n in names])
        return
    os.replace(src, dst)
