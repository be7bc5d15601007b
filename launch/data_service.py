"""Runs a tf.data service: one dispatcher and N workers that read and decode the training input for the trainers.

Usage:
  python -m launch.data_service --num_workers=2 --port=5050              # all on this machine, until Ctrl-C
  python -m trainer.main --data_service=grpc://localhost:5050 ...        # then train through it
  python -m launch.data_service --role=dispatcher --port=5050            # on a cluster: one dispatcher ...
  python -m launch.data_service --role=worker --dispatcher=HOST:5050     # ... and a worker on each CPU machine

This is TensorFlow's own distributed input engine (tf.data.experimental.service): the decoding CPUs grow apart from
the GPU hosts. The trainer uses it in distributed_epoch mode (see trainer/data.py and WORKSPACE.md).
`launch.local_cluster --data_service_workers=N` starts one for a local multi-worker run.

Locally the dispatcher and each worker are separate processes, started with PR_SET_PDEATHSIG so that none outlives
the launcher.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from typing import List, Sequence, Tuple

from celeba_common.cli import import_tensorflow_quietly, run_main
from celeba_common.errors import UserError
from celeba_common.flagdefs import define_flags, from_flags, option
from launch.local_cluster import die_with_parent, free_ports, stop_processes

ROLES = ("local", "dispatcher", "worker", "vertex")


@dataclasses.dataclass
class DataService:
    role: str = option(
        "local",
        "local: a dispatcher and --num_workers workers on this machine; dispatcher or "
        "worker: one server of a cluster; vertex: a replica of launch.vertex's data service pool "
        "(the first also runs the dispatcher).",
        choices=ROLES,
    )
    num_workers: int = option(2, "Workers to start (role=local).", lower_bound=1)
    port: int = option(0, "The dispatcher's port (0: a free one).", lower_bound=0, upper_bound=65535)
    dispatcher: str = option("", "HOST:PORT of the dispatcher (role=worker).")
    worker_port: int = option(0, "This worker's port (role=worker; 0: a free one).", lower_bound=0, upper_bound=65535)

    def validate(self) -> None:
        if self.role == "worker" and ":" not in self.dispatcher:
            raise UserError(f"--dispatcher={self.dispatcher!r}: role=worker needs the dispatcher's HOST:PORT")


def serve(role: str, port: int, dispatcher: str = "") -> None:
    """Runs one tf.data server in this process until it is stopped (role=vertex: one or two, from CLUSTER_SPEC)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import_tensorflow_quietly()
    import tensorflow as tf

    service = tf.data.experimental.service
    if role == "vertex":
        from trainer import cluster

        index, host = cluster.vertex_data_service_replica()
        dispatcher = cluster.vertex_data_service().split("://", 1)[1]
        if index == 0:
            keep = service.DispatchServer(service.DispatcherConfig(port=cluster.DATA_SERVICE_PORT))  # noqa: F841
        role, port = "worker", 0
    else:
        local = dispatcher.split(":")[0] in ("127.0.0.1", "localhost")
        host = "localhost" if local else socket.getfqdn()
    if role == "dispatcher":
        server = service.DispatchServer(service.DispatcherConfig(port=port))
    else:  # it advertises the address the trainers reach it at: on Vertex AI, its own host in CLUSTER_SPEC
        server = service.WorkerServer(
            service.WorkerConfig(dispatcher_address=dispatcher, port=port, worker_address=f"{host}:%port%")
        )
    print(f"tf.data service {role} serving on port {port or 'any'}", flush=True)
    server.join()


def _wait_for_port(port: int, processes: List[subprocess.Popen], timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(p.poll() is not None for p in processes):
            raise UserError("the tf.data service failed to start; see its output above")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise UserError(f"the tf.data service dispatcher did not listen on port {port} within {timeout:.0f} s")


def start_local(num_workers: int, port: int = 0) -> Tuple[str, List[subprocess.Popen]]:
    """Starts a dispatcher and num_workers workers as processes; returns (grpc://127.0.0.1:PORT, processes) once the
    dispatcher listens. Stop them with stop_local."""
    port = port or free_ports(1)[0]
    command = [sys.executable, "-m", "launch.data_service"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    processes = [
        subprocess.Popen(
            [*command, "--role=dispatcher", f"--port={port}"],
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
            stdout=subprocess.DEVNULL,
        )
    ]
    try:
        _wait_for_port(port, processes)
        for _ in range(num_workers):
            processes.append(
                subprocess.Popen(
                    [*command, "--role=worker", f"--dispatcher=127.0.0.1:{port}"],
                    env=env,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                    stdout=subprocess.DEVNULL,
                )
            )
    except BaseException:
        stop_local(processes)
        raise
    return f"grpc://127.0.0.1:{port}", processes


def stop_local(processes: List[subprocess.Popen]) -> None:
    stop_processes(processes, grace=5.0)


def main(argv: Sequence[str]) -> int:
    config = from_flags(DataService)
    config.validate()
    if config.role != "local":
        serve(config.role, config.port, config.dispatcher)
        return 0
    address, processes = start_local(config.num_workers, config.port)
    print(
        f"tf.data service at {address}: a dispatcher and {config.num_workers} workers; train with "
        f"--data_service={address}. Ctrl-C stops it.",
        flush=True,
    )
    stopped = []
    previous = signal.signal(signal.SIGTERM, lambda *a: stopped.append(1))
    try:
        while not stopped and all(p.poll() is None for p in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        failed = [p for p in processes if p.poll() not in (None, 0)]
        stop_local(processes)
    if failed and not stopped:
        raise UserError("a tf.data service process exited early; the service is stopped")
    return 0


def cli() -> None:
    run_main(main, define_flags=lambda: define_flags(DataService))


if __name__ == "__main__":
    cli()
