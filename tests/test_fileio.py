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


def test_local_writes_are_atomic(tmp_path, monkeypatch):
    import os

    import pytest

    from trainer.metrics import read_history, write_history

    path = str(tmp_path / "history.csv")
    rows = [
        {
            "epoch": e,
            "phase": "head",
            "loss": 0.5,
            "accuracy": 0.8,
            "val_loss": 0.6,
            "val_accuracy": 0.7,
            "lr": 1e-3,
            "epoch_seconds": 1.0,
            "images_per_sec": 100.0,
            "feature_cache": 1,
        }
        for e in (1, 2)
    ]
    write_history(path, rows[:1])
    before = open(path, "rb").read()

    def crash(src, dst):  # the process dies after writing the new content, before it replaces the old
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_history(path, rows)
    monkeypatch.undo()
    assert open(path, "rb").read() == before  # the old history, whole; no temporary file left beside it
    assert os.listdir(tmp_path) == ["history.csv"]
    with open(path, "a") as f:  # a cut row (as a non-atomic writer could leave) is dropped on reading
        f.write("2,head,0.4")
    assert [r["epoch"] for r in read_history(path)] == ["1"]
