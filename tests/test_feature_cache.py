"""The shared, content-addressed feature cache: reuse across runs, new keys for new inputs, atomic writes."""
import csv
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, assert_one_line_error, run_cli
from trainer import data, feature_cache, model as model_lib

FAST = ["--weights=none", "--epochs=1", "--head_units=8", "--noexport", "--precision=float32"]


def _train(records, model_dir, cache, *flags):
    return run_cli("-m", "trainer.main", f"--data_dir={records}", f"--model_dir={model_dir}",
                   f"--feature_cache_dir={cache}", *FAST, *flags, timeout=600)


def test_runs_share_the_cache_and_list_and_clear_it(records_dir, tmp_path):
    cache = tmp_path / "shared"
    first = _train(records_dir, tmp_path / "a", cache, "--lr=1e-3", "--batch_size=8")
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stderr.count("feature cache: computing") == 2  # train and validation
    # Another --lr, --batch_size and head: the same features, so nothing is extracted again.
    second = _train(records_dir, tmp_path / "b", cache, "--lr=3e-3", "--batch_size=16", "--head_units=16")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "feature cache: computing" not in second.stderr
    assert second.stderr.count("feature cache: reusing") == 2
    rows = list(csv.DictReader(open(tmp_path / "b" / "history.csv")))
    assert rows[0]["feature_cache"] == "1" and float(rows[0]["epoch_seconds"]) < 30
    # Other records or another weights file: another key (test_units), so the next run extracts again.
    (cache / "0123456789abcdef" / "train" / "worker-0-of-1").mkdir(parents=True)  # a second, partial entry
    (cache / "0123456789abcdef" / "train" / "worker-0-of-1" / "part").write_bytes(b"x" * 1000)
    listing = run_cli("-m", "trainer.cache", f"--feature_cache_dir={cache}")
    assert listing.returncode == 0 and "2 entries" in listing.stdout, listing.stdout
    keys = [line.split()[0] for line in listing.stdout.splitlines()[:-1]]
    assert sum("MB" in line and "train,validation" in line and "records=" in line
               for line in listing.stdout.splitlines()[:-1]) == 1
    cleared = run_cli("-m", "trainer.cache", f"--feature_cache_dir={cache}", f"--clear={keys[0]}")
    assert cleared.returncode == 0 and sorted(os.listdir(cache)) == keys[1:]
    assert_one_line_error(run_cli("-m", "trainer.cache", f"--feature_cache_dir={cache}", "--clear=nope"),
                          "--clear=nope")
    # a folder that is not a cache entry (--feature_cache_dir pointed at a folder of the user's) is never touched
    (cache / "my-photos").mkdir()
    (cache / "my-photos" / "a.jpg").write_bytes(b"jpeg")
    cleared = run_cli("-m", "trainer.cache", f"--feature_cache_dir={cache}", "--clear=all")
    assert cleared.returncode == 0 and "removed 1 entry (" in cleared.stdout, cleared.stdout
    assert sorted(os.listdir(cache)) == ["my-photos"] and (cache / "my-photos" / "a.jpg").read_bytes() == b"jpeg"


class Interrupted(Exception):
    pass


def test_an_interrupted_extraction_leaves_nothing_a_later_run_reads(records_dir, tmp_path, monkeypatch):
    """Fault injection (a test double for a kill mid-extraction): the second saved part raises."""
    info = data.load(records_dir, verify=False)
    net = model_lib.build_model(32, "none", (8,), 0.0, "flatten", seed=1)
    strategy = tf.distribute.get_strategy()
    monkeypatch.setattr(feature_cache, "PART_EXAMPLES", 40)
    real_save, calls = feature_cache._save_part, []

    def failing_save(*args):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted()
        return real_save(*args)

    cache = feature_cache.FeatureCache(strategy, net, info, str(tmp_path), {"k": 1}, batch_size=8)
    monkeypatch.setattr(feature_cache, "_save_part", failing_save)
    with pytest.raises(Interrupted):
        cache.split_path("train")
    final = os.path.join(cache.path, "train", "worker-0-of-1")
    assert not os.path.exists(final)  # only a temporary folder, never read
    assert glob.glob(final + ".tmp-*")
    monkeypatch.setattr(feature_cache, "_save_part", real_save)
    again = feature_cache.FeatureCache(strategy, net, info, str(tmp_path), {"k": 1}, batch_size=8)
    features = feature_cache.load(os.path.join(again.split_path("train"), "worker-0-of-1"))
    assert sum(1 for _ in features) == 120


def test_two_runs_starting_together_both_finish_with_the_same_features(records_dir, tmp_path):
    cache = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-m", "trainer.main", f"--data_dir={records_dir}",
                               f"--model_dir={tmp_path / name}", f"--feature_cache_dir={cache}", *FAST,
                               "--batch_size=8"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for name in ("a", "b")]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    (key,) = os.listdir(cache)
    for split, count in (("train", 120), ("validation", 20)):
        folder = cache / key / split
        assert os.listdir(folder) == ["worker-0-of-1"], os.listdir(folder)  # no temporary leftovers
        assert sum(1 for _ in feature_cache.load(str(folder / "worker-0-of-1"))) == count
    histories = [list(csv.DictReader(open(tmp_path / name / "history.csv"))) for name in ("a", "b")]
    np.testing.assert_allclose([float(r["val_loss"]) for r in histories[0]],
                               [float(r["val_loss"]) for r in histories[1]], atol=1e-6)
