"""The exported SavedModel serves raw image bytes (the transform in the graph) and already-transformed images."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import run_cli
from trainer import data

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not

TOLERANCE = 0.02  # |p_male(served from bytes) - p_male(trainer.predict)|; measured max: see the assertion message


def _files(learn_records, out_dir):
    """Every test-split image of the fixture download, as raw JPEG, PNG or grayscale JPEG (and a GIF and a BMP)."""
    source = os.path.join(os.path.dirname(learn_records), "celeba", "img_align_celeba")
    names = open(os.path.join(learn_records, "splits", "test.txt")).read().split()
    paths = []
    for i, name in enumerate(names):
        image = Image.open(os.path.join(source, name))
        stem = os.path.join(out_dir, os.path.splitext(name)[0])
        kind = ("jpeg", "png", "gray.jpeg")[i % 3] if i >= 2 else ("gif", "bmp")[i]
        if kind == "jpeg":
            shutil.copy(os.path.join(source, name), stem + ".jpeg")
        elif kind == "gray.jpeg":
            image.convert("L").save(stem + ".gray.jpeg", quality=90)
        else:
            image.save(f"{stem}.{kind}")
        paths.append(f"{stem}.{kind}")
    return paths


SERVE = """
import json, sys
import tensorflow as tf
served = tf.saved_model.load(sys.argv[1])
files = json.load(open(sys.argv[2]))
out = served.signatures["serving_default"](image_bytes=tf.constant([open(f, "rb").read() for f in files]))
assert not [m for m in sys.modules if m.split(".")[0] in ("trainer", "preprocessing", "celeba_common")]
print(json.dumps({"p_male": out["p_male"].numpy().tolist(), "class": [c.decode() for c in out["class"].numpy()],
                  "sum": out["probabilities"].numpy().sum(-1).tolist(), "signatures": sorted(served.signatures)}))
"""


def test_serving_default_takes_raw_bytes_and_agrees_with_predict(trained_run, learn_records, tmp_path):
    """Loaded in a fresh process with TensorFlow only (no project code), as TF Serving would load it."""
    model_dir, _ = trained_run
    paths = _files(learn_records, str(tmp_path))
    proc = run_cli("-m", "trainer.predict", f"--model_dir={model_dir}", *paths, f"--output={tmp_path}/p.csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = {row["file"]: float(row["p_male"]) for row in csv.DictReader(open(tmp_path / "p.csv"))}
    json.dump(paths, open(tmp_path / "files.json", "w"))
    served = subprocess.run(
        [sys.executable, "-c", SERVE, os.path.join(model_dir, "export"), str(tmp_path / "files.json")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
    )
    assert served.returncode == 0, served.stderr[-3000:]
    out = json.loads(served.stdout.strip().splitlines()[-1])
    assert {"serving_default", "serving_images"} <= set(out["signatures"])
    diff = np.abs(np.array(out["p_male"]) - np.array([expected[p] for p in paths]))
    print(
        f"serving_default vs trainer.predict on {len(paths)} files: max |p_male difference| {diff.max():.5f}, "
        f"mean {diff.mean():.5f}"
    )
    assert diff.max() <= TOLERANCE, f"max |difference| {diff.max():.4f} (file {paths[int(diff.argmax())]})"
    assert out["class"] == ["male" if p > 0.5 else "female" for p in out["p_male"]]
    np.testing.assert_allclose(out["sum"], 1.0, atol=1e-5)
    # The same signature through TensorFlow's SavedModel CLI (TF Serving's model server cannot be installed
    # here: no tensorflow-model-server package in the registries; tensorflow-serving-api is its client only).
    np.save(tmp_path / "in.npy", np.array([open(paths[2], "rb").read()], dtype="S"))
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    run = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            os.path.join(model_dir, "export"),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"image_bytes={tmp_path}/in.npy",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    p_male = float(run.stdout.split("Result for output key p_male:")[1].split("[")[1].split("]")[0])
    assert abs(p_male - out["p_male"][2]) < 1e-5


def test_serving_images_matches_the_model_on_the_records(trained_run, learn_records):
    from trainer.model import load_trained

    model_dir, _ = trained_run
    info = data.load(learn_records, verify=False)
    images, _ = next(iter(data.records_dataset_fn(info.records("test"), data.InputSpec(16, False))()))
    served = tf.saved_model.load(os.path.join(model_dir, "export"))
    out = served.signatures["serving_images"](images=images)
    net = load_trained(model_dir)
    np.testing.assert_allclose(out["probabilities"].numpy(), net.predict(images, verbose=0), atol=1e-5)


def test_saved_model_cli_lists_both_signatures(trained_run):
    model_dir, _ = trained_run
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run(
        [cli, "show", "--dir", os.path.join(model_dir, "export"), "--all"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for needle in (
        "signature_def['serving_default']",
        "image_bytes",
        "signature_def['serving_images']",
        "p_male",
        "probabilities",
        "class",
    ):
        assert needle in proc.stdout, needle
