"""The exported SavedModel serves raw image bytes (the transform in the graph) and already-transformed images."""
import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import tensorflow as tf
from PIL import Image

from conftest import run_cli
from trainer import data

TOLERANCE = 0.02  # |p_male(served from bytes) - p_male(trainer.predict)|; measured max: see the assertion message


def _files(source_dir, out_dir, count=24):
    """count CelebA JPEGs, a third of them re-saved as PNG, GIF and BMP (the formats the signature takes)."""
    names = sorted(os.listdir(source_dir))[:count]
    paths = []
    for i, name in enumerate(names):
        image = Image.open(os.path.join(source_dir, name))
        fmt = ("JPEG", "PNG", "GIF", "BMP")[i % 4]
        path = os.path.join(out_dir, f"{os.path.splitext(name)[0]}.{fmt.lower()}")
        if fmt == "JPEG":
            shutil.copy(os.path.join(source_dir, name), path)
        else:
            image.save(path, format=fmt)
        paths.append(path)
    return paths


def test_serving_default_takes_raw_bytes_and_agrees_with_predict(trained_run, learn_records, tmp_path):
    model_dir, _ = trained_run
    source = os.path.join(os.path.dirname(learn_records), "celeba", "img_align_celeba")
    paths = _files(source, str(tmp_path))
    proc = run_cli("-m", "trainer.predict", f"--model_dir={model_dir}", *paths, f"--output={tmp_path}/p.csv")
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = {row["file"]: float(row["p_male"]) for row in csv.DictReader(open(tmp_path / "p.csv"))}

    served = tf.saved_model.load(os.path.join(model_dir, "export"))
    assert {"serving_default", "serving_images"} <= set(served.signatures)
    raw = [open(p, "rb").read() for p in paths]
    out = served.signatures["serving_default"](image_bytes=tf.constant(raw))
    p_male = out["p_male"].numpy()
    diff = np.abs(p_male - np.array([expected[p] for p in paths]))
    assert diff.max() <= TOLERANCE, f"max |difference| {diff.max():.4f}, mean {diff.mean():.4f}"
    classes = [c.decode() for c in out["class"].numpy()]
    assert classes == ["male" if p > 0.5 else "female" for p in out["probabilities"].numpy()[:, 1]]
    np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)


def test_serving_images_matches_the_model_on_the_records(trained_run, learn_records):
    from trainer.model import load_trained

    model_dir, _ = trained_run
    info = data.load(learn_records, verify=False)
    images, _ = next(iter(data.make_dataset_fn(info.files("test"), info.image_size, 16, False)()))
    served = tf.saved_model.load(os.path.join(model_dir, "export"))
    out = served.signatures["serving_images"](images=images)
    net = load_trained(model_dir)
    np.testing.assert_allclose(out["probabilities"].numpy(), net.predict(images, verbose=0), atol=1e-5)


def test_saved_model_cli_lists_both_signatures(trained_run):
    model_dir, _ = trained_run
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run([cli, "show", "--dir", os.path.join(model_dir, "export"), "--all"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for needle in ("signature_def['serving_default']", "image_bytes", "signature_def['serving_images']",
                   "p_male", "probabilities", "class"):
        assert needle in proc.stdout, needle
