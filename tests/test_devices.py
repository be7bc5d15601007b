"""One machine, several devices: trainer.main, trainer.evaluate and trainer.extract_features under MirroredStrategy
over 2 and 3 logical CPUs (--num_cpu_devices), each against the same command on one device.

The maths says the figures must agree: one input pipeline hands each replica its share of the same global batch,
the loss is averaged over the global batch and the gradients summed over the replicas, and evaluation counts every
example once. So float32 runs without dropout agree to rounding. The batch of 12 leaves uneven per-replica batches in
the 20-image validation and test splits: [6, 6], [6, 2] on 2 devices and [4, 4, 4], [4, 4, 0] on 3 (a replica
with no example at all).
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, assert_one_line_error, run_cli, wait_for_checkpoint

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not

EXACT = ["--weights=none", "--batch_size=12", "--head_units=8", "--dropout=0", "--precision=float32", "--seed=3"]
TOLERANCE = 1e-4


def _train(records, model_dir, devices, *flags, cache_dir=None):
    cache_dir = cache_dir or f"{model_dir}-features"  # its own cache: every run extracts on its own devices
    return run_cli(
        "-m",
        "trainer.main",
        f"--data_dir={records}",
        f"--model_dir={model_dir}",
        f"--num_cpu_devices={devices}",
        f"--feature_cache_dir={cache_dir}",
        *EXACT,
        *flags,
        timeout=600,
    )


def _history(model_dir):
    with open(os.path.join(model_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def _metrics(model_dir, suffix=""):
    with open(os.path.join(model_dir, f"metrics{suffix}.json")) as f:
        return json.load(f)


def _assert_same_figures(a_dir, b_dir, rows=None):
    a, b = _history(a_dir), _history(b_dir)
    assert len(a) == len(b)
    for row_a, row_b in list(zip(a, b))[rows or slice(None)]:
        for key in ("val_loss", "val_accuracy"):
            assert abs(float(row_a[key]) - float(row_b[key])) <= TOLERANCE, (key, row_a, row_b)
    ma, mb = _metrics(a_dir), _metrics(b_dir)
    for key in ("test_loss", "test_accuracy", "roc_auc", "num_examples"):
        assert abs(ma[key] - mb[key]) <= TOLERANCE, (key, ma[key], mb[key])
    assert ma["confusion_matrix"] == mb["confusion_matrix"]


def _features(cache_dir, split):
    """Every cached feature row of a split, in order, from the one cache key under cache_dir."""
    import tensorflow as tf

    from trainer import feature_cache

    (key,) = [k for k in os.listdir(cache_dir) if not k.startswith(".")]
    folder = os.path.join(cache_dir, key, split, "worker-0-of-1")
    features, labels = zip(*feature_cache.load(folder).as_numpy_iterator())
    del tf
    return np.stack(features), np.stack(labels)


def test_the_default_path_on_3_devices_equals_one_device(records_dir, tmp_path):
    """Feature extraction, the head on resident features, a fine-tune epoch streaming images, validation, test,
    export; --steps_per_loop auto and N. Then trainer.evaluate and trainer.extract_features on 3 devices."""
    flags = ["--epochs=2", "--fine_tune_epochs=1", "--fine_tune_from=block5_conv1"]
    runs = {}
    for devices, loop in ((1, "auto"), (3, "4")):  # 2 devices: the streaming test below
        model_dir = str(tmp_path / f"d{devices}")
        proc = _train(records_dir, model_dir, devices, *flags, f"--steps_per_loop={loop}")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        replicas = "1 replica in sync" if devices == 1 else f"MirroredStrategy, {devices} replicas in sync"
        assert replicas in proc.stdout + proc.stderr
        assert "feature cache: train split: 120 images in" in proc.stdout + proc.stderr  # extraction's progress
        assert _metrics(model_dir)["replicas"] == devices
        assert os.path.exists(os.path.join(model_dir, "export", "saved_model.pb"))
        runs[devices] = model_dir
    _assert_same_figures(runs[1], runs[3])
    assert all(
        abs(float(a["loss"]) - float(b["loss"])) <= TOLERANCE for a, b in zip(_history(runs[1]), _history(runs[3]))
    )
    np.testing.assert_allclose(
        _features(f"{runs[1]}-features", "validation")[0], _features(f"{runs[3]}-features", "validation")[0], atol=1e-5
    )

    # trainer.evaluate of the one-device model on 3 devices, the last step leaving one replica empty
    proc = run_cli("-m", "trainer.evaluate", f"--model_dir={runs[1]}", "--num_cpu_devices=3", "--batch_size=12")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(20 images from" in proc.stdout and "; 3 replicas)" in proc.stdout
    trained, again = _metrics(runs[1]), _metrics(runs[1], "_test")
    for key in ("test_loss", "test_accuracy", "roc_auc"):
        assert abs(trained[key] - again[key]) <= TOLERANCE, key
    assert trained["confusion_matrix"] == again["confusion_matrix"]

    # trainer.extract_features on 3 devices: the same features as the one-device run extracted
    cache = str(tmp_path / "extracted")
    proc = run_cli(
        "-m",
        "trainer.extract_features",
        f"--data_dir={records_dir}",
        "--num_cpu_devices=3",
        f"--feature_cache_dir={cache}",
        *EXACT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("train", "validation"):
        mine, theirs = _features(cache, split), _features(f"{runs[1]}-features", split)
        np.testing.assert_allclose(mine[0], theirs[0], atol=1e-5)
        np.testing.assert_array_equal(mine[1], theirs[1])

    # a finished run says so and stops; --reevaluate evaluates and exports again
    before = os.path.getmtime(os.path.join(runs[3], "metrics.json"))
    proc = _train(records_dir, runs[3], 3, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resumed after epoch 3" in proc.stdout and "holds a finished run (3 epochs" in proc.stdout
    assert "--reevaluate" in proc.stdout and "ROC AUC" not in proc.stdout  # no evaluation ran
    assert os.path.getmtime(os.path.join(runs[3], "metrics.json")) == before
    proc = _train(records_dir, runs[3], 3, *flags, "--reevaluate")
    assert proc.returncode == 0 and "test accuracy" in proc.stdout, proc.stderr[-3000:]
    assert os.path.getmtime(os.path.join(runs[3], "metrics.json")) > before


def test_streaming_on_2_devices_stopped_by_sigterm_resumes_to_one_devices_figures(records_dir, tmp_path):
    """Streaming images with --cache (no feature cache), a checkpoint every 5 steps; SIGTERM mid-epoch, the rerun
    continues the same epoch at the same step, and the run ends with the figures of an unbroken one-device run."""
    flags = [
        "--feature_cache=off",
        "--cache",
        "--epochs=2",
        "--steps_per_epoch=20",
        "--checkpoint_steps=5",
        "--steps_per_loop=1",
        "--noexport",
    ]
    reference = str(tmp_path / "one")
    proc = _train(records_dir, reference, 1, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]

    model_dir = str(tmp_path / "two")
    cmd = [
        sys.executable,
        "-m",
        "trainer.main",
        f"--data_dir={records_dir}",
        f"--model_dir={model_dir}",
        "--num_cpu_devices=2",
        *EXACT,
        *flags,
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    running = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert wait_for_checkpoint(model_dir, running), running.communicate()[1][-3000:]
    running.send_signal(signal.SIGTERM)
    out, err = running.communicate(timeout=120)
    assert running.returncode == 143, err[-3000:]
    stopped = re.search(r"stopped by SIGTERM \(to this worker\) at epoch (\d+), step (\d+)", err)
    assert stopped, err[-3000:]
    epoch, step = int(stopped.group(1)), int(stopped.group(2))
    assert epoch in (1, 2) and 0 < step <= 20

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resumed at epoch {epoch}, step {step} " in again.stdout, again.stdout  # the stop's own words
    assert "MirroredStrategy, 2 replicas in sync" in again.stdout + again.stderr
    # the epoch cut by the stop has a partial training loss; validation after it and everything later agree
    _assert_same_figures(reference, model_dir)


def test_num_cpu_devices_is_refused_in_a_cluster(records_dir, tmp_path):
    proc = run_cli(
        "-m",
        "launch.local_cluster",
        "--num_workers=2",
        "--",
        f"--data_dir={records_dir}",
        f"--model_dir={tmp_path / 'm'}",
        "--num_cpu_devices=2",
        "--weights=none",
    )
    assert_one_line_error(proc, "--num_cpu_devices=2", "one CPU device")
    tf_config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    proc = run_cli(
        "-m",
        "trainer.main",
        f"--data_dir={records_dir}",
        f"--model_dir={tmp_path / 'm'}",
        "--num_cpu_devices=2",
        "--weights=none",
        env={"TF_CONFIG": json.dumps(tf_config)},
    )
    assert_one_line_error(proc, "--num_cpu_devices=2", "cluster of 2 tasks")


def test_votes_and_barriers_on_n_devices(devices=3):
    """Votes count each worker once whatever its replica count (MirroredStrategy returned the plain input before)."""
    code = (
        f"from trainer import distribute; distribute.split_cpu({devices}); "
        "s = distribute.make_strategy('mirrored'); v = distribute.Votes(s); v.barrier(); "
        "print(s.num_replicas_in_sync, v.mean(2.5), v.any_worker(True), v.any_worker(False))"
    )
    proc = run_cli("-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(devices), "2.5", "True", "False"]
