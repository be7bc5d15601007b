"""Every use of Beam's private APIs, in one place, and the Beam versions they are tested with.

Tested with apache-beam 2.60 - 2.77 (setup.cfg caps the version below the next minor release until it is tried).
What is private here and why:
  - `_BeamArgumentParser` + each PipelineOptions subclass's `_add_argparse_args`: to tell Beam flags from typos,
    since PipelineOptions silently drops flags it does not know;
  - `fn_runner.FnApiRunner` with a ProvisionInfo: the local runner DirectRunner builds, minus its attempt to
    download and start Prism, with the options handed on to multi_processing worker processes;
  - `auth._Credentials`: against a GCS emulator (STORAGE_EMULATOR_HOST), Beam would spend ~22 s retrying to find
    Google credentials before it connects anonymously, which is what an emulator needs; we say so at once.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

TESTED_BEAM_VERSIONS = ("2.60", "2.77")
_LOCAL_RUNNERS = (None, "DirectRunner", "direct")
# Runners whose options are registered only when their module is imported.
_OPTIONAL_RUNNER_MODULES = ("apache_beam.runners.dask.dask_runner",)


# Runners Beam knows only by their module path; --runner=DaskRunner is taken as short for it.
_RUNNER_ALIASES = {"daskrunner": "apache_beam.runners.dask.dask_runner.DaskRunner",
                   "dask": "apache_beam.runners.dask.dask_runner.DaskRunner"}


def expand_runner_alias(beam_args: Sequence[str]) -> List[str]:
    """The Beam args with --runner=DaskRunner spelled as the module path Beam needs."""
    out = []
    for arg in beam_args:
        if arg.startswith("--runner=") and arg.split("=", 1)[1].lower() in _RUNNER_ALIASES:
            arg = f"--runner={_RUNNER_ALIASES[arg.split('=', 1)[1].lower()]}"
        out.append(arg)
    return out


def _register_runner_options() -> None:
    import importlib

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


def pipeline_options(beam_args: Sequence[str], big: bool) -> Tuple[PipelineOptions, Optional[object]]:
    """Beam options from the leftover flags, and the runner: None (Beam picks it from --runner) unless local.

    Locally, a big job (`big`) runs one worker process per core unless --direct_* flags say otherwise.
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
    if direct.direct_running_mode == "multi_processing":  # worker processes: our progress, not Beam's chatter
        worker = options.view_as(WorkerOptions)
        worker.default_sdk_harness_log_level = worker.default_sdk_harness_log_level or "WARNING"
        worker.sdk_harness_log_level_overrides = {"preprocessing": "INFO",
                                                  **(worker.sdk_harness_log_level_overrides or {})}
    # As DirectRunner does it, minus its Prism attempt: the options reach the worker processes too.
    provision = beam_provision_api_pb2.ProvisionInfo(
        pipeline_options=JobServiceHandle.encode_pipeline_options(options.get_all_options(drop_default=True)))
    return options, fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(provision))
