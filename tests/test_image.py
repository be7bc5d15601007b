"""The trainer image: launch/Dockerfile's COPY lines replayed into a bare folder (the build context filtered by
.dockerignore), the project installed from that folder alone, and every command a Vertex AI job runs in the image
started from outside the checkout on that install.

There is no Docker registry here (the TensorFlow base image cannot be pulled), so the base image's part, TensorFlow
and the other dependencies, comes from the test's own environment; what the Dockerfile itself contributes, the
project's files and their install, is exactly what runs.
"""

import fnmatch
import importlib.metadata
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT, free_port, wait_for_port

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not

DOCKERFILE = os.path.join(ROOT, "launch", "Dockerfile")


def _instructions(path):
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in open(path).read().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def _ignored(relative, patterns):
    """Whether .dockerignore's patterns leave `relative` (or a folder above it) out of the build context."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


def _replay_copies(image_root):
    """Applies the Dockerfile's WORKDIR and COPY lines to image_root; returns the last WORKDIR before the RUN that
    installs (where the sources were copied)."""
    patterns = [
        line.strip()
        for line in open(os.path.join(ROOT, ".dockerignore")).read().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not replayed here"
    workdir, source_dir = "/", None
    for word, args in _instructions(DOCKERFILE):
        if word == "WORKDIR":
            workdir = os.path.join(workdir, args)
        elif word == "COPY":
            *sources, dest = shlex.split(args)
            assert not any(s.startswith("--") for s in sources), "COPY --from/--chown are not replayed here"
            target = os.path.join(image_root, os.path.join(workdir, dest).lstrip("/"))
            for source in sources:
                base = os.path.normpath(os.path.join(ROOT, source))
                if os.path.isfile(base):  # a file goes into the destination folder
                    found = [(base, os.path.join(target, os.path.basename(base)))]
                else:  # a folder's content goes into the destination
                    found = [
                        (os.path.join(folder, name), os.path.join(target, os.path.relpath(folder, base), name))
                        for folder, _, files in os.walk(base)
                        for name in files
                    ]
                for path, out in found:
                    if not _ignored(os.path.relpath(path, ROOT), patterns):
                        os.makedirs(os.path.dirname(out), exist_ok=True)
                        shutil.copy2(path, out)
        elif word == "RUN" and "pip install" in args:
            source_dir = workdir
    assert source_dir, "the Dockerfile has no RUN pip install"
    return os.path.join(image_root, source_dir.lstrip("/"))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """(python, environment) of a venv holding the project as the Dockerfile installs it, and nothing of the
    checkout; its dependencies are this environment's site-packages, added as a plain path (so the editable
    install of the checkout there is not loaded)."""
    work = tmp_path_factory.mktemp("image")
    sources = _replay_copies(str(work / "root"))
    venv = str(work / "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # --target installs into that folder alone: pip then ignores (and never uninstalls) what this environment has,
    # such as the checkout's own editable install
    ours = len(list(importlib.metadata.distributions(name="celeba-tfrecords")))
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            f"--target={site}",
            sources,
        ],
        capture_output=True,
        text=True,
        cwd=str(work),
    )
    assert install.returncode == 0, install.stderr[-3000:]
    assert len(list(importlib.metadata.distributions(name="celeba-tfrecords"))) == ours  # left as it was
    with open(os.path.join(site, "zz_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return python, env, str(work)


def _run(image, *args, timeout=300):
    python, env, cwd = image
    return subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_image_holds_every_package_and_no_checkout(image):
    proc = _run(
        image,
        "-c",
        "import celeba_common, dataset_format, preprocessing, trainer, launch, sys; "
        "print('\\n'.join(m.__file__ for m in (celeba_common, dataset_format, preprocessing, "
        "trainer, launch)))",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    venv = os.path.dirname(os.path.dirname(image[0]))
    for path in proc.stdout.split():
        assert path.startswith(venv) and not path.startswith(ROOT), path
    dockerfile = open(DOCKERFILE).read()
    assert "PYTHONUNBUFFERED=1" in dockerfile and "COPY . ./" in dockerfile


def test_every_command_of_a_vertex_job_starts_from_the_image(image, records_dir, tmp_path):
    flags = [
        f"--data_dir={records_dir}",
        "--weights=none",
        "--batch_size=8",
        "--head_units=8",
        f"--feature_cache_dir={tmp_path / 'features'}",
    ]
    proc = _run(image, "-m", "trainer.extract_features", *flags)  # the sweep's GPU job
    assert proc.returncode == 0 and "features of the train and validation splits" in proc.stdout, proc.stderr[-3000:]
    proc = _run(image, "-m", "trainer.main", *flags, f"--model_dir={tmp_path / 'run'}", "--epochs=1")  # ENTRYPOINT
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "feature cache: reusing" in proc.stdout + proc.stderr
    assert os.path.exists(tmp_path / "run" / "export" / "saved_model.pb")

    python, env, cwd = image  # the data service pool's command: a server that keeps running until stopped
    port = free_port()
    server = subprocess.Popen(
        [python, "-m", "launch.data_service", "--num_workers=1", f"--port={port}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_port(port, server, "launch.data_service")
    finally:
        os.killpg(server.pid, signal.SIGINT)
        out, err = server.communicate(timeout=60)
    assert "Traceback" not in err, err[-3000:]
