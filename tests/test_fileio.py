"""fileio on a remote-style path: TensorFlow's in-memory ram:// filesystem stands in for gs://."""
import hashlib

import tensorflow as tf  # noqa: F401  (loaded: remote paths go through tf.io.gfile)

from celeba_common import fileio


def test_remote_paths_round_trip():
    base = "ram://fileio_test/data"
    fileio.write_bytes(fileio.join(base, "a.txt"), b"hello")
    fileio.write_bytes(fileio.join(base, "sub", "b.bin"), b"x" * 10)
    assert fileio.exists(fileio.join(base, "a.txt")) and fileio.isdir(base)
    assert fileio.listdir(base) == ["a.txt", "sub/b.bin"]
    assert fileio.read_bytes(fileio.join(base, "a.txt")) == b"hello"
    assert fileio.size(fileio.join(base, "sub", "b.bin")) == 10
    assert fileio.sha256_file(fileio.join(base, "a.txt")) == hashlib.sha256(b"hello").hexdigest()
    fileio.move_tree(base, "ram://fileio_test/moved")
    assert not fileio.exists(fileio.join(base, "a.txt"))
    assert fileio.listdir("ram://fileio_test/moved") == ["a.txt", "sub/b.bin"]
    fileio.remove("ram://fileio_test/moved/a.txt")
    fileio.delete_tree("ram://fileio_test/moved")
    assert not fileio.exists("ram://fileio_test/moved/sub/b.bin")


def test_local_paths(tmp_path):
    path = str(tmp_path / "x" / "y.bin")
    fileio.write_bytes(path, b"abc")
    assert fileio.listdir(str(tmp_path)) == ["x/y.bin"] and fileio.size(path) == 3
