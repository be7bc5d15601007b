"""Choosing the tf.distribute strategy and the mixed-precision policy for the machine at hand."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Callable, Tuple

from celeba_common.errors import UserError
from trainer import cluster
from trainer.config import CROSS_DEVICE_OPS, PRECISIONS, STRATEGIES

LOG = logging.getLogger("trainer")


def split_cpu(num_devices: int) -> None:
    """Makes the CPU appear as num_devices logical devices (to try MirroredStrategy without GPUs).

    Must run before TensorFlow initializes its devices.
    """
    import tensorflow as tf

    if num_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)


def _cross_device_ops(name: str):
    import tensorflow as tf

    return {
        "auto": None,
        "nccl": tf.distribute.NcclAllReduce(),
        "hierarchical_copy": tf.distribute.HierarchicalCopyAllReduce(),
        "reduction_to_one_device": tf.distribute.ReductionToOneDevice(),
    }[name]


def make_strategy(name: str = "auto", cross_device_ops: str = "auto"):
    """auto: multi-worker when the cluster has >1 task, mirrored over >1 GPU (or logical CPU), one GPU, else default."""
    import tensorflow as tf

    if name not in STRATEGIES or cross_device_ops not in CROSS_DEVICE_OPS:  # the caller's mistake: TrainConfig
        raise ValueError(f"unknown strategy {name!r} or cross-device ops {cross_device_ops!r}")  # checks the flags
    config = cluster.ensure_tf_config()
    if name == "auto" and cluster.num_tasks(config) > 1:
        name = "multi_worker"
    if name == "multi_worker":  # before anything initializes TensorFlow's devices: collectives need it so
        if cluster.num_tasks(config) < 2:
            raise UserError("--strategy=multi_worker needs TF_CONFIG or CLUSTER_SPEC naming at least 2 tasks")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "auto":
        if len(gpus) > 1 or (not gpus and len(cpus) > 1):
            name = "mirrored"
        elif gpus:
            name = "one_device"
        else:
            return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in (gpus or cpus)]
        return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=_cross_device_ops(cross_device_ops))
    return tf.distribute.OneDeviceStrategy((gpus or cpus)[0].name)


def check_global_batch(strategy, batch_size: int) -> int:
    """The number of replicas in sync; UserError when the global batch does not split evenly over them."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UserError(
            f"--batch_size={batch_size} does not divide by the {replicas} replicas in sync; use a "
            f"multiple of {replicas}"
        )
    return replicas


def local_replicas(strategy) -> int:
    """The replicas of `strategy` on this worker (its devices; 1 for the default strategy)."""
    try:
        return len(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy has no device list
        return 1


class Votes:
    """Cluster-wide yes/no questions: a traced collective that every worker must join (so also a barrier).

    Each worker's value enters the sum once, from its first local replica, whatever the strategy: the default and
    one-device strategies (1 replica), MirroredStrategy (N replicas of one worker) and MultiWorkerMirroredStrategy
    (1 or more replicas on each of several workers).
    """

    def __init__(self, strategy):
        import tensorflow as tf

        local = local_replicas(strategy)

        def first_local_replica_only(value):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            return tf.where(tf.equal(replica % local, 0), value, tf.zeros_like(value))

        @tf.function
        def vote(value):
            return strategy.reduce(
                tf.distribute.ReduceOp.SUM, strategy.run(first_local_replica_only, args=(value,)), axis=None
            )

        self._vote, self._tf = vote, tf
        self.workers = max(1, strategy.num_replicas_in_sync // local)

    def mean(self, value: float) -> float:
        """The mean of `value` over all workers: the same number on every worker."""
        return float(self._vote(self._tf.constant(float(value)))) / self.workers

    def any_worker(self, flag: bool) -> bool:
        """Whether `flag` is true on any worker."""
        return float(self._vote(self._tf.constant(1.0 if flag else 0.0))) > 0

    def barrier(self) -> None:
        """Returns once every worker has reached it."""
        self.any_worker(False)


_WATCHDOG = """import os, signal, sys, time
parent, wait, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
time.sleep(wait)
if os.getppid() == parent:  # still waiting: say why, and end it
    sys.stderr.write(message + chr(10))
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)
"""


def meet(make: Callable[[], object], wait_seconds: float) -> Tuple[object, Votes]:
    """(strategy, its Votes): the strategy made by `make`, then a first barrier. In a cluster every worker must get
    there within `wait_seconds`: TensorFlow itself waits forever (inside MultiWorkerMirroredStrategy's constructor,
    holding the interpreter, so no Python thread or signal handler runs) for a worker that never started. A small
    watchdog process then says so in one line and ends this one."""
    workers = cluster.num_tasks(cluster.tf_config())
    watchdog = None
    if workers > 1:
        message = (
            f"error: not every worker of the {workers}-task cluster joined within {wait_seconds:g} s "
            f"(--cluster_wait); check that each task of TF_CONFIG / CLUSTER_SPEC was started and can be reached"
        )
        watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(wait_seconds), message],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
    try:
        strategy = make()
        votes = Votes(strategy)
        votes.barrier()
    finally:
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
    return strategy, votes


def strategy_name(strategy) -> str:
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"  # its class is CollectiveAllReduceStrategy
    name = type(strategy).__name__
    return "default strategy" if name.startswith("_Default") else name


def describe(strategy) -> str:
    replicas = strategy.num_replicas_in_sync
    return f"{strategy_name(strategy)}, {replicas} replica{'s' if replicas != 1 else ''} in sync"


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(requested: str = "auto") -> str:
    """auto: mixed_float16 on GPUs of compute capability >= 7, mixed_bfloat16 on TPUs and bf16 CPUs, else float32."""
    import tensorflow as tf

    if requested not in PRECISIONS:  # the caller's mistake: --precision is checked by TrainConfig
        raise ValueError(f"unknown precision {requested!r}, expected one of {PRECISIONS}")
    if requested != "auto":
        return requested
    if tf.config.list_logical_devices("TPU"):
        return "mixed_bfloat16"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)) for g in gpus]
        return "mixed_float16" if all(c and c[0] >= 7 for c in capabilities) else "float32"
    return "mixed_bfloat16" if _cpu_has_bf16() else "float32"


def use_xla(setting: str) -> bool:
    """--jit_compile: on, off, or auto (on when there are GPUs; on CPUs XLA compiles slowly for no gain here)."""
    import tensorflow as tf

    return setting == "on" or (setting == "auto" and bool(tf.config.list_logical_devices("GPU")))


def set_precision(policy: str) -> None:
    import keras

    keras.mixed_precision.set_global_policy(policy)
