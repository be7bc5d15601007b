"""The records job's Beam graph: what flows through it and its transforms, as one composite (BuildRecords).

    candidates (ranked, chunked) ─► TransformChunks: read + decode + crop/resize + JPEG + Example, appended to a
      temporary chunk file; a small (group, rank, location) tuple per image, dead letters for unreadable ones
    ─► PlanShards: the first N readable per split by rank; contiguous runs of that order become shards
    ─► WriteShards: copy each shard's records out of the chunk files, in rank order, as TFRecords

Images travel through the graph only inside chunk files, never as elements, so memory stays flat whatever the
dataset size; shard contents depend only on the ranks, so shards are byte-identical on every run and runner. The
driver (preprocessing/pipeline.py) checks the options, writes the candidates, runs the graph, writes its results
and publishes the dataset. tests/test_graph.py tests the transforms on beam.Create input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import operator
import os
import time
from typing import Dict, List, NamedTuple, Sequence, Tuple

import apache_beam as beam

from celeba_common import fileio
from dataset_format import schema, tfrecord
from dataset_format.transform import ImageError, Transform, use_one_thread
from preprocessing import celeba, splits

LOG = logging.getLogger("preprocessing")
TARGET_SHARD_BYTES = 150 * 1024 * 1024
CHUNK_SIZE = 256
_LABEL_INDEX = schema.ATTRIBUTE_NAMES.index(schema.LABEL_ATTRIBUTE)
# Errors that say the file itself is absent or unreadable (ImageError: not a regular file, or over the size limit);
# anything else while reading is taken as transient.
PERMANENT_READ_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, ImageError)
READ_ATTEMPTS = 4
READ_RETRY_SECONDS = 0.5  # doubled after each failed attempt


def default_num_shards(total_bytes: int) -> int:
    """A power of two giving shards of roughly 100-200 MB, at least 1."""
    if total_bytes <= TARGET_SHARD_BYTES:
        return 1
    return 2 ** round(math.log2(total_bytes / TARGET_SHARD_BYTES))


class Located(NamedTuple):
    """Where one transformed image's serialized Example sits in the chunk files, and what the planner needs."""

    group: int  # index of its splits.Group
    position: int  # rank within the group (0 = best)
    chunk_id: int
    offset: int  # byte offset in chunk-<chunk_id>
    length: int
    label: int
    name: str


class DeadLetter(NamedTuple):
    """An image left out, and why (errors.jsonl)."""

    name: str
    stage: str  # read | decode
    reason: str


class ShardPlan(NamedTuple):
    """One output shard: its split, index, count, and the records to copy into it in order."""

    split: str
    shard: int
    num_shards: int
    records: List[Located]


class TransformChunk(beam.DoFn):
    """chunk_id -> one chunk file of serialized Examples, for the candidates of that chunk.

    The candidates themselves come from a JSON file the driver wrote (read once per worker in setup), so the graph
    stays small for any dataset size. One output: a Located per readable image, a DeadLetter per image left out
    (one output with two element types rather than tagged outputs, which not every runner separates: Dask's).
    """

    def __init__(self, source: celeba.ImageSource, candidates_path: str, chunk_dir: str, transform: Transform):
        self.source, self.candidates_path, self.chunk_dir = source, candidates_path, chunk_dir
        self.transform = transform
        self.images = beam.metrics.Metrics.counter("records", "images_transformed")
        self.failed = beam.metrics.Metrics.counter("records", "images_left_out")

    def setup(self):
        use_one_thread()
        self._chunks = json.loads(fileio.read_bytes(self.candidates_path))
        self._done, self._start, self._next_log = 0, time.time(), 2000

    def process(self, chunk_id: int):
        items = self._chunks[chunk_id]
        offset = 0
        with fileio.open_write(fileio.join(self.chunk_dir, f"chunk-{chunk_id:06d}")) as out:
            for group, position, name, attributes in items:
                try:
                    data = self._read(name)
                except FileNotFoundError:
                    yield self._dead_letter(name, "read", "listed in the attribute file but missing")
                    continue
                except PERMANENT_READ_ERRORS as e:
                    yield self._dead_letter(name, "read", str(e))
                    continue
                try:
                    jpeg = self.transform.apply(data)
                except ImageError as e:
                    yield self._dead_letter(name, "decode", str(e))
                    continue
                bits = [int(c) for c in attributes]
                label = bits[_LABEL_INDEX]
                size = self.transform.image_size
                record = schema.encode_example(jpeg, size, size, name, label, bits)
                out.write(record)
                yield Located(group, position, chunk_id, offset, len(record), label, name)
                offset += len(record)
        self.images.inc(len(items))
        self._done += len(items)
        if self._done >= self._next_log:
            rate = self._done / max(time.time() - self._start, 1e-9)
            LOG.info("worker %d: %d images transformed, %.0f images/s", os.getpid(), self._done, rate)
            self._next_log += 2000

    def _read(self, name: str) -> bytes:
        """The image's bytes. A missing or unreadable file raises one of PERMANENT_READ_ERRORS (a dead letter); any
        other error (a timeout, a 5xx, a reset connection) is retried, then fails the bundle, which the runner retries:
        a transient error never swaps another image into the fixed split."""
        for attempt in range(READ_ATTEMPTS):
            try:
                return self.source.read(name)
            except PERMANENT_READ_ERRORS:
                raise
            except Exception as e:  # noqa: BLE001  (the storage clients raise many kinds)
                if attempt + 1 == READ_ATTEMPTS:
                    raise
                LOG.warning("reading %s failed (%s: %s); retrying", name, type(e).__name__, e)
                time.sleep(min(READ_RETRY_SECONDS * 2**attempt, 8.0))
        raise AssertionError("unreachable")

    def _dead_letter(self, name: str, stage: str, reason: str) -> DeadLetter:
        self.failed.inc()
        return DeadLetter(name, stage, reason)


def plan_shards(located: List[Located], groups: List[dict], seed: int, num_shards: int) -> Tuple[dict, List[ShardPlan]]:
    """Keeps the first `target` readable images of each group by rank and cuts each split into shards.

    Returns the selection (per split the names and labels kept, and any shortfalls) and one plan per shard, none
    when a split falls short (the driver then fails the job with the shortfall). A pure function.
    """
    by_group: Dict[int, List[Located]] = {}
    for item in located:
        by_group.setdefault(item.group, []).append(item)
    per_split: Dict[str, List[Located]] = {}
    shortfalls = []
    for index, group in enumerate(groups):
        found = sorted(by_group.get(index, []), key=lambda item: item.position)
        target = group["target"]
        if target is not None and len(found) < target:
            shortfalls.append(
                {
                    "split": group["split"],
                    "label": group["label"],
                    "wanted": target,
                    "readable": len(found),
                    "candidates": group["num_candidates"],
                }
            )
        kept = found if target is None else found[:target]
        per_split.setdefault(group["split"], []).extend(kept)
    selection = {"shortfalls": shortfalls, "splits": {}}
    plans = []
    for split, items in per_split.items():
        items.sort(key=lambda item: splits.rank_key(item.name, seed))  # merges balanced groups by rank
        total = sum(item.length for item in items)
        n = num_shards or default_num_shards(total)
        n = max(1, min(n, len(items)))
        selection["splits"][split] = {"names": [item.name for item in items], "labels": [item.label for item in items]}
        for shard in range(n):
            lo, hi = shard * len(items) // n, (shard + 1) * len(items) // n
            plans.append(ShardPlan(split, shard, n, items[lo:hi]))
    return selection, ([] if shortfalls else plans)


class WriteShard(beam.DoFn):
    """Copies one shard's records out of the chunk files into a TFRecord file; yields its stats."""

    def __init__(self, output_dir: str, chunk_dir: str, name: str):
        self.output_dir, self.chunk_dir, self.name = output_dir, chunk_dir, name

    def process(self, plan: ShardPlan):
        file_name = schema.shard_name(self.name, plan.split, plan.shard, plan.num_shards)
        digest, labels, handles = hashlib.sha256(), [0, 0], {}
        hashing = _HashingWriter(fileio.open_write(fileio.join(self.output_dir, file_name)), digest)
        try:
            for record in plan.records:
                if record.chunk_id not in handles:
                    handles[record.chunk_id] = fileio.open_read(
                        fileio.join(self.chunk_dir, f"chunk-{record.chunk_id:06d}")
                    )
                source = handles[record.chunk_id]
                source.seek(record.offset)
                tfrecord.write_record(hashing, source.read(record.length))
                labels[record.label] += 1
        finally:
            hashing.close()
            for handle in handles.values():
                handle.close()
        stats = {
            "split": plan.split,
            "index": plan.shard,
            "file": file_name,
            "num_records": len(plan.records),
            "bytes": hashing.bytes,
            "sha256": digest.hexdigest(),
            "labels": {"0": labels[0], "1": labels[1]},
        }
        yield stats


class _HashingWriter:
    def __init__(self, handle, digest):
        self.handle, self.digest, self.bytes = handle, digest, 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.bytes += len(data)

    def close(self) -> None:
        self.handle.close()


def chunk_candidates(groups: Sequence[splits.Group]) -> List[list]:
    """Candidates in chunks of CHUNK_SIZE: [group, position, name, attributes as a '0110...' string]."""
    items = [
        (g, position, row.name, "".join("1" if a == 1 else "0" for a in row.attributes))
        for g, group in enumerate(groups)
        for position, row in enumerate(group.candidates)
    ]
    return [items[i : i + CHUNK_SIZE] for i in range(0, len(items), CHUNK_SIZE)]


def _is_instance(item, kind) -> bool:
    return isinstance(item, kind)


class BuildRecords(beam.PTransform):
    """The records job's graph: chunk ids in; out, as PCollections, what the driver needs to finish the job.

        chunk ids ─► TransformChunks ─┬─► DeadLetters ─────────────────────────────────► dead_letters
                                      └─► Readable ─► CollectLocations ─► PlanShards ─┬─► Selection ─► selection
                                                                  ShardPlans ◄────────┘   (one dict)
                                                                  ─► SpreadShards ─► WriteShards ─► shards (stats)

    The shard files are the one side effect inside (written under output_dir, from the chunk files under
    chunk_dir); the driver writes the three results at labelled sinks (pipeline.build_pipeline).
    """

    def __init__(
        self,
        source,
        candidates_path: str,
        chunk_dir: str,
        output_dir: str,
        transform: Transform,
        groups: List[dict],
        seed: int,
        num_shards: int,
        name: str,
    ):
        super().__init__()
        self.source, self.candidates_path, self.chunk_dir, self.output_dir = (
            source,
            candidates_path,
            chunk_dir,
            output_dir,
        )
        self.transform, self.groups, self.seed, self.num_shards, self.name = transform, groups, seed, num_shards, name

    def expand(self, chunk_ids) -> Dict[str, beam.PCollection]:
        transformed = chunk_ids | "TransformChunks" >> beam.ParDo(
            TransformChunk(self.source, self.candidates_path, self.chunk_dir, self.transform)
        )
        dead_letters = transformed | "DeadLetters" >> beam.Filter(_is_instance, DeadLetter)
        planned = (
            transformed
            | "Readable" >> beam.Filter(_is_instance, Located)
            | "CollectLocations" >> beam.combiners.ToList()
            | "PlanShards" >> beam.Map(plan_shards, self.groups, self.seed, self.num_shards)
        )
        shards = (
            planned
            | "ShardPlans" >> beam.FlatMap(operator.itemgetter(1))
            | "SpreadShards" >> beam.Reshuffle()
            | "WriteShards" >> beam.ParDo(WriteShard(self.output_dir, self.chunk_dir, self.name))
        )
        return {
            "dead_letters": dead_letters,
            "selection": planned | "Selection" >> beam.Map(operator.itemgetter(0)),
            "shards": shards,
        }
