"""Path helpers that work for local folders and gs:// (or any remote filesystem) alike.

Remote paths go through tf.io.gfile in processes that already run TensorFlow (the trainer), and through Beam's
FileSystems elsewhere (the records job's workers, which never import TensorFlow).
"""

from __future__ import annotations

import glob as glob_lib
import hashlib
import os
import posixpath
import shutil
import socket
import stat
import sys
import threading
from typing import List, Optional, Sequence
from urllib.parse import urlparse

from celeba_common.errors import UserError


def is_remote(path: str) -> bool:
    return "://" in path


def _gfile():
    """tf.io.gfile when TensorFlow is loaded in this process, else None."""
    tf = sys.modules.get("tensorflow")
    return getattr(getattr(tf, "io", None), "gfile", None) if tf is not None else None


def _beam():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def _beam_objects_under(path: str, limit: Optional[int] = None) -> list:
    """The objects whose names start with path/ (an object store has no folders, only such prefixes)."""
    prefix = path.rstrip("/") + "/"
    return _beam().match([prefix + "**"], limits=[limit] if limit else None)[0].metadata_list


def exists(path: str) -> bool:
    """A file, or a folder (on gs://: any object under the prefix)."""
    if not is_remote(path):
        return os.path.exists(path)
    gfile = _gfile()
    if gfile:
        return gfile.exists(path)
    return _beam().exists(path) or bool(_beam_objects_under(path, limit=1))


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    gfile = _gfile()
    if gfile:
        return gfile.isdir(path)
    return bool(_beam_objects_under(path, limit=1))  # one object is enough


def listdir(path: str) -> List[str]:
    """Names of the files under `path` (recursively), relative to it."""
    if not is_remote(path):
        out = []
        for root, _, files in os.walk(path):
            out.extend(os.path.relpath(os.path.join(root, f), path) for f in files)
        return sorted(out)
    prefix = path.rstrip("/") + "/"
    gfile = _gfile()
    if gfile:
        if not gfile.isdir(path):
            return []
        out = []
        for root, _, files in gfile.walk(path):
            rel = root.rstrip("/")[len(prefix.rstrip("/")) :].lstrip("/")
            out.extend(posixpath.join(rel, f) if rel else f for f in files)
        return sorted(out)
    return sorted(m.path[len(prefix) :] for m in _beam_objects_under(path))


def open_read(path: str):
    if not is_remote(path):
        return open(path, "rb")
    gfile = _gfile()
    if gfile:
        return gfile.GFile(path, "rb")
    from apache_beam.io.filesystems import CompressionTypes

    return _beam().open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def open_write(path: str):
    if not is_remote(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return open(path, "wb")
    gfile = _gfile()
    if gfile:
        gfile.makedirs(posixpath.dirname(path))
        if gfile.exists(path):  # some filesystems (ram://) append on "wb" instead of truncating
            gfile.remove(path)
        return gfile.GFile(path, "wb")
    from apache_beam.io.filesystems import CompressionTypes

    return _beam().create(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


MAX_IMAGE_BYTES = 64 << 20  # one image file; CelebA's are about 10 KB, a large camera JPEG 20 MB


def read_regular(path: str, limit: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; ValueError saying what it is otherwise. A FIFO or a
    device (a symlink to /dev/zero, say) would block or never end, and an 8 GB file would fill the memory."""
    if is_remote(path):
        length = size(path)
    else:
        status = os.stat(path)  # follows symlinks: what is read is what counts
        if not stat.S_ISREG(status.st_mode):
            raise ValueError("not a regular file (a FIFO, device or socket)")
        length = status.st_size
    if length > limit:
        raise ValueError(f"{length / 2**20:.0f} MB, over the limit of {limit / 2**20:.0f} MB per image")
    return read_bytes(path)


def write_bytes(path: str, data: bytes) -> None:
    """Writes the whole file atomically: readers see the old content or the new, never a cut one. Locally through a
    temporary file renamed over the target; on gs:// an object upload is atomic by itself."""
    if is_remote(path):
        with open_write(path) as f:
            f.write(data)
        return
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(temp, "wb") as f:
            f.write(data)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


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
    if not is_remote(path):
        return os.path.getsize(path)
    gfile = _gfile()
    if gfile:
        return gfile.stat(path).length
    return _beam().match([path])[0].metadata_list[0].size_in_bytes


def remove(path: str) -> None:
    """Deletes one file."""
    if not is_remote(path):
        os.remove(path)
        return
    gfile = _gfile()
    gfile.remove(path) if gfile else _beam().delete([path])


def delete_tree(path: str) -> None:
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    gfile = _gfile()
    if gfile:
        if gfile.exists(path):
            gfile.rmtree(path)
        return
    names = listdir(path)
    if names:
        _beam().delete([join(path, n) for n in names])


def glob(pattern: str) -> List[str]:
    """Paths matching a glob pattern (`*` stays within one path segment)."""
    if not is_remote(pattern):
        return sorted(glob_lib.glob(pattern))
    gfile = _gfile()
    if gfile:
        return sorted(gfile.glob(pattern))
    return sorted(m.path for m in _beam().match([pattern])[0].metadata_list)


def move_tree(src: str, dst: str) -> None:
    """Moves the folder src to dst (dst must not exist). Atomic for local folders; file by file elsewhere."""
    if not is_remote(src):
        os.replace(src, dst)
        return
    names = listdir(src)
    gfile = _gfile()
    if gfile:
        for name in names:
            gfile.makedirs(posixpath.dirname(join(dst, name)))
            gfile.rename(join(src, name), join(dst, name))
        gfile.rmtree(src)
        return
    _beam().rename([join(src, n) for n in names], [join(dst, n) for n in names])


GCS_HOST = "storage.googleapis.com"
GCS_ANSWER_SECONDS = 10.0


def check_gcs(
    paths: Sequence[Optional[str]],
    writes: Sequence[Optional[str]] = (),
    seconds: float = GCS_ANSWER_SECONDS,
    tensorflow: Optional[bool] = None,
) -> None:
    """UserError within about `seconds` when a gs:// path is given and Cloud Storage does not answer (directly, or
    through $HTTPS_PROXY as both clients go), or when a gs:// path is to be written and no credentials are found.
    Without it each client retries before its own traceback: Beam's for 120 s, TensorFlow's 10 times, over 3 min.
    `tensorflow`: whether TensorFlow's client will do the I/O (None: whether it is loaded now), so that a process
    can ask before TensorFlow's seconds of start-up."""
    remote = [p for p in paths if p and p.startswith("gs://")]
    if not remote:
        return
    tensorflow = bool(_gfile()) if tensorflow is None else tensorflow
    reason, where = _unanswered(seconds, tensorflow)
    if reason:
        raise UserError(
            f"cannot reach Cloud Storage for {remote[0]}: {where}: {reason}; check the network"
            f"{' and the proxy' if 'proxy' in where else ''}"
        )
    written = [p for p in writes if p and p.startswith("gs://")]
    if written and not _testing_credentials(tensorflow):
        try:
            import google.auth
            from google.auth.exceptions import GoogleAuthError
        except ImportError:  # the client brings its own (TensorFlow's); it reports the missing credentials itself
            return
        try:
            google.auth.default()
        except (GoogleAuthError, ValueError) as e:
            found = "none found" if "not found" in str(e) else " ".join(str(e).split()).rstrip(".")
            raise UserError(
                f"no Google Cloud credentials to write {written[0]} ({found}): run `gcloud auth "
                f"application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
            ) from None


def _testing_credentials(tensorflow: bool) -> bool:
    """An emulator (Beam's client, anonymous) or TensorFlow's test token: what the tests write gs:// with."""
    return bool(os.environ.get("STORAGE_EMULATOR_HOST") and not tensorflow) or bool(
        os.environ.get("GOOGLE_AUTH_TOKEN_FOR_TESTING")
    )


def _url(text: str):
    return urlparse(text if "://" in text else f"http://{text}")


def https_proxy():
    """$HTTPS_PROXY (or $https_proxy) parsed, as both storage clients and TFDS's downloads go through it; or None."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    return _url(proxy) if proxy else None


def unanswered(host: str, port: int, seconds: float, proxy=None) -> Optional[str]:
    """Why host:port does not accept a connection within `seconds` (through `proxy`, an https_proxy() URL, with a
    CONNECT), or None when it does. The question runs in a thread, so that a resolver or a proxy that never answers
    costs `seconds`, not its own timeouts."""
    outcome: dict = {}

    def ask() -> None:
        try:
            if proxy is None:
                socket.create_connection((host, port), timeout=seconds).close()
                return
            with socket.create_connection((proxy.hostname, proxy.port or 80), timeout=seconds) as s:
                s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
                status = s.recv(1024).split(b"\r\n")[0].decode(errors="replace")
                if status.split()[1:2] != ["200"]:
                    outcome["reason"] = f"the proxy answered {status!r}"
        except OSError as e:
            outcome["reason"] = str(e.strerror or e) if not isinstance(e, socket.timeout) else "no answer"

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(seconds)
    return f"no answer in {seconds:.0f} s" if thread.is_alive() else outcome.get("reason")


def _unanswered(seconds: float, tensorflow: bool):
    """(why Cloud Storage does not answer, or None; where it was asked): the emulator that Beam's client honours,
    else storage.googleapis.com, through the proxy when one is set."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST") if not tensorflow else None
    if emulator:
        target = _url(emulator)
        return unanswered(target.hostname, target.port or 80, seconds), f"the emulator {target.hostname}:{target.port}"
    proxy = https_proxy()
    where = f"{GCS_HOST}:443" + (f" through the proxy {proxy.hostname}:{proxy.port}" if proxy else "")
    return unanswered(GCS_HOST, 443, seconds, proxy), where
