"""Shared fixtures: small synthetic CelebA downloads in CelebA's real file formats, and built datasets."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared feature cache: never the user's ~/.cache. Session fixtures use this folder; each test gets its own
# (the autouse fixture below), so no test reuses features another one extracted unless it says so.
os.environ["CELEBA_FEATURE_CACHE"] = tempfile.mkdtemp(prefix="celeba-feature-cache-")
atexit.register(shutil.rmtree, os.environ["CELEBA_FEATURE_CACHE"], True)


@pytest.fixture(autouse=True)
def own_feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CELEBA_FEATURE_CACHE", str(tmp_path / "feature_cache"))


@pytest.fixture(scope="session")
def celeba_txt(tmp_path_factory):
    """A 300-image synthetic download in the original txt layout (read-only for tests: copy before changing)."""
    from preprocessing.synthetic_celeba import generate

    path = str(tmp_path_factory.mktemp("celeba") / "txt")
    generate(path, 300, seed=1, layout="txt", processes=1)
    return path


@pytest.fixture
def celeba_copy(celeba_txt, tmp_path):
    """A private copy of celeba_txt that a test may damage."""
    path = str(tmp_path / "celeba")
    shutil.copytree(celeba_txt, path)
    return path


SMALL = dict(split_sizes="120,20,20", image_size=32, num_shards=2)  # the tests' records: 160 images at 32 px
SMALL_RECORDS = [f"--{name}={value}" for name, value in SMALL.items()]  # the same, as build_records flags


def build(celeba_dir: str, output_dir: str, **overrides):
    """Runs the records job in-process with small defaults; returns the manifest."""
    from preprocessing.pipeline import Config, run

    config = dict(celeba_dir=celeba_dir, output_dir=output_dir, **SMALL)
    config.update(overrides)
    beam_args = config.pop("beam_args", ["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    return run(Config(**config), beam_args)


@pytest.fixture(scope="session")
def records_dir(celeba_txt, tmp_path_factory):
    """A built 32 px dataset (120/20/20) of celeba_txt."""
    out = str(tmp_path_factory.mktemp("records") / "celeba")
    build(celeba_txt, out)
    return out


def run_cli(*args, env=None, timeout=300):
    """Runs `python -m ...` like a user would; returns the CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def assert_one_line_error(proc, *needles):
    """Non-zero exit, no traceback, and an `error:` line on stderr naming each needle."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="session")
def learn_records(tmp_path_factory):
    """A 32 px dataset big enough to learn from: 800/100/100 images of a 1200-image synthetic download."""
    from preprocessing.synthetic_celeba import generate

    base = tmp_path_factory.mktemp("learn")
    generate(str(base / "celeba"), 1200, seed=3, layout="txt", processes=2)
    out = str(base / "records")
    build(str(base / "celeba"), out, split_sizes="800,100,100", num_shards=2)
    return out


TRAIN_ARGS = ["--weights=none", "--batch_size=32", "--lr=2e-3", "--head_units=64"]


@pytest.fixture(scope="session")
def trained_run(learn_records, tmp_path_factory):
    """A finished trainer.main run (CLI, feature cache on) on learn_records: (model_dir, CompletedProcess).

    60 epochs (0.1 s each on cached features): on random VGG weights the head needs them to clear the accuracy bar
    in float32 (CPUs without bf16) as well as in mixed_bfloat16; 25 reached 0.73 in float32.
    """
    model_dir = str(tmp_path_factory.mktemp("run") / "model")
    proc = run_cli(
        "-m",
        "trainer.main",
        f"--data_dir={learn_records}",
        f"--model_dir={model_dir}",
        "--epochs=60",
        *TRAIN_ARGS,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return model_dir, proc


def wait_for_checkpoint(model_dir: str, proc, timeout: float = 240) -> bool:
    """Waits until a trainer (`proc`, running) has written its first checkpoint into model_dir; False if it ended or
    timed out first."""
    import time

    index = os.path.join(model_dir, "checkpoints", "checkpoint")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(index):
            return True
        time.sleep(0.05)
    return False


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc, what: str, timeout: float = 60) -> None:
    """Waits until `proc` (a server being started) accepts connections on 127.0.0.1:port."""
    import socket
    import time

    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None and time.time() < deadline, f"{what} did not start"
            time.sleep(0.1)
