"""The records job as a Beam graph, and `run(...)`, which the CLI and the tests call.

    candidates (ranked, chunked) ─► TransformChunks: read + decode + crop/resize + JPEG + Example, appended to a
      temporary chunk file; a small (group, rank, location) tuple per image, dead letters for unreadable ones
    ─► PlanShards: the first N readable per split by rank; contiguous runs of that order become shards
    ─► WriteShards: copy each shard's records out of the chunk files, in rank order, as TFRecords
    driver: manifest.json, splits/*.txt, errors.jsonl, then _SUCCESS

Images travel through the graph only inside chunk files, never as elements, so memory stays flat whatever the
dataset size; shard contents depend only on the ranks, so shards are byte-identical on every run and runner.
"""
from __future__ import annotations

import dataclasses
import datetime
import errno
import glob
import hashlib
import json
import logging
import math
import os
import re
import socket
import subprocess
import tempfile
import time
import uuid
from importlib import metadata
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence

import apache_beam as beam

from celeba_common import fileio
from celeba_common.errors import UserError
from dataset_format import schema, tfds_metadata, tfrecord
from dataset_format.manifest import MANIFEST, SUCCESS, write_json
from dataset_format.transform import ImageError, Transform, use_one_thread
from preprocessing import beam_compat, celeba, splits
from preprocessing.config import Config

LOG = logging.getLogger("preprocessing")
TARGET_SHARD_BYTES = 150 * 1024 * 1024
CHUNK_SIZE = 256
_META, _CHUNKS = ".meta", ".chunks"
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


def code_version() -> str:
    version = "unknown"
    for distribution in ("celeba-tfrecords", "celeba-records-worker"):  # the full install, or Dataflow's workers'
        try:
            version = metadata.version(distribution)
            break
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


# --- what flows through the graph ---------------------------------------------------------------------------------

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


# --- Beam transforms ---------------------------------------------------------------------------------------------

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
                time.sleep(min(READ_RETRY_SECONDS * 2 ** attempt, 8.0))
        raise AssertionError("unreachable")

    def _dead_letter(self, name: str, stage: str, reason: str) -> DeadLetter:
        self.failed.inc()
        return DeadLetter(name, stage, reason)


def plan_shards(located: List[Located], groups: List[dict], seed: int, num_shards: int,
                meta_dir: str) -> Iterable[ShardPlan]:
    """Keeps the first `target` readable images of each group by rank and cuts each split into shards.

    Writes the selection (names, label counts, shortfalls) to meta_dir; yields one plan per shard, or none when
    a split falls short (the driver then fails the job with the shortfall).
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
            shortfalls.append({"split": group["split"], "label": group["label"], "wanted": target,
                               "readable": len(found), "candidates": group["num_candidates"]})
        kept = found if target is None else found[:target]
        per_split.setdefault(group["split"], []).extend(kept)
    selection = {"shortfalls": shortfalls, "splits": {}}
    plans = []
    for split, items in per_split.items():
        items.sort(key=lambda item: splits.rank_key(item.name, seed))  # merges balanced groups by rank
        total = sum(item.length for item in items)
        n = num_shards or default_num_shards(total)
        n = max(1, min(n, len(items)))
        selection["splits"][split] = {"names": [item.name for item in items],
                                      "labels": [item.label for item in items]}
        for shard in range(n):
            lo, hi = shard * len(items) // n, (shard + 1) * len(items) // n
            plans.append(ShardPlan(split, shard, n, items[lo:hi]))
    write_json(fileio.join(meta_dir, "selection.json"), selection)
    if shortfalls:
        return []
    return plans


class WriteShard(beam.DoFn):
    """Copies one shard's records out of the chunk files into a TFRecord file; writes its stats to meta_dir."""

    def __init__(self, output_dir: str, chunk_dir: str, meta_dir: str, name: str):
        self.output_dir, self.chunk_dir, self.meta_dir, self.name = output_dir, chunk_dir, meta_dir, name

    def process(self, plan: ShardPlan):
        file_name = schema.shard_name(self.name, plan.split, plan.shard, plan.num_shards)
        digest, labels, handles = hashlib.sha256(), [0, 0], {}
        hashing = _HashingWriter(fileio.open_write(fileio.join(self.output_dir, file_name)), digest)
        try:
            for record in plan.records:
                if record.chunk_id not in handles:
                    handles[record.chunk_id] = fileio.open_read(
                        fileio.join(self.chunk_dir, f"chunk-{record.chunk_id:06d}"))
                source = handles[record.chunk_id]
                source.seek(record.offset)
                tfrecord.write_record(hashing, source.read(record.length))
                labels[record.label] += 1
        finally:
            hashing.close()
            for handle in handles.values():
                handle.close()
        stats = {"split": plan.split, "index": plan.shard, "file": file_name,
                 "num_records": len(plan.records), "bytes": hashing.bytes, "sha256": digest.hexdigest(),
                 "labels": {"0": labels[0], "1": labels[1]}}
        write_json(fileio.join(self.meta_dir, f"shard-{plan.split}-{plan.shard:05d}.json"), stats)
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


def write_errors(errors: List[DeadLetter], meta_dir: str) -> None:
    rows = [error._asdict() for error in sorted(errors, key=lambda e: (e.name, e.stage))]
    write_json(fileio.join(meta_dir, "errors.json"), rows)


def _chunks(groups: Sequence[splits.Group]) -> List[list]:
    """Candidates in chunks of CHUNK_SIZE: [group, position, name, attributes as a '0110...' string]."""
    items = [(g, position, row.name, "".join("1" if a == 1 else "0" for a in row.attributes))
             for g, group in enumerate(groups) for position, row in enumerate(group.candidates)]
    return [items[i:i + CHUNK_SIZE] for i in range(0, len(items), CHUNK_SIZE)]


def _is_instance(item, kind) -> bool:
    return isinstance(item, kind)


def build_pipeline(p: beam.Pipeline, groups: Sequence[splits.Group], source: celeba.ImageSource,
                   config: Config, work_dir: str) -> None:
    """Adds the job's transforms to `p`; every output goes under work_dir."""
    chunk_dir, meta_dir = fileio.join(work_dir, _CHUNKS), fileio.join(work_dir, _META)
    group_info = [{"split": g.split, "label": g.label, "target": g.target, "num_candidates": len(g.candidates)}
                  for g in groups]
    chunks = _chunks(groups)
    candidates_path = fileio.join(meta_dir, "candidates.json")
    fileio.write_bytes(candidates_path, json.dumps(chunks, separators=(",", ":")).encode())
    transformed = (
        p
        | "CreateChunks" >> beam.Create(list(range(len(chunks))), reshuffle=True)
        | "TransformChunks" >> beam.ParDo(TransformChunk(source, candidates_path, chunk_dir, config.transform)))
    _ = (transformed
         | "DeadLetters" >> beam.Filter(_is_instance, DeadLetter)
         | "CollectErrors" >> beam.combiners.ToList()
         | "WriteErrors" >> beam.Map(write_errors, meta_dir))
    _ = (transformed
         | "Readable" >> beam.Filter(_is_instance, Located)
         | "CollectLocations" >> beam.combiners.ToList()
         | "PlanShards" >> beam.FlatMap(plan_shards, group_info, config.seed, config.num_shards, meta_dir)
         | "SpreadShards" >> beam.Reshuffle()
         | "WriteShards" >> beam.ParDo(WriteShard(work_dir, chunk_dir, meta_dir, config.name)))


# --- the driver --------------------------------------------------------------------------------------------------

def check_beam_args(args: Sequence[str]) -> None:
    """Unknown flags go to Beam; ones Beam does not know either are typos, reported here (Beam would drop them)."""
    unknown = beam_compat.unknown_beam_flags(args)
    if unknown:
        raise UserError(f"unknown flag {unknown[0]} (neither this job's nor Beam's); see --helpshort")
    for i, arg in enumerate(args):  # Beam takes a negative count and fails deep inside the runner
        name, _, value = arg.partition("=")
        if name == "--direct_num_workers":
            value = value or (args[i + 1] if i + 1 < len(args) else "")
            if not (value.isascii() and value.isdigit()):
                raise UserError(f"--direct_num_workers={value}: expected a number of worker processes >= 1 (0: one "
                                f"per core)")


def _nested(a: str, b: str) -> bool:
    """Whether folder a is folder b or inside it (symlinks resolved for local paths)."""
    if not fileio.is_remote(a) and not fileio.is_remote(b):
        a, b = os.path.realpath(a), os.path.realpath(b)
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/")


def _check_output_dir(output_dir: str, overwrite: bool, source_dir: Optional[str] = None) -> None:
    if source_dir and (_nested(output_dir, source_dir) or _nested(source_dir, output_dir)):
        raise UserError(f"output folder {output_dir} and the CelebA folder {source_dir} overlap (one holds the "
                        f"other); --overwrite would delete the download: choose an output folder outside it")
    if fileio.exists(output_dir) and not fileio.isdir(output_dir):
        raise UserError(f"output folder {output_dir} is a file")
    if fileio.exists(output_dir) and fileio.listdir(output_dir):
        if not overwrite:
            raise UserError(f"output folder {output_dir} exists and is not empty; pass --overwrite to replace it")
        if not fileio.exists(fileio.join(output_dir, MANIFEST)) and not fileio.exists(
                fileio.join(output_dir, SUCCESS)):
            raise UserError(f"output folder {output_dir} is not a dataset of this job (no {MANIFEST}); "
                            f"refusing to --overwrite it")


def _check_download_outside(layout, output_dir: str) -> None:
    """UserError when a part of the download (the image folder or zip, a list file) lies inside the output folder,
    symlinks resolved: --overwrite or a failed run would delete it with the output."""
    for part in (layout.image_dir, layout.image_zip, layout.attr_path, layout.partition_path):
        if part and _nested(part, output_dir):
            raise UserError(f"{part} (part of the CelebA download) lies inside the output folder {output_dir}; "
                            f"--overwrite would delete it: choose an output folder outside the download")


def _environment_error(error: Exception) -> Optional[str]:
    """The OS error a runner wrapped (e.g. `RuntimeError: OSError: [Errno 28] No space left on device [while
    running 'TransformChunks']`), as one line; None for anything else (a bug keeps its traceback)."""
    found = re.search(r"(\w*Error): \[Errno (\d+)\] ([^\[\n]*)", str(error))
    return f"{found.group(3).strip()} ({found.group(1)}, errno {found.group(2)})" if found else None


def _check_runner(config: Config, beam_args: Sequence[str]) -> None:
    """Refuses an unknown --runner, and local paths with a runner whose workers run on other machines."""
    problem = beam_compat.check_runner(beam_args)
    if problem:
        raise UserError(problem)
    local = beam_compat.local_paths_for_remote_runner(beam_args, {
        "celeba_dir": config.celeba_dir if config.source == "folder" else None, "output_dir": config.output_dir})
    if local:
        runner = beam_compat.runner_name(beam_args)
        raise UserError(f"--{local[0]} is a local path, but {runner} workers run on other machines and cannot see "
                        f"it; use a gs:// path (or another shared filesystem URL)")
    beam_compat.anonymous_gcs_for_emulator()


def _remove_abandoned_work_dirs(output_dir: str) -> None:
    """Deletes OUTPUT.partial-* folders left by killed runs on this host (their process no longer exists), locally
    and on gs:// alike. A folder started on another host is not ours to judge and stays."""
    base = output_dir.rstrip("/")
    pattern = (base if fileio.is_remote(base) else glob.escape(base)) + f".partial-*/{_META}/started"
    for marker in fileio.glob(pattern):
        path = marker[:-len(f"/{_META}/started")]
        try:
            owner = json.loads(fileio.read_bytes(marker))
        except (OSError, ValueError):
            continue
        if owner.get("host") != socket.gethostname():
            continue
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            LOG.info("removing %s, left by a run that was killed", path)
            fileio.delete_tree(path)
        except (OSError, KeyError, ValueError):
            pass


def run(config: Config, beam_args: Sequence[str] = ()) -> dict:
    """Builds the dataset described by `config` in config.output_dir; returns the manifest. Raises UserError."""
    start = time.time()
    config.validate()
    beam_args = beam_compat.expand_runner_alias(beam_args)
    _check_runner(config, beam_args)
    fileio.check_gcs([config.celeba_dir, config.output_dir], writes=[config.output_dir])
    sizes = splits.parse_split_sizes(config.split_sizes)
    _recover_interrupted_publish(config.output_dir)
    _check_output_dir(config.output_dir, config.overwrite, config.celeba_dir if config.source == "folder" else None)
    work_dir = f"{config.output_dir.rstrip('/')}.partial-{uuid.uuid4().hex[:8]}"
    _remove_abandoned_work_dirs(config.output_dir)
    try:  # the marker says who works here (for _remove_abandoned_work_dirs); writing it fails early if we cannot
        fileio.write_bytes(fileio.join(work_dir, _META, "started"),
                           json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
    except OSError as e:
        raise UserError(f"cannot write next to output folder {config.output_dir}: {e.strerror or e}") from None
    try:
        if config.source == "tfds":
            from preprocessing import tfds_source

            rows, source, source_info, groups = tfds_source.prepare(config, sizes, work_dir)
        else:
            layout = celeba.find_layout(config.celeba_dir)
            _check_download_outside(layout, config.output_dir)
            rows = celeba.read_rows(layout)
            source = celeba.ImageSource.for_layout(layout)
            source.check()
            source_info = {"kind": layout.kind, "celeba_dir": config.celeba_dir,
                           "attributes_sha256": celeba.fingerprint(layout.attr_path),
                           "partitions_sha256": celeba.fingerprint(layout.partition_path),
                           "images": layout.image_dir or layout.image_zip}
            groups = splits.select_candidates(rows, sizes, config.seed, config.balance)
        num_candidates = sum(len(g.candidates) for g in groups)
        LOG.info("%d images listed; %d candidates for %s", len(rows), num_candidates,
                 ", ".join(f"{g.split}{'' if g.label is None else '/' + schema.CLASS_NAMES[g.label]}="
                           f"{g.target if g.target is not None else 'all'}" for g in groups))
        _run_beam(groups, source, config, work_dir, beam_args, big=num_candidates >= 4 * CHUNK_SIZE)
        manifest = _finish(config, work_dir, source_info, start)
    finally:
        if fileio.exists(work_dir):
            fileio.delete_tree(work_dir)
    return manifest


def _run_beam(groups, source, config: Config, work_dir: str, beam_args: Sequence[str], big: bool) -> None:
    """Runs the Beam graph; an environment error in a worker (a full disk, a permission) becomes one UserError line.
    Local worker processes write their stderr to a temporary log, kept and named in the error only if it has
    more to say."""
    handle, worker_log = tempfile.mkstemp(prefix="celeba-records-workers-", suffix=".log")
    os.close(handle)
    options, runner = beam_compat.pipeline_options(beam_args, big, worker_log)
    succeeded = False
    try:
        with beam_compat.stop_workers_on_ctrl_c(), beam.Pipeline(runner=runner, options=options) as p:
            build_pipeline(p, groups, source, config, work_dir)
        succeeded = True
    except Exception as e:  # noqa: BLE001  (runners wrap a worker's OSError in their own exception types)
        environment = _environment_error(e)
        if environment:
            if os.path.getsize(worker_log):
                raise UserError(f"the records job failed: {environment} (the workers' log: {worker_log})") from None
            raise UserError(f"the records job failed: {environment}") from None
        raise
    finally:
        if succeeded or not os.path.getsize(worker_log):  # after a success nothing in it is news
            os.remove(worker_log)


def _refuse_shortfall(selection: dict, errors: List[dict]) -> None:
    """UserError naming the first split that fell short, after logging the dead letters (they go with the work
    folder)."""
    if not selection["shortfalls"]:
        return
    for error in errors[:20]:
        LOG.warning("left out %s (%s): %s", error["name"], error["stage"], error["reason"])
    s = selection["shortfalls"][0]
    what = s["split"] if s["label"] is None else f"{s['split']} ({schema.CLASS_NAMES[s['label']]})"
    raise UserError(f"split {what} is {s['wanted'] - s['readable']} images short: {s['wanted']} wanted, "
                    f"{s['readable']} readable among {s['candidates']} candidates ({len(errors)} images left out, "
                    f"listed above); no dataset written")


def _publish(work_dir: str, output_dir: str, overwrite: bool) -> None:
    """Moves the finished work folder to output_dir. Without --overwrite, an output folder that appeared while the
    job ran (another run published there) is left as it is and this run fails; locally the move itself refuses a
    non-empty target, so two runs racing to publish cannot both win."""
    raced = UserError(f"output folder {output_dir} appeared while this job ran (another run published a dataset "
                      f"there); left it as it is; pass --overwrite to replace it")
    aside = None
    if fileio.exists(output_dir) and fileio.listdir(output_dir):
        if not overwrite:
            raise raced
        # --overwrite, only now that the new dataset is complete: the old one is moved aside, not deleted, until
        # the new one is in place; a kill in between leaves it there, and the next run puts it back
        aside = f"{output_dir.rstrip('/')}{_REPLACED}{uuid.uuid4().hex[:8]}"
        fileio.move_tree(output_dir, aside)
    try:
        fileio.move_tree(work_dir, output_dir)
    except OSError as e:
        if aside:
            fileio.move_tree(aside, output_dir)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise raced from None
        raise
    if aside:
        fileio.delete_tree(aside)


_REPLACED = ".replaced-"  # OUTPUT.replaced-XXXX: the dataset that --overwrite replaces, until the new one is in


def _recover_interrupted_publish(output_dir: str) -> None:
    """After a kill in the middle of an --overwrite publish: when the new dataset made it into place, the old one
    moved aside is deleted; when it did not, the old one is put back. Either way nothing is lost."""
    base = output_dir.rstrip("/")
    pattern = (base if fileio.is_remote(base) else glob.escape(base)) + f"{_REPLACED}*/{SUCCESS}"
    for marker in fileio.glob(pattern):
        aside = marker[:-len(f"/{SUCCESS}")]
        if fileio.exists(fileio.join(output_dir, SUCCESS)):
            LOG.info("removing %s: the dataset that replaced it is in %s", aside, output_dir)
            fileio.delete_tree(aside)
        elif not fileio.exists(output_dir) or not fileio.listdir(output_dir):
            LOG.warning("putting back %s into %s: a run was killed while replacing it", aside, output_dir)
            if fileio.exists(output_dir):
                fileio.delete_tree(output_dir)
            fileio.move_tree(aside, output_dir)
        else:
            raise UserError(f"{aside} holds the dataset that an interrupted --overwrite was replacing, and "
                            f"{output_dir} holds an incomplete one; keep the one you want and delete the other")


def _finish(config: Config, work_dir: str, source_info: dict, start: float) -> dict:
    """Writes manifest.json, TFDS metadata, splits/*.txt and errors.jsonl, then publishes work_dir as the output
    folder."""
    meta_dir = fileio.join(work_dir, _META)
    selection = json.loads(fileio.read_bytes(fileio.join(meta_dir, "selection.json")))
    errors_path = fileio.join(meta_dir, "errors.json")
    errors = json.loads(fileio.read_bytes(errors_path)) if fileio.exists(errors_path) else []
    _refuse_shortfall(selection, errors)
    shard_stats: Dict[str, List[dict]] = {}
    for name in fileio.listdir(meta_dir):
        if name.startswith("shard-"):
            stats = json.loads(fileio.read_bytes(fileio.join(meta_dir, name)))
            shard_stats.setdefault(stats["split"], []).append(stats)
    split_info = {}
    for split in schema.SPLITS:
        if split not in selection["splits"]:
            continue
        chosen = selection["splits"][split]
        shards = sorted(shard_stats.get(split, []), key=lambda s: s["index"])
        count = len(chosen["names"])
        males = sum(chosen["labels"])
        split_info[split] = {
            "num_examples": count, "labels": {"0": count - males, "1": males},
            "male_share": round(males / count, 4) if count else 0.0,
            "shards": [{k: s[k] for k in ("file", "num_records", "bytes", "sha256")} for s in shards],
        }
        fileio.write_bytes(fileio.join(work_dir, "splits", f"{split}.txt"),
                           "".join(n + "\n" for n in sorted(chosen["names"])).encode())
    fileio.write_bytes(fileio.join(work_dir, "errors.jsonl"),
                       "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors).encode())
    seconds = time.time() - start
    total = sum(s["num_examples"] for s in split_info.values())
    manifest = {
        "schema_version": schema.SCHEMA_VERSION, "name": config.name, **config.transform.as_dict(),
        "image_format": "jpeg", "label": schema.LABEL_ATTRIBUTE, "class_names": list(schema.CLASS_NAMES),
        "attribute_names": list(schema.ATTRIBUTE_NAMES), "feature_keys": {
            "image": schema.IMAGE_KEY, "label": schema.LABEL_KEY, "filename": schema.FILENAME_KEY,
            "attributes": schema.ATTRIBUTES_KEY},
        "splits": split_info, "num_left_out": len(errors), "source": source_info,
        "flags": {k: v for k, v in dataclasses.asdict(config).items()},
        "code_version": code_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 2),
        "images_per_sec": round(total / seconds, 1) if seconds else 0.0,
    }
    write_json(fileio.join(work_dir, MANIFEST), manifest)
    tfds_metadata.write(work_dir, manifest)  # dataset_info.json + features.json: TFDS opens the folder
    for sub in (_META, _CHUNKS, ".source"):
        fileio.delete_tree(fileio.join(work_dir, sub))
    _publish(work_dir, config.output_dir, config.overwrite)
    fileio.write_bytes(fileio.join(config.output_dir, SUCCESS), b"")  # last: marks the dataset complete
    return manifest
