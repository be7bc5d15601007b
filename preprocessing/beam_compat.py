"""Every use of Beam's private APIs, in one place, and the Beam versions they are tested with.

Tested with apache-beam 2.60 - 2.77 (setup.cfg caps the version below the next minor release until it is tried).
What is private here and why:
  - `_BeamArgumentParser` + each PipelineOptions subclass's `_add_argparse_args`: to tell Beam flags from typos,
    since PipelineOptions silently drops flags it does not know;
  - `fn_runner.FnApiRunner` with a ProvisionInfo: the local runner DirectRunner builds, minus its attempt to
    download and start Prism, with the options handed on to multi_processing worker processes.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

TESTED_BEAM_VERSIONS = ("2.60", "2.77")
_LOCAL_RUNNERS = (None, "DirectRunner", "direct")
# Runners whose options are registered only when their module is imported.
_OPTIONAL_RUNNER_MODULES = ("apache_beam.runners.dask.dask_runner",)


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
