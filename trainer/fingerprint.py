"""The run folder's identity (run.json): what a checkpoint in it was trained on and with. A resume with other data,
another model shape, precision or optimization setting would silently mix two runs, so it is refused instead.

The fingerprint is the records' content, their image transform, and every TrainConfig field declared with
resume="fixed" (trainer/config.py); the fields declared resume="free" may change on resume (config.resume_rules;
README.md lists them, and tests/test_units.py keeps that list equal to them).
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional

from celeba_common import fileio
from celeba_common.errors import UserError
from dataset_format.transform import Transform
from trainer import data
from trainer.config import TrainConfig, resume_rules, weights_id

RUN_FILE = "run.json"


def fingerprint(config: TrainConfig, info: data.DatasetInfo, policy: str) -> dict:
    """What the run's checkpoints mean: the records' content and transform, and the resume="fixed" settings (the
    weights as their content's id, the precision as the policy `auto` resolved to)."""
    fixed, _ = resume_rules()
    settings = {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in ((name, getattr(config, name)) for name in fixed)
    }
    manifest = json.dumps(info.manifest["splits"], sort_keys=True).encode()
    return {
        "records": hashlib.sha256(manifest).hexdigest()[:16],
        **info.transform.as_dict(),
        **settings,
        "weights": weights_id(config.weights),
        "precision": policy,
    }


def read_run(model_dir: str) -> Optional[dict]:
    path = fileio.join(model_dir, RUN_FILE)
    if not fileio.exists(path):
        return None
    try:
        record = json.loads(fileio.read_bytes(path))
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise UserError(f"{path} is damaged (not a JSON object); pass --fresh to start the run over")
    return record


def trained_transform(model_dir: str) -> Optional[Transform]:
    """The image transform the run's model was trained with, from the run folder itself (run.json, or
    metrics.json): never from the data folder, which may have moved since. None when neither says."""
    from trainer.config import trained_metrics

    recorded = (read_run(model_dir) or {}).get("transform") or trained_metrics(model_dir).get("transform")
    if not recorded:
        return None
    try:
        return Transform.from_dict(recorded)
    except ValueError as e:
        raise UserError(
            f"{model_dir} records a damaged image transform ({e}); retrain it with python -m trainer.main --fresh"
        ) from None


def run_file_ok(model_dir: str) -> bool:
    """Whether run.json is there and readable (else the trainer, having checked the checkpoint, writes it anew)."""
    try:
        return read_run(model_dir) is not None
    except UserError:
        return False


def check_resume(model_dir: str, current: dict, stored: Optional[dict] = None) -> None:
    """UserError naming the first setting that differs from the run being resumed: `stored`, the fingerprint saved
    in its checkpoint (so a deleted or edited run.json, or checkpoints copied from another run, change nothing),
    else run.json's, for checkpoints from before the fingerprint was saved in them."""
    if stored is None:
        stored = (read_run(model_dir) or {}).get("fingerprint")
    if not stored or not isinstance(stored, dict):
        return  # a run folder from before run.json: nothing to compare with
    for key, value in current.items():
        if key in stored and stored[key] != value:
            what = "the records (--data_dir holds other data)" if key == "records" else f"{key}={stored[key]}"
            now = "" if key == "records" else f", not {value}"
            raise UserError(
                f"--model_dir={model_dir} holds a run trained with {what}{now}; resuming would mix two "
                f"runs: pass --fresh to start over, or use another --model_dir"
            )


def write_run(model_dir: str, current: dict, info: data.DatasetInfo) -> None:
    """run.json: the fingerprint, and the transform prediction needs (so it never depends on the data folder)."""
    record = {"fingerprint": current, "transform": info.transform.as_dict(), "data_dir": info.data_dir}
    fileio.write_bytes(fileio.join(model_dir, RUN_FILE), (json.dumps(record, indent=2) + "\n").encode())


def settle(checkpoints, model_dir: str, current: dict, info: data.DatasetInfo, resumed: bool, is_chief: bool) -> None:
    """After a restore (or none): checks the resume against the fingerprint saved in the restored checkpoint itself
    (run.json's for older checkpoints), stamps the fingerprint into every later checkpoint, and has the chief write
    run.json when the run is new or its run.json is missing or damaged."""
    if resumed:
        check_resume(model_dir, current, checkpoints.stored_fingerprint())
    checkpoints.stamp(current)
    if is_chief and (not resumed or not run_file_ok(model_dir)):
        write_run(model_dir, current, info)
