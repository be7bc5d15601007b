"""Runs N trainer processes on this machine as a MultiWorkerMirroredStrategy cluster on 127.0.0.1.

Usage:
  python -m launch.local_cluster --num_workers=2 -- --data_dir=tfrecords/celeba --batch_size=64

Each worker gets a TF_CONFIG naming all of them (free ports) and its own index; worker 0 is the chief. Output
lines are prefixed with `[worker i]`. If any worker fails, the others are stopped and the launcher exits with that
worker's status; no process is left behind, even when the launcher itself is killed with SIGKILL (the workers are
started with PR_SET_PDEATHSIG). With --data_service_workers=N, a tf.data service (launch.data_service) is started
first and the workers train through it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence

from celeba_common.cli import passthrough_args, run_main
from celeba_common.errors import UserError
from celeba_common.flagdefs import define_flags, from_flags, option


@dataclasses.dataclass
class LocalCluster:
    num_workers: int = option(2, "Worker processes to start.", lower_bound=1)
    module: str = option("trainer.main", "Python module each worker runs.")
    grace_seconds: float = option(10.0, "How long stopped workers get between SIGTERM and SIGKILL.")
    data_service_workers: int = option(
        0,
        "Also start a tf.data service (a dispatcher and this many workers) and "
        "train through it (--data_service); 0: none.",
        lower_bound=0,
    )


def free_ports(count: int) -> List[int]:
    """Ports the OS reports free on 127.0.0.1 (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_configs(num_workers: int, ports: Optional[Sequence[int]] = None) -> List[dict]:
    ports = list(ports or free_ports(num_workers))
    hosts = [f"127.0.0.1:{p}" for p in ports]
    return [{"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}} for i in range(num_workers)]


def die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGKILL when the launcher dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the launcher's own cleanup is all there is
        pass


def _pump(index: int, stream, lock: threading.Lock) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            sys.stdout.write(f"[worker {index}] {line if line.endswith(chr(10)) else line + chr(10)}")
            sys.stdout.flush()
    stream.close()


def stop_processes(processes: List[subprocess.Popen], grace: float) -> None:
    for p in processes:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + grace
    for p in processes:
        try:
            p.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
    for p in processes:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def run_cluster(num_workers: int, args: Sequence[str], module: str = "trainer.main", grace: float = 10.0) -> int:
    """Starts the workers, relays their output, returns 0 or the first failing worker's exit status."""
    lock = threading.Lock()
    processes: List[subprocess.Popen] = []
    pumps = []
    interrupted = []

    def on_signal(signum, frame):
        interrupted.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index, config in enumerate(tf_configs(num_workers)):
            worker_env = {**os.environ, "TF_CONFIG": json.dumps(config), "PYTHONUNBUFFERED": "1"}
            worker_env.pop("CLUSTER_SPEC", None)
            p = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env=worker_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            processes.append(p)
            t = threading.Thread(target=_pump, args=(index, p.stdout, lock), daemon=True)
            t.start()
            pumps.append(t)
        status = 0
        while True:
            if interrupted:
                status = 128 + interrupted[0]
                break
            codes = [p.poll() for p in processes]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                index, status = failed[0]
                with lock:
                    sys.stderr.write(f"worker {index} exited with status {status}; stopping the others\n")
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(0.1)
        return status
    finally:
        stop_processes(processes, grace)
        for t in pumps:
            t.join(timeout=5)
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: Sequence[str]) -> int:
    config = from_flags(LocalCluster)
    args, service = list(passthrough_args(argv)), []
    for arg in args:  # each worker has one CPU device under MultiWorkerMirroredStrategy
        name, _, value = arg.partition("=")
        if name == "--num_cpu_devices" and value.strip() not in ("", "0", "1"):
            raise UserError(
                f"{arg}: each worker of a local cluster trains on one CPU device; drop it (or try "
                f"MirroredStrategy in one process: python -m trainer.main {arg})"
            )
    if config.data_service_workers:
        from launch import data_service

        address, service = data_service.start_local(config.data_service_workers)
        print(f"tf.data service at {address}: a dispatcher and {config.data_service_workers} workers", flush=True)
        args.append(f"--data_service={address}")
    try:
        status = run_cluster(config.num_workers, args, config.module, config.grace_seconds)
    finally:
        stop_processes(service, 5.0)
    if status:
        raise UserError(f"the local cluster failed (status {status}); see the worker output above")
    return 0


def cli() -> None:
    run_main(main, define_flags=lambda: define_flags(LocalCluster))


if __name__ == "__main__":
    cli()
