"""The shared, content-addressed feature cache: reuse across runs, new keys for new inputs, atomic writes."""

import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, assert_one_line_error, run_cli
from trainer import data, feature_cache, model as model_lib

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not

FAST = ["--weights=none", "--epochs=1", "--head_units=8", "--noexport", "--precision=float32"]


def _train(records, model_dir, cache, *flags):
    return run_cli(
        "-m",
        "trainer.main",
        f"--data_dir={records}",
        f"--model_dir={model_dir}",
        f"--feature_cache_dir={cache}",
        *FAST,
        *flags,
        timeout=600,
    )


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
    assert (
        sum(
            "MB" in line and "train,validation" in line and "records=" in line
            for line in listing.stdout.splitlines()[:-1]
        )
        == 1
    )
    cleared = run_cli("-m", "trainer.cache", f"--feature_cache_dir={cache}", f"--clear={keys[0]}")
    assert cleared.returncode == 0 and sorted(os.listdir(cache)) == keys[1:]
    assert_one_line_error(
        run_cli("-m", "trainer.cache", f"--feature_cache_dir={cache}", "--clear=nope"), "--clear=nope"
    )
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
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trainer.main",
                f"--data_dir={records_dir}",
                f"--model_dir={tmp_path / name}",
                f"--feature_cache_dir={cache}",
                *FAST,
                "--batch_size=8",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    (key,) = os.listdir(cache)
    for split, count in (("train", 120), ("validation", 20)):
        folder = cache / key / split
        assert os.listdir(folder) == ["worker-0-of-1"], os.listdir(folder)  # no temporary leftovers
        assert sum(1 for _ in feature_cache.load(str(folder / "worker-0-of-1"))) == count
    histories = [list(csv.DictReader(open(tmp_path / name / "history.csv"))) for name in ("a", "b")]
    np.testing.assert_allclose(
        [float(r["val_loss"]) for r in histories[0]], [float(r["val_loss"]) for r in histories[1]], atol=1e-6
    )


def _largest_file(folder):
    files = [os.path.join(root, f) for root, _, names in os.walk(folder) for f in names if f != "_DONE"]
    return max(files, key=os.path.getsize)


def _flip(folder):
    path = _largest_file(folder)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _cut(folder):
    path = _largest_file(folder)
    open(path, "r+b").truncate(os.path.getsize(path) // 3)


def _edit_done(change):
    def damage(folder):
        done = json.load(open(os.path.join(folder, "_DONE")))
        text = change(done)
        open(os.path.join(folder, "_DONE"), "w").write(text if isinstance(text, str) else json.dumps(done))

    return damage


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_flip, "changed since it was written"),
        (_cut, "changed since it was written"),
        (lambda folder: shutil.rmtree(os.path.join(folder, "part-00001")), "not the ones it was written with"),
        (_edit_done(lambda done: '{"parts": 3,'), "_DONE marker is damaged"),
        (_edit_done(lambda done: done.update(parts=2)), "part count does not match"),
        (_edit_done(lambda done: done.pop("files")), "older version"),
        (lambda folder: os.remove(os.path.join(folder, "_DONE")), "no _DONE marker"),
    ],
)
def test_a_damaged_entry_is_computed_again_not_trusted(records_dir, tmp_path, monkeypatch, damage, reason):
    """Each damage is seen before any example is read (a flipped byte would otherwise be a DataLossError mid-run);
    the entry is computed again and the next run's features equal the first's."""
    from trainer import cache_layout

    info = data.load(records_dir, verify=False)
    net = model_lib.build_model(32, "none", (8,), 0.0, "flatten", seed=1)
    strategy = tf.distribute.get_strategy()
    monkeypatch.setattr(feature_cache, "PART_EXAMPLES", 8)  # 20 test examples: 3 parts

    def features():
        cache = feature_cache.FeatureCache(strategy, net, info, str(tmp_path), {"k": 1}, batch_size=8)
        folder = os.path.join(cache.split_path("test"), "worker-0-of-1")
        return folder, np.stack([f for f, _ in feature_cache.load(folder).as_numpy_iterator()])

    folder, first = features()
    assert sorted(os.listdir(folder)) == ["_DONE", "part-00000", "part-00001", "part-00002"]
    done_written = os.path.getmtime(os.path.join(folder, "_DONE"))
    assert features()[0] == folder and os.path.getmtime(os.path.join(folder, "_DONE")) == done_written  # reused
    damage(folder)
    assert reason in cache_layout.damage(folder)
    again = features()[1]
    assert cache_layout.damage(folder) is None
    np.testing.assert_array_equal(again, first)


def test_a_damaged_info_json_is_listed_cleared_and_rewritten(records_dir, tmp_path):
    cache = tmp_path / "shared"
    assert _train(records_dir, tmp_path / "a", cache, "--batch_size=8").returncode == 0
    (key,) = os.listdir(cache)
    (cache / key / "info.json").write_bytes(b"\xff{ not json")
    listing = run_cli("-m", "trainer.cache", f"--feature_cache_dir={cache}")
    assert listing.returncode == 0 and listing.stdout.startswith(key) and "1 entry" in listing.stdout, listing
    again = _train(records_dir, tmp_path / "b", cache, "--batch_size=8")
    assert again.returncode == 0 and "feature cache: computing" not in again.stderr, again.stderr[-2000:]
    assert json.load(open(cache / key / "info.json"))["records"] == records_dir  # rewritten by the run that used it
    (cache / key / "info.json").write_text("[1, 2]")
    cleared = run_cli("-m", "trainer.cache", f"--feature_cache_dir={cache}", "--clear=all")
    assert cleared.returncode == 0 and "removed 1 entry" in cleared.stdout and os.listdir(cache) == [], cleared
