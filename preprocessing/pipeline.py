"""The records job's driver: `run(...)`, which the CLI and the tests call.

It checks the options, the output folder and the download; ranks the candidates (splits.py); runs the Beam graph
(graph.BuildRecords) with its results written at labelled sinks (build_pipeline); then writes manifest.json,
splits/*.txt, errors.jsonl and the TFDS metadata, and publishes the work folder as the dataset with _SUCCESS.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import glob
import json
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
import uuid
from importlib import metadata
from typing import Dict, List, Optional, Sequence

import apache_beam as beam

from celeba_common import fileio
from celeba_common.errors import UserError
from dataset_format import schema, tfds_metadata
from dataset_format.manifest import MANIFEST, SUCCESS, write_json
from preprocessing import beam_compat, celeba, graph, splits
from preprocessing.config import Config

LOG = logging.getLogger("preprocessing")
_META, _CHUNKS = ".meta", ".chunks"


def code_version() -> str:
    version = "unknown"
    for distribution in ("celeba-tfrecords", "celeba-records-worker"):  # the full install, or Dataflow's workers'
        try:
            version = metadata.version(distribution)
            break
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


def build_pipeline(
    p: beam.Pipeline, groups: Sequence[splits.Group], source: celeba.ImageSource, config: Config, work_dir: str
) -> None:
    """Adds the job's graph to `p` (graph.BuildRecords) and its three results' sinks; every output goes under
    work_dir. The candidates go in through a file (read once per worker), so the graph stays small."""
    chunk_dir, meta_dir = fileio.join(work_dir, _CHUNKS), fileio.join(work_dir, _META)
    group_info = [
        {"split": g.split, "label": g.label, "target": g.target, "num_candidates": len(g.candidates)} for g in groups
    ]
    chunks = graph.chunk_candidates(groups)
    candidates_path = fileio.join(meta_dir, "candidates.json")
    fileio.write_bytes(candidates_path, json.dumps(chunks, separators=(",", ":")).encode())
    results = (
        p
        | "CreateChunks" >> beam.Create(list(range(len(chunks))), reshuffle=True)
        | "BuildRecords"
        >> graph.BuildRecords(
            source,
            candidates_path,
            chunk_dir,
            work_dir,
            config.transform,
            group_info,
            config.seed,
            config.num_shards,
            config.name,
        )
    )
    errors = (
        results["dead_letters"]
        | "CollectErrors" >> beam.combiners.ToList()
        | "SortErrors" >> beam.Map(_error_rows)
        | "NameErrors" >> beam.Map(_named, ERRORS)
    )
    selection = results["selection"] | "NameSelection" >> beam.Map(_named, SELECTION)
    shards = (
        results["shards"]
        | "CollectShardStats" >> beam.combiners.ToList()
        | "NameShardStats" >> beam.Map(_named, SHARDS)
    )
    # One sink for all three: the pipeline then ends in a single leaf that depends on every branch. Beam's Dask
    # runner computes only the last leaf of a graph, so separate sinks lost all but one there (the dead letters).
    _ = (errors, selection, shards) | "Results" >> beam.Flatten() | "WriteResults" >> beam.Map(_write_result, meta_dir)


ERRORS, SELECTION, SHARDS = "errors.json", "selection.json", "shards.json"  # the graph's results, as the driver reads


def _error_rows(dead: List[graph.DeadLetter]) -> List[dict]:
    return [error._asdict() for error in sorted(dead, key=lambda e: (e.name, e.stage))]


def _named(value, name: str) -> tuple:
    return name, value


def _write_result(named: tuple, meta_dir: str) -> None:
    write_json(fileio.join(meta_dir, named[0]), named[1])


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
                raise UserError(
                    f"--direct_num_workers={value}: expected a number of worker processes >= 1 (0: one per core)"
                )


def _nested(a: str, b: str) -> bool:
    """Whether folder a is folder b or inside it (symlinks resolved for local paths)."""
    if not fileio.is_remote(a) and not fileio.is_remote(b):
        a, b = os.path.realpath(a), os.path.realpath(b)
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/")


def _check_output_dir(output_dir: str, overwrite: bool, source_dir: Optional[str] = None) -> None:
    if source_dir and (_nested(output_dir, source_dir) or _nested(source_dir, output_dir)):
        raise UserError(
            f"output folder {output_dir} and the CelebA folder {source_dir} overlap (one holds the "
            f"other); --overwrite would delete the download: choose an output folder outside it"
        )
    if fileio.exists(output_dir) and not fileio.isdir(output_dir):
        raise UserError(f"output folder {output_dir} is a file")
    if fileio.exists(output_dir) and fileio.listdir(output_dir):
        if not overwrite:
            raise UserError(f"output folder {output_dir} exists and is not empty; pass --overwrite to replace it")
        if not fileio.exists(fileio.join(output_dir, MANIFEST)) and not fileio.exists(fileio.join(output_dir, SUCCESS)):
            raise UserError(
                f"output folder {output_dir} is not a dataset of this job (no {MANIFEST}); refusing to --overwrite it"
            )


def _check_download_outside(layout, output_dir: str) -> None:
    """UserError when a part of the download (the image folder or zip, a list file) lies inside the output folder,
    symlinks resolved: --overwrite or a failed run would delete it with the output."""
    for part in (layout.image_dir, layout.image_zip, layout.attr_path, layout.partition_path):
        if part and _nested(part, output_dir):
            raise UserError(
                f"{part} (part of the CelebA download) lies inside the output folder {output_dir}; "
                f"--overwrite would delete it: choose an output folder outside the download"
            )


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
    local = beam_compat.local_paths_for_remote_runner(
        beam_args,
        {"celeba_dir": config.celeba_dir if config.source == "folder" else None, "output_dir": config.output_dir},
    )
    if local:
        runner = beam_compat.runner_name(beam_args)
        raise UserError(
            f"--{local[0]} is a local path, but {runner} workers run on other machines and cannot see "
            f"it; use a gs:// path (or another shared filesystem URL)"
        )
    beam_compat.anonymous_gcs_for_emulator()


def _remove_abandoned_work_dirs(output_dir: str) -> None:
    """Deletes OUTPUT.partial-* folders left by killed runs on this host (their process no longer exists), locally
    and on gs:// alike. A folder started on another host is not ours to judge and stays."""
    base = output_dir.rstrip("/")
    pattern = (base if fileio.is_remote(base) else glob.escape(base)) + f".partial-*/{_META}/started"
    for marker in fileio.glob(pattern):
        path = marker[: -len(f"/{_META}/started")]
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
        fileio.write_bytes(
            fileio.join(work_dir, _META, "started"),
            json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode(),
        )
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
            source_info = {
                "kind": layout.kind,
                "celeba_dir": config.celeba_dir,
                "attributes_sha256": celeba.fingerprint(layout.attr_path),
                "partitions_sha256": celeba.fingerprint(layout.partition_path),
                "images": layout.image_dir or layout.image_zip,
            }
            groups = splits.select_candidates(rows, sizes, config.seed, config.balance)
        num_candidates = sum(len(g.candidates) for g in groups)
        LOG.info(
            "%d images listed; %d candidates for %s",
            len(rows),
            num_candidates,
            ", ".join(
                f"{g.split}{'' if g.label is None else '/' + schema.CLASS_NAMES[g.label]}="
                f"{g.target if g.target is not None else 'all'}"
                for g in groups
            ),
        )
        _run_beam(groups, source, config, work_dir, beam_args, big=num_candidates >= 4 * graph.CHUNK_SIZE)
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
    raise UserError(
        f"split {what} is {s['wanted'] - s['readable']} images short: {s['wanted']} wanted, "
        f"{s['readable']} readable among {s['candidates']} candidates ({len(errors)} images left out, "
        f"listed above); no dataset written"
    )


def _publish(work_dir: str, output_dir: str, overwrite: bool) -> None:
    """Moves the finished work folder to output_dir. Without --overwrite, an output folder that appeared while the
    job ran (another run published there) is left as it is and this run fails; locally the move itself refuses a
    non-empty target, so two runs racing to publish cannot both win."""
    raced = UserError(
        f"output folder {output_dir} appeared while this job ran (another run published a dataset "
        f"there); left it as it is; pass --overwrite to replace it"
    )
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
        aside = marker[: -len(f"/{SUCCESS}")]
        if fileio.exists(fileio.join(output_dir, SUCCESS)):
            LOG.info("removing %s: the dataset that replaced it is in %s", aside, output_dir)
            fileio.delete_tree(aside)
        elif not fileio.exists(output_dir) or not fileio.listdir(output_dir):
            LOG.warning("putting back %s into %s: a run was killed while replacing it", aside, output_dir)
            if fileio.exists(output_dir):
                fileio.delete_tree(output_dir)
            fileio.move_tree(aside, output_dir)
        else:
            raise UserError(
                f"{aside} holds the dataset that an interrupted --overwrite was replacing, and "
                f"{output_dir} holds an incomplete one; keep the one you want and delete the other"
            )


def _finish(config: Config, work_dir: str, source_info: dict, start: float) -> dict:
    """Writes manifest.json, TFDS metadata, splits/*.txt and errors.jsonl, then publishes work_dir as the output
    folder."""
    meta_dir = fileio.join(work_dir, _META)
    selection = json.loads(fileio.read_bytes(fileio.join(meta_dir, SELECTION)))
    errors = json.loads(fileio.read_bytes(fileio.join(meta_dir, ERRORS)))
    _refuse_shortfall(selection, errors)
    shard_stats: Dict[str, List[dict]] = {}
    for stats in json.loads(fileio.read_bytes(fileio.join(meta_dir, SHARDS))):
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
            "num_examples": count,
            "labels": {"0": count - males, "1": males},
            "male_share": round(males / count, 4) if count else 0.0,
            "shards": [{k: s[k] for k in ("file", "num_records", "bytes", "sha256")} for s in shards],
        }
        fileio.write_bytes(
            fileio.join(work_dir, "splits", f"{split}.txt"), "".join(n + "\n" for n in sorted(chosen["names"])).encode()
        )
    fileio.write_bytes(
        fileio.join(work_dir, "errors.jsonl"), "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors).encode()
    )
    manifest = _manifest(config, split_info, len(errors), source_info, time.time() - start)
    write_json(fileio.join(work_dir, MANIFEST), manifest)
    tfds_metadata.write(work_dir, manifest)  # dataset_info.json + features.json: TFDS opens the folder
    for sub in (_META, _CHUNKS, ".source"):
        fileio.delete_tree(fileio.join(work_dir, sub))
    _publish(work_dir, config.output_dir, config.overwrite)
    fileio.write_bytes(fileio.join(config.output_dir, SUCCESS), b"")  # last: marks the dataset complete
    return manifest


def _manifest(config: Config, split_info: dict, num_left_out: int, source_info: dict, seconds: float) -> dict:
    """manifest.json: the record format, the transform, the splits and their shards, and how the job ran."""
    total = sum(s["num_examples"] for s in split_info.values())
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "name": config.name,
        **config.transform.as_dict(),
        "image_format": "jpeg",
        "label": schema.LABEL_ATTRIBUTE,
        "class_names": list(schema.CLASS_NAMES),
        "attribute_names": list(schema.ATTRIBUTE_NAMES),
        "feature_keys": {
            "image": schema.IMAGE_KEY,
            "label": schema.LABEL_KEY,
            "filename": schema.FILENAME_KEY,
            "attributes": schema.ATTRIBUTES_KEY,
        },
        "splits": split_info,
        "num_left_out": num_left_out,
        "source": source_info,
        "flags": {k: v for k, v in dataclasses.asdict(config).items()},
        "code_version": code_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 2),
        "images_per_sec": round(total / seconds, 1) if seconds else 0.0,
    }
