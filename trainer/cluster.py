"""Where this process sits in a cluster: TF_CONFIG, or Vertex AI's CLUSTER_SPEC converted to it, and who writes.

Vertex AI describes a multi-replica job as CLUSTER_SPEC = {"cluster": {"workerpool0": [chief], "workerpool1":
[workers...]}, "task": {"type": "workerpool0", "index": 0}}; TensorFlow wants TF_CONFIG with chief/worker tasks.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Tuple

from celeba_common.errors import UserError

_POOL_TO_TASK = {"workerpool0": "chief", "workerpool1": "worker", "workerpool2": "ps"}
# launch.vertex puts a tf.data service in pool 3 (its first replica also runs the dispatcher): not a TF task.
DATA_SERVICE_POOL = "workerpool3"
DATA_SERVICE_PORT = 5050


def vertex_data_service(environ=None) -> str:
    """grpc://HOST:PORT of the tf.data service dispatcher of this Vertex AI job (CLUSTER_SPEC's pool 3)."""
    environ = os.environ if environ is None else environ
    try:
        hosts = json.loads(environ.get("CLUSTER_SPEC") or "{}").get("cluster", {}).get(DATA_SERVICE_POOL) or []
    except (ValueError, AttributeError):
        hosts = []
    if not hosts:
        raise UserError(
            "--data_service=vertex: CLUSTER_SPEC names no data service pool (launch.vertex "
            "--data_service_workers=N adds it)"
        )
    return f"grpc://{hosts[0].rsplit(':', 1)[0]}:{DATA_SERVICE_PORT}"


def vertex_data_service_replica(environ=None) -> Tuple[int, str]:
    """(index, host) of this replica of the data service pool, from CLUSTER_SPEC: on Vertex AI only the host names
    listed there are sure to resolve between replicas (not what the machine calls itself)."""
    environ = os.environ if environ is None else environ
    try:
        spec = json.loads(environ.get("CLUSTER_SPEC") or "{}")
        index = int(spec["task"]["index"])
        return index, spec["cluster"][DATA_SERVICE_POOL][index].rsplit(":", 1)[0]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise UserError(
            "--role=vertex: CLUSTER_SPEC does not name this replica of the data service pool "
            f"({DATA_SERVICE_POOL}); run it through launch.vertex --data_service_workers=N"
        ) from None


def cluster_spec_to_tf_config(cluster_spec: dict) -> dict:
    """Vertex AI's CLUSTER_SPEC -> TF_CONFIG (chief = workerpool0, workers = workerpool1, ...)."""
    try:
        cluster = {
            _POOL_TO_TASK[pool]: list(hosts)
            for pool, hosts in cluster_spec["cluster"].items()
            if hosts and pool != DATA_SERVICE_POOL
        }
        task = cluster_spec["task"]
        return {"cluster": cluster, "task": {"type": _POOL_TO_TASK[task["type"]], "index": int(task["index"])}}
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"CLUSTER_SPEC is not a Vertex AI cluster spec ({type(e).__name__}: {e})") from None


def tf_config(environ=None) -> Optional[dict]:
    """The TF_CONFIG in effect (from TF_CONFIG, else from CLUSTER_SPEC), or None on a single machine."""
    environ = os.environ if environ is None else environ
    for name, convert in (("TF_CONFIG", lambda c: c), ("CLUSTER_SPEC", cluster_spec_to_tf_config)):
        raw = environ.get(name)
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                raise UserError(f"{name} is not valid JSON") from None
            if not isinstance(parsed, dict):
                raise UserError(f"{name} must be a JSON object with 'cluster' and 'task', not {type(parsed).__name__}")
            config = convert(parsed)
            if config.get("cluster"):
                _check_task(name, config)
                return config
    return None


def _check_task(name: str, config: dict) -> None:
    """UserError unless the cluster maps task types to lists of host:port and the task names one of them."""
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not all(isinstance(h, list) for h in cluster.values()):
        raise UserError(f"{name}: 'cluster' must map task types to lists of host:port")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise UserError(f"{name}: 'task' must name a type of the cluster ({', '.join(cluster)})")
    index, hosts = task.get("index", 0), cluster[task["type"]]
    if not isinstance(index, int) or not 0 <= index < len(hosts):
        raise UserError(
            f"{name}: task index {index!r} is out of range: the cluster has {len(hosts)} "
            f"{task['type']} task{'s' if len(hosts) != 1 else ''}"
        )


def num_tasks(config: Optional[dict]) -> int:
    if not config:
        return 1
    return sum(len(hosts) for kind, hosts in config["cluster"].items() if kind in ("chief", "worker"))


def is_chief(config: Optional[dict]) -> bool:
    """The chief writes checkpoints, logs and exports: the 'chief' task, else worker 0, else a lone process."""
    if not config:
        return True
    task = config.get("task", {})
    if "chief" in config["cluster"]:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def worker_index(config: Optional[dict]) -> int:
    """This process's place among the chief and workers (0 = the chief, or worker 0 when there is none): the input
    pipeline id MultiWorkerMirroredStrategy gives it."""
    if not config:
        return 0
    task = config.get("task", {})
    if task.get("type") == "chief":
        return 0
    return int(task.get("index", 0)) + (1 if "chief" in config["cluster"] else 0)


def task_id(config: Optional[dict]) -> str:
    if not config:
        return "chief"
    task = config.get("task", {})
    return f"{task.get('type', 'worker')}-{task.get('index', 0)}"


def check_cpu_devices(num_cpu_devices: int, config: Optional[dict]) -> None:
    """UserError for --num_cpu_devices > 1 in a cluster: MultiWorkerMirroredStrategy gives each worker one CPU device
    (on GPUs, each worker uses all of its GPUs), so the split would be silently ignored."""
    if num_cpu_devices > 1 and num_tasks(config) > 1:
        raise UserError(
            f"--num_cpu_devices={num_cpu_devices} splits one process's CPU for MirroredStrategy; in a "
            f"cluster of {num_tasks(config)} tasks each worker uses one CPU device: drop the flag (or run "
            f"one process)"
        )


def ensure_tf_config(environ=None) -> Optional[dict]:
    """Makes TF_CONFIG reflect CLUSTER_SPEC when only the latter is set (so TensorFlow sees the cluster)."""
    environ = os.environ if environ is None else environ
    config = tf_config(environ)
    if config and not environ.get("TF_CONFIG"):
        environ["TF_CONFIG"] = json.dumps(config)
    return config


def vertex_defaults(environ=None) -> dict:
    """Output folders Vertex AI hands a job: AIP_MODEL_DIR, AIP_CHECKPOINT_DIR, AIP_TENSORBOARD_LOG_DIR."""
    environ = os.environ if environ is None else environ
    return {
        key: environ[var]
        for key, var in (
            ("model_dir", "AIP_MODEL_DIR"),
            ("checkpoint_dir", "AIP_CHECKPOINT_DIR"),
            ("tensorboard_dir", "AIP_TENSORBOARD_LOG_DIR"),
        )
        if environ.get(var)
    }
