"""The house rules (shared/ARCHITECTURE.md), checked on the source: layers point one way, flags live in entry
points only, every CLI imports beside every other, functions stay short."""

import ast
import configparser
import os
import pathlib
import subprocess
import sys

from conftest import ROOT

PACKAGES = ("celeba_common", "dataset_format", "preprocessing", "trainer", "launch")
# What each layer may import from the project: launch -> trainer -> dataset_format (the data contract) ->
# celeba_common, and preprocessing (the records job) -> dataset_format. The trainer never imports the records job.
ALLOWED = {
    "celeba_common": lambda m: m.startswith("celeba_common"),
    "dataset_format": lambda m: m.startswith(("celeba_common", "dataset_format")),
    "preprocessing": lambda m: m.startswith(("celeba_common", "dataset_format", "preprocessing")),
    "trainer": lambda m: m.startswith(("celeba_common", "dataset_format", "trainer")),
    "launch": lambda m: m.startswith(("celeba_common", "dataset_format", "trainer", "launch")),
}
LONG_FUNCTION_LINES = 55  # "about 50"; a longer one says why in its docstring ("Long because ...")


def _modules():
    for package in PACKAGES:
        for path in sorted(pathlib.Path(ROOT, package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            yield ".".join(rel.parts).removesuffix(".__init__"), path, ast.parse(path.read_text())


def _imports(module, tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            for alias in node.names:  # `from dataset_format import schema` imports dataset_format.schema
                yield f"{base}.{alias.name}" if base in PACKAGES else base


def _entry_points():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return sorted(line.split("=")[1].strip().split(":")[0] for line in lines)


def test_layers_point_one_way():
    wrong = []
    for module, _, tree in _modules():
        layer = module.split(".")[0]
        for imported in _imports(module, tree):
            if imported.split(".")[0] in PACKAGES and not ALLOWED[layer](imported):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, wrong


def test_flags_are_read_only_by_entry_points():
    entry_points = set(_entry_points())
    readers = set()
    for module, _, tree in _modules():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Name)
                and node.id == "FLAGS"
                or isinstance(node, ast.Attribute)
                and node.attr == "FLAGS"
            ):
                readers.add(module)
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "").startswith("DEFINE_"):
                readers.add(module)
    assert readers - entry_points <= {"celeba_common.cli", "celeba_common.flagdefs"}, readers - entry_points


def test_every_cli_imports_together_and_defines_no_flag_at_import():
    modules = _entry_points()
    code = (
        "import importlib, sys\nfrom absl import flags\n"
        f"mods = [importlib.import_module(m) for m in {modules!r}]\n"
        "assert all(callable(m.cli) for m in mods)\n"
        "own = [f for f in flags.FLAGS if f in ('batch_size', 'model_dir', 'project', 'data_dir', 'dry_run')]\n"
        "print('flags at import:', own)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "flags at import: []" in proc.stdout


def test_functions_are_short_or_say_why():
    long = []
    for module, _, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONG_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, long


def test_trainer_class_reads_in_one_sitting():
    tree = ast.parse(pathlib.Path(ROOT, "trainer", "train.py").read_text())
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    assert trainer.end_lineno - trainer.lineno + 1 <= 200


def test_help_into_a_closed_pipe_is_no_error():
    """`python -m trainer.main --help | head -0`: the reader is gone before the help is printed; no BrokenPipeError
    traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.main", "--help"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # long before the flags are parsed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_help_exits_zero_for_every_cli():
    for module in _entry_points():
        for flag in ("--help", "-h"):
            proc = subprocess.run(
                [sys.executable, "-m", module, flag], cwd=ROOT, capture_output=True, text=True, timeout=120
            )
            assert proc.returncode == 0, (module, flag, proc.stderr[-2000:])
            assert "flags:" in proc.stdout and "  --" in proc.stdout, (module, proc.stdout[-2000:])


def test_bad_flags_and_missing_files_fail_before_tensorflow_starts(tmp_path):
    """The cheap checks come first: these errors never wait for TensorFlow's few seconds of start-up."""
    cases = [
        ("trainer.main", "--lr=0"),
        ("trainer.main", f"--data_dir={tmp_path}/nope"),
        ("trainer.extract_features", "--batch_size=0"),
        ("trainer.predict", f"--model_dir={tmp_path}", "x.jpg"),
        ("trainer.evaluate", f"--model_dir={tmp_path}"),
    ]
    for module, *args in cases:
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", module, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and lines[-1].startswith("error: "), (module, args, proc.stderr[-500:])
        imported = {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}
        assert "tensorflow" not in imported and "keras" not in imported, (module, args, lines[-1])


def test_the_fast_layer_starts_no_process():
    """`make check` (pytest -m "not slow") stays a minute: a test module that starts processes or trains through the
    CLIs is marked slow as a whole. This module's own quick CLI checks (help, flag errors) are the exception."""
    unmarked = []
    for path in sorted(pathlib.Path(ROOT, "tests").glob("test_*.py")):
        text = path.read_text()
        if (
            path.name != "test_structure.py"
            and "pytestmark = pytest.mark.slow" not in text
            and any(call in text for call in ("run_cli(", "subprocess.", "Popen("))
        ):
            unmarked.append(path.name)
    assert not unmarked, unmarked
