"""The record bytes are a contract: the same flags give the same shards as the pinned build (tests/golden)."""

import hashlib
import json
import os

import pytest

from conftest import ROOT, build

GOLDEN = json.load(open(os.path.join(ROOT, "tests", "golden", "records.json")))


def _tree_sha256(path):
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def test_synthetic_download_is_the_pinned_one(celeba_txt):
    assert _tree_sha256(celeba_txt) == GOLDEN["synthetic_sha256"]


@pytest.mark.parametrize("name", sorted(GOLDEN["builds"]))
def test_shards_are_byte_identical_to_the_pinned_build(celeba_txt, tmp_path, name):
    pinned = GOLDEN["builds"][name]
    manifest = build(celeba_txt, str(tmp_path / "out"), **pinned["config"])
    got = {split: [s["sha256"] for s in info["shards"]] for split, info in manifest["splits"].items()}
    assert got == pinned["shards"]
