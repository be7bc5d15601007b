import hashlib

import pytest

from celeba_common.errors import UserError
from dataset_format.schema import ATTRIBUTE_NAMES
from preprocessing import splits
from preprocessing.celeba import Row

MALE = ATTRIBUTE_NAMES.index("Male")


def _rows(n=1000):
    out = []
    for i in range(n):
        attrs = [-1] * len(ATTRIBUTE_NAMES)
        attrs[MALE] = 1 if i % 3 == 0 else -1
        partition = "train" if i < 800 else ("validation" if i < 900 else "test")
        out.append(Row(f"{i + 1:06d}.jpg", partition, tuple(attrs)))
    return out


def _wanted(groups):
    return {(g.split, g.label): [r.name for r in g.candidates[: g.target]] for g in groups}


def test_parse_split_sizes():
    assert splits.parse_split_sizes("24000,3000,3000") == {"train": 24000, "validation": 3000, "test": 3000}
    assert splits.parse_split_sizes("all") is None
    for bad in ("1,2", "a,b,c", "-1,2,3", "0,0,0", ""):
        with pytest.raises(UserError, match="--split_sizes"):
            splits.parse_split_sizes(bad)


def test_each_split_drawn_only_from_its_partition():
    rows = _rows()
    partition = {r.name: r.partition for r in rows}
    for g in splits.select_candidates(rows, {"train": 100, "validation": 20, "test": 20}, seed=1):
        assert all(partition[r.name] == g.split for r in g.candidates)
        assert len(g.candidates) == g.target + splits.spare_count(g.target)


def test_selection_is_stable_and_seeded():
    rows = _rows()
    sizes = {"train": 100, "validation": 20, "test": 20}
    a = _wanted(splits.select_candidates(rows, sizes, seed=1))
    assert a == _wanted(splits.select_candidates(list(reversed(rows)), sizes, seed=1))  # input order irrelevant
    b = _wanted(splits.select_candidates(rows, sizes, seed=2))
    assert a != b
    # the order is the seeded sha256 ranking (never Python's salted hash()), best rank first
    train_names = [r.name for r in rows if r.partition == "train"]
    assert a[("train", None)] == sorted(train_names, key=lambda n: splits.rank_key(n, 1))[:100]
    assert splits.rank_key("000001.jpg", 1) == hashlib.sha256(b"1/000001.jpg").digest()
    assert splits.rank_key("000001.jpg", 1) != splits.rank_key("000001.jpg", 2)


def test_growing_a_split_keeps_the_smaller_selection():
    rows = _rows()
    small = _wanted(splits.select_candidates(rows, {"train": 50, "validation": 5, "test": 5}, seed=3))
    big = _wanted(splits.select_candidates(rows, {"train": 100, "validation": 5, "test": 5}, seed=3))
    assert big[("train", None)][:50] == small[("train", None)]


def test_too_large_split_names_partition_and_count():
    with pytest.raises(UserError, match="split validation asks for 101 images.*lists only 100"):
        splits.select_candidates(_rows(), {"train": 10, "validation": 101, "test": 10}, seed=1)


def test_all_takes_every_image():
    groups = splits.select_candidates(_rows(), None, seed=1)
    assert [(g.split, g.target, len(g.candidates)) for g in groups] == [
        ("train", None, 800),
        ("validation", None, 100),
        ("test", None, 100),
    ]


def test_balance_draws_equal_halves():
    groups = splits.select_candidates(_rows(), {"train": 101, "validation": 20, "test": 20}, seed=1, balance=True)
    targets = {(g.split, g.label): g.target for g in groups}
    assert targets[("train", 0)] + targets[("train", 1)] == 101
    for g in groups:
        assert all(r.label == g.label for r in g.candidates)
    with pytest.raises(UserError, match="male images"):
        splits.select_candidates(_rows(), {"train": 600, "validation": 2, "test": 2}, seed=1, balance=True)
