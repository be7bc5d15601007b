"""Shared command-line plumbing of every entry point: one-line errors instead of tracebacks, absl flag parsing.

Every command of the project (records job, trainer, launchers) runs through `run_main`, so a bad input anywhere
ends the same way: `error: <what is wrong>` on stderr, exit status 2, no Python traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from typing import Callable, List, Optional, Sequence

from absl import app, flags

from celeba_common.errors import UserError


def passthrough_args(argv: Sequence[str]) -> List[str]:
    """The arguments after the program's own flags (and after a `--`), handed on to another command."""
    args = list(argv[1:])
    return args[1:] if args and args[0] == "--" else args


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


HELP_FLAGS = ("-h", "-help", "--help", "--helpshort", "--helpfull")


def print_help() -> None:
    """The entry point's usage (its module docstring) and its own flags, with their defaults."""
    doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
    lines = [doc, "", "flags:"] if doc else ["flags:"]
    for module, defined in sorted(flags.FLAGS.flags_by_module_dict().items()):
        if module.startswith("absl"):
            continue
        for flag in sorted(defined, key=lambda f: f.name):
            default = "" if flag.default is None else f" (default: {flag.default_as_str})"
            lines.append(f"  --{flag.name}: {' '.join(flag.help.split())}{default}")
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # `--help | head` closed the pipe: what was wanted was read; no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _parser(known_only: bool) -> Callable[[List[str]], List[str]]:
    def parse(argv: List[str]) -> List[str]:
        own = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
        if any(arg in HELP_FLAGS for arg in own):  # help is an answer, not an error: exit 0
            print_help()
            sys.exit(0)
        try:
            return flags.FLAGS(argv, known_only=known_only)
        except flags.Error as e:
            sys.stderr.write(f"error: {_one_line(e)}\n")
            sys.exit(2)

    return parse


WORKER_NOISE = (
    "apache_beam.runners.common",
    "apache_beam.runners.worker.bundle_processor",
    "apache_beam.runners.worker.sdk_worker",
    "apache_beam.runners.portability.fn_api_runner.fn_runner",
)


class _DropNoise(logging.Filter):
    _NOISE = ("apitools not found", "Converting string literal type hint")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in str(record.msg) for n in self._NOISE)


_LIBRARIES = ("apache_beam", "absl", "tensorflow", "keras", "h5py", "matplotlib", "PIL", "urllib3")


class _LibraryInfo(logging.Filter):
    """Drops the libraries' INFO/DEBUG records at the handler, whatever levels the libraries reset later."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(_LIBRARIES)


class _PlainFormatter(logging.Formatter):
    """Our log lines without absl's prefix (`I1129 20:53:57.994505 140202722708352 train.py:372]`): INFO as the
    message itself, other levels as `WARNING: message` (never `error:`, which is the one-line error contract's)."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno == logging.INFO else f"{record.levelname}: {message}"


def quiet_logs() -> None:
    """INFO for this project's loggers, WARNING for the libraries', and none of their known noise.

    run_main calls it before the entry point defines its flags (and so before Beam or TensorFlow are imported).
    """
    root = logging.getLogger()
    if not any(isinstance(f, _DropNoise) for f in root.filters):
        root.addFilter(_DropNoise())
    root.setLevel(logging.INFO)
    # tf.data says this whenever a distributed dataset is iterated inside a tf.function; nothing for a user to do
    warnings.filterwarnings("ignore", message="To make it possible to preserve tf.data options")
    for noisy in ("apache_beam", "absl", "tensorflow", "h5py", "matplotlib", "PIL", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # re-logs what Beam's local worker processes say at start-up (no staging folder: expected locally)
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    # a failing bundle is logged with its traceback there, and then raised to the job, which reports it once
    for worker in WORKER_NOISE:
        logging.getLogger(worker).setLevel(logging.CRITICAL)


_TF_NOISE = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ")
_NO_GPU = "failed call to cuInit"  # a CPU-only machine: TensorFlow then runs on the CPU, as the logs say


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its C++ start-up chatter (oneDNN, CUDA stubs) removed from stderr; real errors stay.

    Those lines are written before absl logging starts, so TF_CPP_MIN_LOG_LEVEL cannot silence them.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow

            tensorflow.config.list_physical_devices()  # device discovery logs its own chatter
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith(_TF_NOISE) and _NO_GPU not in line:
                    sys.stderr.write(line)


def import_tensorflow_for_remote(*paths: Optional[str], writes: Sequence[Optional[str]] = ()) -> None:
    """When any path is remote: checks, within seconds, that Cloud Storage answers and that there are credentials to
    write `writes` (fileio.check_gcs), before TensorFlow's start-up; then imports TensorFlow quietly, because the
    trainer's processes reach gs:// through TensorFlow's filesystems (fileio), so even their cheap checks of a remote
    path need it."""
    if any(path and "://" in path for path in (*paths, *writes)):
        from celeba_common import fileio

        fileio.check_gcs([*paths, *writes], writes=writes, tensorflow=True)
        import_tensorflow_quietly()


def run_main(
    main: Callable[[Sequence[str]], object], define_flags: Optional[Callable[[], None]] = None, known_only: bool = False
) -> None:
    """Runs `main(argv)` under absl; UserError (and flag errors) become one line on stderr and exit status 2.

    define_flags() defines the entry point's flags (flags live in entry points only, never at import);
    known_only=True leaves flags this program does not define in argv (the records job hands them to Beam).
    An entry point that uses TensorFlow calls import_tensorflow_quietly() once its cheap checks passed, so that bad
    flags and missing files fail in about a second, not after TensorFlow's few seconds of start-up.
    """

    def wrapped(argv: Sequence[str]):
        for handler in logging.getLogger().handlers:  # absl's handler exists once flags are parsed
            handler.addFilter(_LibraryInfo())
            handler.addFilter(_DropNoise())
            handler.setFormatter(_PlainFormatter())
        try:
            result = main(argv)
        except UserError as e:
            sys.stderr.write(f"error: {_one_line(e)}\n")
            sys.exit(2)
        except KeyboardInterrupt:
            sys.stderr.write("error: interrupted\n")
            sys.exit(130)
        except OSError as e:  # files, permissions, full disks: the environment, not a bug to trace
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            sys.stderr.write(f"error: {where}{_one_line(e.strerror or e)}\n")
            sys.exit(2)
        return result if isinstance(result, int) else 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet_logs()
    if define_flags is not None:
        define_flags()
    app.run(wrapped, flags_parser=_parser(known_only))
