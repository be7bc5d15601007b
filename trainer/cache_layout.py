"""Where the feature cache keeps what, and whether an entry can be trusted; no TensorFlow needed.

    ROOT/KEY/info.json                          what the key stands for (written by the first worker to extract)
    ROOT/KEY/SPLIT/worker-I-of-N/part-NNNNN/    worker I's features of SPLIT, tf.data.Dataset.save parts
    ROOT/KEY/SPLIT/worker-I-of-N/_DONE          JSON: parts, examples and [size, sha256] of every file, written last

trainer/feature_cache.py writes and reads entries (with TensorFlow); `python -m trainer.cache` and launch.sweep ask
this module only.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Dict, Optional

from celeba_common import fileio
from dataset_format.manifest import transform_of
from trainer.config import weights_id

DONE = "_DONE"
INFO = "info.json"
KEY = re.compile(r"[0-9a-f]{16}")  # cache_key's names; anything else in the folder is not ours


def key_facts(manifest: dict, weights: str, pooling: str, policy: str, seed: int) -> dict:
    """What determines the features: the records' shards (sha256) and image size, the backbone weights (a file's
    content, or imagenet), pooling, precision policy, and the seed when the weights are random."""
    shards = [s["sha256"] for split in manifest["splits"].values() for s in split["shards"]]
    return {
        "shards_sha256": hashlib.sha256(json.dumps(shards).encode()).hexdigest(),
        "weights": weights_id(weights),
        "pooling": pooling,
        "precision": policy,
        "seed": seed if weights.lower() == "none" else None,
        "image_size": transform_of(manifest).image_size,
    }


def cache_key(facts: dict) -> str:
    """An entry's folder name: the hash of its key_facts."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def serves(entry: str, facts: dict, unknown: tuple = ()) -> bool:
    """Whether the entry holds finished features (validation, the last split extracted) made with `facts`, leaving
    out the `unknown` ones: what launch.sweep, which does not know the GPU machine's precision, can ask."""
    found = read_info(entry)
    return (
        finished(entry, "validation")
        and found is not None
        and all(found.get(name) == value for name, value in facts.items() if name not in unknown)
    )


def worker_folder(split_path: str, pipeline_id: int, pipelines: int) -> str:
    return fileio.join(split_path, f"worker-{pipeline_id}-of-{pipelines}")


def finished(entry: str, split: str) -> bool:
    """Whether some worker finished SPLIT of the entry (a quick look: no checksum is read)."""
    return bool(fileio.glob(fileio.join(entry, split, "worker-*", DONE)))


def inventory(folder: str) -> Dict[str, list]:
    """[size, sha256] of every file of a worker's saved features, by relative name: what _DONE vouches for."""
    return {name: _entry(fileio.join(folder, name)) for name in fileio.listdir(folder) if name != DONE}


def damage(folder: str) -> Optional[str]:
    """Why a worker's saved features cannot be trusted (absent, no or a damaged _DONE, a file missing, cut, changed
    or added since it was written), or None when they are intact. Reads every byte once: a flipped byte would
    otherwise surface as a DataLossError in the middle of training."""
    if not fileio.exists(fileio.join(folder, DONE)):
        return "not computed yet" if not fileio.exists(folder) else "no _DONE marker (an interrupted write)"
    try:
        done = json.loads(fileio.read_bytes(fileio.join(folder, DONE)))
    except ValueError:  # not JSON, not UTF-8
        return "its _DONE marker is damaged"
    if (
        not isinstance(done, dict)
        or not isinstance(done.get("files"), dict)
        or not isinstance(done.get("parts"), int)
        or not isinstance(done.get("examples"), int)
    ):
        return "its _DONE marker is damaged or from an older version"
    found = [name for name in fileio.listdir(folder) if name != DONE]
    if sorted(found) != sorted(done["files"]):
        return "its files are not the ones it was written with"
    if len({name.split("/")[0] for name in found}) != done["parts"]:  # each part is a folder
        return "its part count does not match _DONE"
    for name in found:
        if _entry(fileio.join(folder, name)) != done["files"][name]:
            return f"{name} changed since it was written"
    return None


def _entry(path: str) -> list:
    return [fileio.size(path), fileio.sha256_file(path)]


def read_info(entry: str) -> Optional[dict]:
    """An entry's info.json, or None when it is missing or damaged (it is then written again on next use)."""
    if not fileio.exists(fileio.join(entry, INFO)):
        return None
    try:
        facts = json.loads(fileio.read_bytes(fileio.join(entry, INFO)))
    except ValueError:  # not JSON, not UTF-8
        return None
    return facts if isinstance(facts, dict) else None
