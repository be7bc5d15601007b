"""Every use of Beam's private APIs, in one place, and the Beam versions they are tested with.

Tested with apache-beam 2.60 - 2.77 (setup.cfg caps the version below the next minor release until it is tried).
What is private here and why:
  - `_BeamArgumentParser` + each PipelineOptions subclass's `_add_argparse_args`: to tell Beam flags from typos,
    since PipelineOptions silently drops flags it does not know;
  - `fn_runner.FnApiRunner` with a ProvisionInfo: the local runner DirectRunner builds, minus its attempt to
    download and start Prism, with the options handed on to multi_processing worker processes. Those workers are
    started by our own command line, Beam's own plus SIGINT ignored: Ctrl-C reaches the whole process group, and
    it is the main process's to handle (each worker would print tracebacks). On Ctrl-C the main process kills its
    workers itself (`stop_workers_on_ctrl_c`): Beam's teardown waits for workers that may never see the end of
    their control stream;
  - `auth._Credentials`: against a GCS emulator (STORAGE_EMULATOR_HOST), Beam would spend ~22 s retrying to find
    Google credentials before it connects anonymously, which is what an emulator needs; we say so at once.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shlex
import signal
import sys
import threading
from typing import List, Optional, Sequence, Tuple

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from celeba_common import cli

TESTED_BEAM_VERSIONS = ("2.60", "2.77")
_LOCAL_RUNNERS = (None, "DirectRunner", "direct")
# Runners whose options are registered only when their module is imported.
_OPTIONAL_RUNNER_MODULES = ("apache_beam.runners.dask.dask_runner",)


# Runners Beam knows only by their module path; --runner=DaskRunner is taken as short for it.
_RUNNER_ALIASES = {
    "daskrunner": "apache_beam.runners.dask.dask_runner.DaskRunner",
    "dask": "apache_beam.runners.dask.dask_runner.DaskRunner",
}


def expand_runner_alias(beam_args: Sequence[str]) -> List[str]:
    """The Beam args with --runner=DaskRunner spelled as the module path Beam needs."""
    out = []
    for arg in beam_args:
        if arg.startswith("--runner=") and arg.split("=", 1)[1].lower() in _RUNNER_ALIASES:
            arg = f"--runner={_RUNNER_ALIASES[arg.split('=', 1)[1].lower()]}"
        out.append(arg)
    return out


def _register_runner_options() -> None:
    for module in _OPTIONAL_RUNNER_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # that runner's extra is not installed; its flags stay unknown
            pass


def unknown_beam_flags(args: Sequence[str]) -> List[str]:
    """The flags in args that no registered PipelineOptions class knows (after registering optional runners')."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    _register_runner_options()
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in _all_subclasses(PipelineOptions)}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(args))
    return [a for a in unknown if a.startswith("-")]


# Runners whose workers run elsewhere: they cannot see this machine's folders.
_REMOTE_RUNNERS = ("dataflowrunner", "flinkrunner", "sparkrunner", "portablerunner", "prismrunner")


def runner_name(beam_args: Sequence[str]) -> str:
    """The --runner of the Beam args, lower case, with Beam's 'Runner' suffix added when left off; '' when local."""
    runner = PipelineOptions(list(beam_args)).view_as(StandardOptions).runner
    if runner in _LOCAL_RUNNERS:
        return ""
    name = runner.rsplit(".", 1)[-1].lower()
    return name if name.endswith("runner") else name + "runner"


def check_runner(beam_args: Sequence[str]) -> Optional[str]:
    """Error text for a --runner Beam does not know (Beam itself fails late with a ValueError), else None."""
    from apache_beam.runners.runner import _RUNNER_MAP

    runner = PipelineOptions(list(beam_args)).view_as(StandardOptions).runner
    if runner in _LOCAL_RUNNERS or "." in runner:  # a dotted path names a runner class itself
        return None
    if runner.lower() in _RUNNER_MAP or runner.lower() + "runner" in _RUNNER_MAP:
        return None
    known = sorted({path.rsplit(".", 1)[-1] for path in _RUNNER_MAP.values()})
    return f"--runner={runner}: not a Beam runner (known: {', '.join(known)})"


def local_paths_for_remote_runner(beam_args: Sequence[str], paths: dict) -> List[str]:
    """The names of `paths` (name -> path; None skipped) that are local while the runner's workers are remote,
    including Beam's own --temp_location and --staging_location."""
    if runner_name(beam_args) not in _REMOTE_RUNNERS:
        return []
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    cloud = PipelineOptions(list(beam_args)).view_as(GoogleCloudOptions)
    every = {**paths, "temp_location": cloud.temp_location, "staging_location": cloud.staging_location}
    return [name for name, path in every.items() if path and "://" not in path]


def anonymous_gcs_for_emulator() -> None:
    """With STORAGE_EMULATOR_HOST set, Beam's GCS client connects anonymously at once (see the module docstring)."""
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        return
    try:
        from apache_beam.internal.gcp import auth
    except ImportError:  # no GCP extra: no gs:// either
        return
    credentials = getattr(auth, "_Credentials", None)
    if credentials is not None and hasattr(credentials, "_credentials_init"):
        with credentials._credentials_lock:
            credentials._credentials, credentials._credentials_init = None, True


def _all_subclasses(cls) -> List[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def pipeline_options(
    beam_args: Sequence[str], big: bool, worker_log: Optional[str] = None
) -> Tuple[PipelineOptions, Optional[object]]:
    """Beam options from the leftover flags, and the runner: None (Beam picks it from --runner) unless local.

    Locally, a big job (`big`) runs one worker process per core unless --direct_* flags say otherwise; their
    stderr goes to `worker_log` when given (Beam's worker prints the traceback of every failing bundle there, which
    the job then reports once as one line).
    """
    options = PipelineOptions(list(beam_args))
    if options.view_as(StandardOptions).runner not in _LOCAL_RUNNERS:
        return options, None
    from apache_beam.options.pipeline_options import DirectOptions, WorkerOptions
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    direct = options.view_as(DirectOptions)
    if not any(a.startswith(("--direct_num_workers", "--direct_running_mode")) for a in beam_args):
        # Local default: one worker process per core once the data is big enough to pay for their start-up.
        if big and (os.cpu_count() or 1) > 1:
            direct.direct_running_mode = "multi_processing"
            direct.direct_num_workers = os.cpu_count()
    environment = None
    if direct.direct_running_mode == "multi_processing":  # worker processes: our progress, not Beam's chatter
        worker = options.view_as(WorkerOptions)
        worker.default_sdk_harness_log_level = worker.default_sdk_harness_log_level or "WARNING"
        # a failing bundle is raised to the job, which reports it once as one line: not also each worker's
        # traceback of it (the same loggers cli.quiet_logs mutes in this process)
        muted = {name: "CRITICAL" for name in cli.WORKER_NOISE}
        worker.sdk_harness_log_level_overrides = {
            "preprocessing": "INFO",
            **muted,
            **(worker.sdk_harness_log_level_overrides or {}),
        }
        environment = _workers_ignoring_ctrl_c(worker_log)
        direct.direct_running_mode = None  # else FnApiRunner replaces our environment with its own
    # As DirectRunner does it, minus its Prism attempt: the options reach the worker processes too.
    provision = beam_provision_api_pb2.ProvisionInfo(
        pipeline_options=JobServiceHandle.encode_pipeline_options(options.get_all_options(drop_default=True))
    )
    return options, fn_runner.FnApiRunner(
        default_environment=environment, provision_info=fn_runner.ExtendedProvisionInfo(provision)
    )


def _workers_ignoring_ctrl_c(log: Optional[str] = None):
    """Beam's multi_processing worker command, started with SIGINT ignored (kept so through exec and by Python),
    its stderr appended to `log` when given."""
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    redirect = f" 2>>{shlex.quote(log)}" if log else ""
    return SubprocessSDKEnvironment.from_command_string(
        f"trap '' INT; exec {shlex.quote(sys.executable)} -m apache_beam.runners.worker.sdk_worker_main{redirect}"
    )


@contextlib.contextmanager
def stop_workers_on_ctrl_c():
    """While the local pipeline runs, Ctrl-C (SIGINT) kills this process's Beam worker processes, mutes the library
    noise of the teardown that follows, and raises KeyboardInterrupt as usual. A no-op off the main thread or when
    SIGINT is not Python's default handler."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is not signal.default_int_handler:
        yield
        return

    def on_ctrl_c(signum, frame):
        threading.excepthook = lambda args: None  # worker threads now fail on closed channels, as expected
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL + 1)
        for pid in _worker_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_pids() -> List[int]:
    """This process's children that run Beam's SDK worker (Linux /proc; elsewhere none are found)."""
    me, pids = str(os.getpid()), []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = f.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if parent == me and b"sdk_worker_main" in command:
            pids.append(int(entry))
    return pids
