"""manifest.json and _SUCCESS: writing them, and the checks every reader of a dataset runs first."""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional

from celeba_common import fileio
from celeba_common.errors import UserError
from dataset_format import schema, tfrecord
from dataset_format.transform import Transform

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"


def write_json(path: str, obj) -> None:
    """obj as strict JSON: a NaN or infinite number (ROC AUC of a one-class split, say) is written as null, which
    every JSON parser reads, not as the NaN that strict ones refuse."""
    fileio.write_bytes(path, (json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_manifest(data_dir: str) -> dict:
    """The manifest of a finished dataset; UserError for a missing folder, no _SUCCESS or an unknown schema."""
    if not fileio.exists(data_dir):
        raise UserError(f"data folder {data_dir} does not exist; build it with python -m preprocessing.build_records")
    if not fileio.isdir(data_dir):
        raise UserError(f"data folder {data_dir} is a file, not a dataset folder")
    if not fileio.exists(fileio.join(data_dir, SUCCESS)):
        raise UserError(
            f"data folder {data_dir} has no {SUCCESS}: the records job did not finish there; "
            f"rerun python -m preprocessing.build_records --overwrite"
        )
    try:
        manifest = json.loads(fileio.read_bytes(fileio.join(data_dir, MANIFEST)))
    except (OSError, ValueError) as e:
        raise UserError(f"{fileio.join(data_dir, MANIFEST)} is unreadable: {e}") from None
    if not _well_formed(manifest):
        raise UserError(
            f"{fileio.join(data_dir, MANIFEST)} is damaged (no splits with shards, or a shard that is not "
            f"a plain file name of the folder); rebuild with python -m preprocessing.build_records "
            f"--overwrite"
        )
    if manifest.get("schema_version") != schema.SCHEMA_VERSION:
        raise UserError(
            f"{data_dir}: record schema version {manifest.get('schema_version')} is not the "
            f"supported version {schema.SCHEMA_VERSION}"
        )
    try:
        Transform.from_dict(manifest)
    except ValueError as e:
        raise UserError(
            f"{fileio.join(data_dir, MANIFEST)} is damaged (its image transform: {e}); rebuild with "
            f"python -m preprocessing.build_records --overwrite"
        ) from None
    return manifest


def transform_of(manifest: dict) -> Transform:
    """The image transform the records were made with (read_manifest has checked it)."""
    return Transform.from_dict(manifest)


def _well_formed(manifest) -> bool:
    """Splits with shards, each a plain file name in the data folder (never /dev/zero or ../x) with integer counts."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        return False
    for split in manifest["splits"].values():
        if (
            not isinstance(split, dict)
            or not isinstance(split.get("shards"), list)
            or type(split.get("num_examples")) is not int
        ):
            return False
        for shard in split["shards"]:
            name = shard.get("file") if isinstance(shard, dict) else None
            if (
                not isinstance(name, str)
                or name in ("", ".", "..")
                or "/" in name
                or "\\" in name
                or "\0" in name
                or not all(type(shard.get(k)) is int for k in ("bytes", "num_records"))
            ):
                return False
    return True


def shard_paths(data_dir: str, manifest: dict, split: str) -> List[str]:
    if split not in manifest["splits"]:
        raise UserError(f"data folder {data_dir} has no {split} split (it has {', '.join(manifest['splits'])})")
    return [fileio.join(data_dir, s["file"]) for s in manifest["splits"][split]["shards"]]


def verify_shards(
    data_dir: str, manifest: dict, splits: Optional[List[str]] = None, check_records: bool = False
) -> Dict[str, str]:
    """Checks each shard's byte size and sha256 (and, with check_records, its record count) against the manifest.

    Returns {shard file: problem} for every bad shard; empty when all are intact.
    """
    problems = {}
    for split, info in manifest["splits"].items():
        if splits is not None and split not in splits:
            continue
        for shard in info["shards"]:
            path = fileio.join(data_dir, shard["file"])
            if not fileio.exists(path):
                problems[shard["file"]] = "missing"
                continue
            size = fileio.size(path)
            if size != shard["bytes"]:
                problems[shard["file"]] = f"{size} bytes, manifest says {shard['bytes']} (truncated or altered)"
                continue
            if fileio.sha256_file(path) != shard["sha256"]:
                problems[shard["file"]] = "sha256 differs from the manifest (altered)"
                continue
            if check_records:
                count = tfrecord.count_records(path)
                if count != shard["num_records"]:
                    problems[shard["file"]] = f"{count} records, manifest says {shard['num_records']}"
    return problems


def count_problems(data_dir: str, manifest: dict) -> Dict[str, str]:
    """{shard file: problem} for every shard whose record count (walked from its headers) differs from the
    manifest's, or whose split total differs from num_examples."""
    problems = {}
    for split, info in manifest["splits"].items():
        total = 0
        for shard in info["shards"]:
            path = fileio.join(data_dir, shard["file"])
            readable = fileio.is_remote(path) or os.path.isfile(path)  # not a FIFO or a link to /dev/zero
            count = tfrecord.count_records(path) if readable and fileio.exists(path) else -1
            total += max(count, 0)
            if count != shard["num_records"]:
                problems[shard["file"]] = (
                    f"{count} records, manifest says {shard['num_records']}" if count >= 0 else "missing or cut short"
                )
        if not problems and total != info["num_examples"]:
            problems[f"{split} split"] = f"{total} records in its shards, manifest says {info['num_examples']}"
    return problems


def load_verified(data_dir: str, splits: Optional[List[str]] = None, check_hashes: bool = True) -> dict:
    """read_manifest + the record counts (headers only) + with check_hashes, each shard's size and sha256;
    UserError naming the first bad shard. What the trainer calls first."""
    manifest = read_manifest(data_dir)
    problems = verify_shards(data_dir, manifest, splits) if check_hashes else {}
    problems = problems or count_problems(data_dir, manifest)
    if problems:
        name, problem = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more bad shards)" if len(problems) > 1 else ""
        raise UserError(f"shard {fileio.join(data_dir, name)}: {problem}{more}; rebuild with --overwrite")
    return manifest


def summary(manifest: dict, output_dir: str) -> str:
    """The human-readable summary the records job prints at the end."""
    transform = transform_of(manifest)
    lines = [f"Dataset {output_dir} ({transform.image_size}x{transform.image_size} {transform.resize_mode}):"]
    total_bytes = total_shards = total = 0
    for split in schema.SPLITS:
        if split not in manifest["splits"]:
            continue
        info = manifest["splits"][split]
        size = sum(s["bytes"] for s in info["shards"])
        total_bytes, total_shards, total = (
            total_bytes + size,
            total_shards + len(info["shards"]),
            total + info["num_examples"],
        )
        lines.append(
            f"  {split:<10} {info['num_examples']:>7} images  male {info['male_share']:.1%}  "
            f"{len(info['shards'])} shards  {size / 1e6:.1f} MB"
        )
    lines.append(
        f"  left out {manifest['num_left_out']} (errors.jsonl); {total} images, {total_shards} shards, "
        f"{total_bytes / 1e6:.1f} MB in {manifest['build_seconds']:.1f} s "
        f"({manifest['images_per_sec']:.0f} images/s)"
    )
    return "\n".join(lines)
