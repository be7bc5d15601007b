"""TrainConfig: every setting of a training run, declared once (a field is also its flag) and validated up front.

trainer.main defines the flags from these fields (celeba_common.flagdefs) and builds the config from them; the
library code below it (Trainer and friends) only ever sees a TrainConfig. A new setting is one `option(...)` line
here: its type, choices, bounds and whether a resume may change it (resume="fixed": part of the run's fingerprint,
trainer/fingerprint.py; "free": may change); a rule across fields goes in `check_values`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Optional, Tuple

from celeba_common import fileio
from celeba_common.errors import UserError
from celeba_common.flagdefs import check_choices, fields_with, option

DEFAULT_DATA_DIR = os.path.join("tfrecords", "celeba")
DEFAULT_MODEL_DIR = os.path.join("runs", "celeba")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")
CROSS_DEVICE_OPS = ("auto", "nccl", "hierarchical_copy", "reduction_to_one_device")
FEATURE_CACHE_MODES = ("auto", "on", "off")
POOLINGS = ("flatten", "avg", "max")
JIT_MODES = ("auto", "on", "off")
WEIGHTS_HELP = (
    "pass --weights=/path/to/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 (a local copy of the "
    "Keras ImageNet notop weights) or --weights=none"
)


def weights_id(weights: str) -> str:
    """'imagenet', 'none', or the sha256 of a weights file's content (so a file changed in place counts as new)."""
    return weights.lower() if weights.lower() in ("imagenet", "none") else f"sha256:{fileio.sha256_file(weights)}"


def _profile_ok(text: str) -> bool:
    from trainer.loop import parse_profile_steps

    try:
        parse_profile_steps(text)
        return True
    except ValueError:
        return False


def default_feature_cache_dir() -> str:
    """$CELEBA_FEATURE_CACHE, else $XDG_CACHE_HOME/celeba-tfrecords/features (~/.cache/celeba-tfrecords/features)."""
    if os.environ.get("CELEBA_FEATURE_CACHE"):
        return os.environ["CELEBA_FEATURE_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "celeba-tfrecords", "features")


@dataclasses.dataclass
class TrainConfig:
    data_dir: str = option(DEFAULT_DATA_DIR, "Records written by preprocessing.build_records.")
    model_dir: str = option(
        DEFAULT_MODEL_DIR,
        "Checkpoints, logs, metrics and the exported model "
        f"(default $AIP_MODEL_DIR on Vertex AI, else {DEFAULT_MODEL_DIR}).",
        flag_default=None,
    )
    epochs: int = option(10, "Epochs with the backbone frozen.", lower_bound=0, resume="free")
    batch_size: int = option(64, "Global batch size (all replicas together).", lower_bound=1, resume="fixed")
    lr: float = option(1e-4, "Adam learning rate of the frozen-backbone phase.", resume="fixed")
    weights: str = option("imagenet", "VGG16 weights: imagenet, none, or a local ..._notop.h5 file.", resume="fixed")
    head_units: Tuple[int, ...] = option((256,), "Units of the dense head layers, e.g. 512,256.", resume="fixed")
    dropout: float = option(0.5, "Dropout after each head layer.", resume="fixed")
    pooling: str = option("flatten", "How the conv features enter the head.", choices=POOLINGS, resume="fixed")
    precision: str = option(
        "auto",
        "Mixed precision policy (auto: float16 on GPUs, bfloat16 on bf16 CPUs).",
        choices=PRECISIONS,
        resume="fixed",
    )
    strategy: str = option(
        "auto",
        "tf.distribute strategy (auto: multi-worker with a cluster, mirrored over >1 device).",
        choices=STRATEGIES,
        resume="free",
    )
    cross_device_ops: str = option(
        "auto",
        "MirroredStrategy all-reduce (try another one if multi-GPU losses go NaN).",
        choices=CROSS_DEVICE_OPS,
        resume="free",
    )
    num_cpu_devices: int = option(
        0, "Split the CPU into N logical devices (to try MirroredStrategy without GPUs).", lower_bound=0, resume="free"
    )
    cluster_wait: int = option(
        600,
        "Seconds every worker of a TF_CONFIG / CLUSTER_SPEC cluster may take to join "
        "before the run stops in one line (instead of waiting forever for a worker that "
        "never started).",
        lower_bound=1,
        resume="free",
    )
    shuffle_buffer: int = option(2048, "Shuffle buffer (examples).", lower_bound=1, resume="fixed")
    augment: bool = option(False, "Random horizontal flips.", resume="fixed")
    cache: bool = option(False, "Keep decoded images in memory after the first epoch when they fit.", resume="free")
    feature_cache: str = option(
        "auto", "Train the head on backbone features computed once.", choices=FEATURE_CACHE_MODES, resume="free"
    )
    feature_cache_dir: str = option(
        "",
        "Where cached features live, shared by every run and sweep cell with the "
        "same records, weights, pooling and precision (default: "
        "~/.cache/celeba-tfrecords/features; a gs:// folder for cloud jobs).",
        resume="free",
    )
    seed: int = option(
        42, "Seed of initialization, shuffling and dropout.", lower_bound=0, upper_bound=2**31 - 1, resume="fixed"
    )
    checkpoint_steps: int = option(
        0, "Also checkpoint every N steps (0: once per epoch).", lower_bound=0, resume="free"
    )
    fresh: bool = option(False, "Ignore existing checkpoints and history in --model_dir and start over.")
    fine_tune_from: str = option("", "Unfreeze the backbone from this layer on (e.g. block5_conv1).", resume="fixed")
    fine_tune_epochs: int = option(0, "Epochs of the fine-tuning phase.", lower_bound=0, resume="free")
    fine_tune_lr: float = option(1e-5, "Adam learning rate of the fine-tuning phase.", resume="fixed")
    steps_per_epoch: int = option(
        0, "Steps per epoch (0: one pass over the train split).", lower_bound=0, resume="free"
    )
    verify_data: bool = option(True, "Check every shard's size and sha256 against the manifest first.", resume="free")
    export: bool = option(True, "Write model.keras and export/ (SavedModel) at the end.", resume="free")
    restore_best: bool = option(
        True, "Evaluate and export the weights of the epoch with the lowest val_loss.", resume="free"
    )
    reevaluate: bool = option(
        False,
        "On a finished run: evaluate (and export) again. Without it, rerunning a finished run says so and stops.",
        resume="free",
    )
    steps_per_loop: str = option(
        "auto",
        "Training steps per traced call, read once: N, or auto (about 1 s per "
        "call, the same on every worker; see trainer/loop.py).",
        resume="free",
    )
    jit_compile: str = option(
        "auto", "XLA for the train step (auto: on with GPUs, off on CPUs).", choices=JIT_MODES, resume="free"
    )
    profile_steps: str = option(
        "",
        "START,END: a TF profiler trace of these global steps (1-based) under the TensorBoard logs (its Profile tab).",
        resume="free",
    )
    data_service: str = option(
        "",
        "grpc://HOST:PORT of a tf.data service dispatcher (python -m launch.data_service): "
        "the training input (read, decode, augment) runs on its workers; evaluation never "
        "does. vertex: the job's own (launch.vertex --data_service_workers).",
        resume="free",
    )
    # Not flags: Vertex AI hands these through AIP_CHECKPOINT_DIR / AIP_TENSORBOARD_LOG_DIR.
    checkpoint_dir: Optional[str] = None
    tensorboard_dir: Optional[str] = None

    def validate(self) -> None:
        """UserError naming the first bad setting; runs before TensorFlow starts, so bad flags fail in a second."""
        self.check_values()
        checks = [
            (
                not fileio.exists(self.model_dir) or fileio.isdir(self.model_dir),
                f"--model_dir={self.model_dir} is a file, not a folder",
            ),
            (
                self.weights.lower() in ("imagenet", "none") or fileio.exists(self.weights),
                f"--weights={self.weights}: no such file; {WEIGHTS_HELP}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def check_values(self) -> None:
        """The checks that read no file: what a launcher can check before any machine starts (UserError)."""
        check_choices(self)
        checks = [
            (self.lr > 0 and math.isfinite(self.lr), f"--lr={self.lr}: must be > 0"),
            (self.fine_tune_lr > 0, f"--fine_tune_lr={self.fine_tune_lr}: must be > 0"),
            (self.epochs + self.fine_tune_epochs > 0, "--epochs and --fine_tune_epochs are both 0: nothing to train"),
            (
                not self.fine_tune_epochs or self.fine_tune_from,
                "--fine_tune_epochs needs --fine_tune_from (e.g. block5_conv1)",
            ),
            (0 <= self.dropout < 1, f"--dropout={self.dropout}: must be in [0, 1)"),
            (
                len(self.head_units) > 0 and all(u > 0 for u in self.head_units),
                f"--head_units={','.join(map(str, self.head_units))}: must be positive integers",
            ),
            (
                self.steps_per_loop == "auto" or (self.steps_per_loop.isdigit() and int(self.steps_per_loop) >= 1),
                f"--steps_per_loop={self.steps_per_loop}: expected auto or an integer >= 1",
            ),
            (
                _profile_ok(self.profile_steps),
                f"--profile_steps={self.profile_steps}: expected START,END with 1 <= START <= END",
            ),
            (
                not self.data_service
                or self.data_service == "vertex"
                or re.fullmatch(r"grpc://[^/:]+:\d+", self.data_service),
                f"--data_service={self.data_service}: expected grpc://HOST:PORT (or vertex, in a launch.vertex job)",
            ),
            (
                not (self.data_service and self.cache),
                "--cache and --data_service: decoded images cannot be kept here when the service's workers decode",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


def resume_rules() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(fixed, free): the settings a resume may not change (they are in the run's fingerprint) and those it may.
    --data_dir, --model_dir and --fresh are neither: the records' content is fingerprinted, not their folder."""
    return fields_with(TrainConfig, "resume", "fixed"), fields_with(TrainConfig, "resume", "free")


def check_training_splits(manifest: dict, data_dir: str, batch_size: int) -> None:
    """UserError unless the dataset has train and validation splits and a train split of at least one batch."""
    for split in ("train", "validation"):
        if split not in manifest["splits"]:
            raise UserError(f"data folder {data_dir} has no {split} split")
    train = manifest["splits"]["train"]["num_examples"]
    if batch_size > train:
        raise UserError(f"--batch_size={batch_size} is larger than the train split ({train} images)")


def check_data_folder(data_dir: str, batch_size: int) -> None:
    """The checks of a local data folder that need no TensorFlow (manifest, _SUCCESS, splits, batch size), made
    before it starts so that they fail in a second; data.load_for_training then verifies the shards. A remote
    folder is checked there only (its filesystem is TensorFlow's)."""
    if fileio.is_remote(data_dir):
        return
    from dataset_format.manifest import read_manifest

    check_training_splits(read_manifest(data_dir), data_dir, batch_size)


def trained_metrics(model_dir: str) -> dict:
    """metrics.json of a trained model_dir (flags, data_dir, test metrics), or {}."""
    path = fileio.join(model_dir, "metrics.json")
    return json.loads(fileio.read_bytes(path)) if fileio.exists(path) else {}


def trained_model_file(model_dir: str) -> str:
    """model_dir's model.keras; UserError when model_dir is a file or holds none."""
    if fileio.exists(model_dir) and not fileio.isdir(model_dir):
        raise UserError(f"--model_dir={model_dir} is a file, not a trainer.main output folder")
    path = fileio.join(model_dir, "model.keras")
    if not fileio.exists(path):
        raise UserError(
            f"{model_dir} has no model.keras: train with python -m trainer.main --model_dir={model_dir} first"
        )
    return path
