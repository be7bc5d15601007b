"""One trainer per run folder: the second trainer.main started on a --model_dir in use stops in one line.

Locally the chief holds an exclusive flock on MODEL_DIR/.lock for its lifetime; the kernel releases it when the
process ends however it ends (SIGKILL included), so a crash never leaves a stale lock. Remote folders (gs://) have
no locks: the chief writes a lease (MODEL_DIR/_RUNNING) and renews it every RENEW_SECONDS from a thread. A trainer
that finds a lease watches it: renewed, it refuses; left unrenewed for STALE_RENEWALS renewals (its holder died:
a preempted Vertex worker, say) it takes over, so a restarted job waits about a minute and resumes.
Only the chief locks: the other workers of a cluster share its model_dir by design.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Optional

from celeba_common import fileio
from celeba_common.errors import UserError

LOCK, LEASE = ".lock", "_RUNNING"
RENEW_SECONDS, STALE_RENEWALS = 20.0, 3
_held: list = []  # what this process holds, for its lifetime (a flock's file object; a lease's renewer)


def _holder_text(holder: Optional[dict]) -> str:
    if not holder:
        return "another trainer"
    return (
        f"another trainer (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since "
        f"{holder.get('since', '?')})"
    )


def _me() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "token": uuid.uuid4().hex,
        "renewal": 0,
    }


def hold(model_dir: str, renew_seconds: float = RENEW_SECONDS) -> None:
    """Locks model_dir for this process's lifetime; UserError naming the holder when another trainer has it."""
    if fileio.is_remote(model_dir):
        _lease(model_dir, renew_seconds)
    else:
        _flock(model_dir)


def _flock(model_dir: str) -> None:
    os.makedirs(model_dir, exist_ok=True)
    handle = open(os.path.join(model_dir, LOCK), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _parse(handle.read())
        handle.close()
        raise UserError(
            f"{_holder_text(holder)} is training in {model_dir}; wait for it to end, or pass another --model_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(_me()))
    handle.flush()
    _held.append(handle)


def _parse(text) -> Optional[dict]:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _read_lease(path: str) -> Optional[dict]:
    return _parse(fileio.read_bytes(path)) if fileio.exists(path) else None


def _lease(model_dir: str, renew_seconds: float) -> None:
    path = fileio.join(model_dir, LEASE)
    seen = _read_lease(path)
    if seen is not None:  # watch it: a live holder renews it, a dead one does not
        deadline = time.monotonic() + STALE_RENEWALS * renew_seconds
        while time.monotonic() < deadline:
            time.sleep(min(renew_seconds / 4, 5.0))
            now = _read_lease(path)
            if now is None:
                break  # released meanwhile
            if now != seen:
                raise UserError(
                    f"{_holder_text(now)} is training in {model_dir} (it renews its lease {LEASE}); "
                    f"wait for it to end, or pass another --model_dir"
                )
    me = _me()
    fileio.write_bytes(path, json.dumps(me).encode())
    stop = threading.Event()

    def renew():
        while not stop.wait(renew_seconds):
            if (_read_lease(path) or {}).get("token") != me["token"]:
                return  # taken over (we looked dead): the new holder's lease stays
            me["renewal"] += 1
            fileio.write_bytes(path, json.dumps(me).encode())

    threading.Thread(target=renew, daemon=True, name="run-lease").start()

    def release():
        stop.set()
        if (_read_lease(path) or {}).get("token") == me["token"]:
            fileio.remove(path)

    atexit.register(release)
    _held.append(stop)
