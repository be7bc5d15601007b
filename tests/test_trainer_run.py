"""trainer.main / evaluate / predict as a user runs them."""

import csv
import glob
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, assert_one_line_error, run_cli, wait_for_checkpoint

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not


def _history(model_dir):
    with open(os.path.join(model_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def test_training_learns_the_synthetic_label(trained_run, learn_records):
    model_dir, proc = trained_run
    epochs = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 60 and epochs[0].startswith("epoch 1/60  loss") and epochs[-1].startswith("epoch 60/60")
    assert "1 replica in sync" in proc.stderr + proc.stdout and "1 replicas" not in proc.stderr + proc.stdout
    metrics = json.load(open(os.path.join(model_dir, "metrics.json")))
    manifest = json.load(open(os.path.join(learn_records, "manifest.json")))
    majority = max(manifest["splits"]["test"]["labels"].values()) / manifest["splits"]["test"]["num_examples"]
    assert metrics["test_accuracy"] >= max(0.75, majority + 0.15), metrics["test_accuracy"]
    assert metrics["roc_auc"] > 0.85
    assert metrics["precision"] in ("mixed_bfloat16", "float32") and metrics["replicas"] == 1
    assert set(metrics["per_class"]) == {"female", "male"} and "Eyeglasses" in metrics["attribute_slices"]
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 100
    assert f"test accuracy {metrics['test_accuracy']:.4f}" in proc.stdout


def test_outputs(trained_run):
    model_dir, proc = trained_run
    rows = _history(model_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 61))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds", "images_per_sec"):
        assert all(float(r[key]) >= 0 for r in rows), key
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    # images/s measures the training steps alone; the epoch's seconds include extraction and validation
    assert all(0 < float(r["train_seconds"]) <= float(r["epoch_seconds"]) for r in rows)
    first = next(line for line in proc.stdout.splitlines() if line.startswith("epoch 1/60"))
    assert re.search(
        rf"\(epoch {float(rows[0]['epoch_seconds']):.1f} s; training steps "
        rf"{float(rows[0]['train_seconds']):.1f} s, \d+ images/s\)$",
        first,
    ), first
    for name in ("learning_curves.png", "confusion_matrix.png"):
        image = Image.open(os.path.join(model_dir, name))
        assert image.size[0] > 300 and np.asarray(image.convert("L")).std() > 5
    assert os.path.exists(os.path.join(model_dir, "export", "saved_model.pb"))
    assert os.path.exists(os.path.join(model_dir, "model.keras"))
    assert glob.glob(os.path.join(model_dir, "logs", "events.out.tfevents.*"))
    assert not os.path.exists(os.path.join(model_dir, "feature_cache"))
    # feature cache: the backbone ran once per split (train, validation), not once per epoch
    assert all(r["feature_cache"] == "1" for r in rows)
    extracted = [line for line in proc.stderr.splitlines() if "feature cache: computing" in line]
    assert len(extracted) == 2 and "train split" in extracted[0] and "validation split" in extracted[1], extracted


def test_evaluate_reproduces_test_metrics(trained_run):
    model_dir, _ = trained_run
    proc = run_cli("-m", "trainer.evaluate", f"--model_dir={model_dir}", "--split=test")
    assert proc.returncode == 0, proc.stderr
    trained = json.load(open(os.path.join(model_dir, "metrics.json")))
    again = json.load(open(os.path.join(model_dir, "metrics_test.json")))
    assert again["test_accuracy"] == trained["test_accuracy"]
    assert f"test accuracy {trained['test_accuracy']:.4f}" in proc.stdout


def test_predict_raw_files_agrees_with_records_and_saved_model(trained_run, learn_records, tmp_path):
    import tensorflow as tf

    from dataset_format import schema
    from trainer.model import load_trained

    model_dir, _ = trained_run
    files = sorted(tf.io.gfile.glob(os.path.join(learn_records, "*-test.tfrecord-*")))
    records = [schema.parse_example(r) for r in tf.data.TFRecordDataset(files).take(6)]
    names = [r[schema.FILENAME_KEY].numpy().decode() for r in records]
    images = np.stack([tf.io.decode_jpeg(r[schema.IMAGE_KEY]).numpy() for r in records])
    celeba = os.path.join(os.path.dirname(learn_records), "celeba", "img_align_celeba")
    paths = [os.path.join(celeba, n) for n in names]
    png = str(tmp_path / "as_png.png")  # a different format of the same picture gives a similar answer
    Image.open(paths[0]).save(png)
    proc = run_cli("-m", "trainer.predict", f"--model_dir={model_dir}", *paths, png)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.strip().splitlines()]
    assert [row[0] for row in lines] == paths + [png]
    p_cli = np.array([float(row[2]) for row in lines])
    assert all(row[1] == ("male" if float(row[2]) >= 0.5 else "female") for row in lines)
    model = load_trained(model_dir)
    p_records = model.predict(images, verbose=0)[:, 1]
    np.testing.assert_allclose(p_cli[:6], p_records, atol=2e-3)
    assert abs(p_cli[6] - p_cli[0]) < 0.05
    serving = tf.saved_model.load(os.path.join(model_dir, "export"))
    p_saved = serving.signatures["serving_images"](images=tf.constant(images))["p_male"].numpy()
    np.testing.assert_allclose(p_saved, p_records, atol=2e-3)


def _train_cmd(data_dir, model_dir, *extra):
    return [
        sys.executable,
        "-m",
        "trainer.main",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        "--feature_cache=off",
        "--batch_size=16",
        "--steps_per_epoch=25",
        "--weights=none",
        "--head_units=16",
        "--noexport",
        *extra,
    ]


def test_resume_after_sigkill(records_dir, tmp_path):
    model_dir = str(tmp_path / "m")
    cmd = _train_cmd(records_dir, model_dir, "--epochs=4")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert wait_for_checkpoint(model_dir, proc), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(_history(model_dir)) if os.path.exists(os.path.join(model_dir, "history.csv")) else 0
    assert done < 4
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = re.findall(r"^Resumed after epoch (\d+) ", again.stdout, re.M)  # killed between epochs: no step
    assert resumed and 1 <= int(resumed[0]) < 4, again.stdout
    assert [int(r["epoch"]) for r in _history(model_dir)] == [1, 2, 3, 4]
    assert f"epoch {int(resumed[0]) + 1}/4  loss" in again.stdout
    fresh = subprocess.run(
        cmd[:-1] + ["--epochs=1", "--fresh"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
    )
    assert fresh.returncode == 0 and "Resumed" not in fresh.stdout
    assert [int(r["epoch"]) for r in _history(model_dir)] == [1]


def test_sigterm_saves_and_exits_cleanly(records_dir, tmp_path):
    model_dir = str(tmp_path / "m")
    cmd = _train_cmd(records_dir, model_dir, "--epochs=50")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert wait_for_checkpoint(model_dir, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "checkpoint saved; rerun the same command to resume" in err


def test_fine_tune_phase(records_dir, tmp_path):
    model_dir = str(tmp_path / "ft")
    proc = run_cli(
        "-m",
        "trainer.main",
        f"--data_dir={records_dir}",
        f"--model_dir={model_dir}",
        "--epochs=1",
        "--fine_tune_from=block5_conv1",
        "--fine_tune_epochs=1",
        "--steps_per_epoch=3",
        "--batch_size=8",
        "--weights=none",
        "--head_units=8",
        "--noexport",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["phase"] for r in _history(model_dir)] == ["head", "fine_tune"]
    assert [float(r["lr"]) for r in _history(model_dir)] == [1e-4, 1e-5]


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--batch_size=0"], ["--batch_size=0"]),
        (["--lr=0"], ["--lr=0"]),
        (["--lr=-1"], ["--lr=-1"]),
        (["--precision=fp8"], ["--precision=fp8"]),
        (["--strategy=tpu_pod"], ["--strategy=tpu_pod"]),
        (["--fine_tune_epochs=2"], ["--fine_tune_from"]),
        (["--weights=/no/such/weights.h5"], ["/no/such/weights.h5"]),
        (["--seed=-1"], ["--seed=-1", "range"]),
        (["--seed=99999999999999999999"], ["--seed=99999999999999999999"]),
    ],
)
def test_bad_flags(records_dir, tmp_path, args, needles):
    proc = run_cli("-m", "trainer.main", f"--data_dir={records_dir}", f"--model_dir={tmp_path / 'm'}", *args)
    assert_one_line_error(proc, *needles)


def test_bad_data_folders(records_dir, tmp_path):
    import shutil

    proc = run_cli("-m", "trainer.main", f"--data_dir={tmp_path / 'nope'}", "--weights=none")
    assert_one_line_error(proc, str(tmp_path / "nope"), "does not exist")
    copy = tmp_path / "copy"
    shutil.copytree(records_dir, copy)
    os.remove(copy / "_SUCCESS")
    proc = run_cli("-m", "trainer.main", f"--data_dir={copy}", "--weights=none")
    assert_one_line_error(proc, "_SUCCESS")
    (copy / "_SUCCESS").write_text("")
    shard = copy / "celeba-validation.tfrecord-00000-of-00002"
    shard.write_bytes(shard.read_bytes()[:-7])
    proc = run_cli("-m", "trainer.main", f"--data_dir={copy}", "--weights=none")
    assert_one_line_error(proc, "celeba-validation.tfrecord-00000-of-00002")


def test_predict_and_evaluate_bad_input(trained_run, tmp_path):
    model_dir, _ = trained_run
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image")
    proc = run_cli("-m", "trainer.predict", f"--model_dir={model_dir}", str(garbage), str(tmp_path / "x.jpg"))
    assert_one_line_error(proc, "2 of 2 files could not be predicted")
    rows = [line.split("\t") for line in proc.stdout.strip().splitlines()]
    assert rows[0][:2] == [str(garbage), "error"] and rows[0][2].startswith("cannot decode image")
    assert "BytesIO" not in rows[0][2]
    assert rows[1] == [str(tmp_path / "x.jpg"), "error", "no such file"]
    # a FIFO (nobody writes into it), /dev/zero and a link to it: each its row's error, no hang, no memory blow-up
    fifo, link = tmp_path / "fifo.jpg", tmp_path / "zero.jpg"
    os.mkfifo(fifo)
    os.symlink("/dev/zero", link)
    proc = run_cli("-m", "trainer.predict", f"--model_dir={model_dir}", str(fifo), "/dev/zero", str(link), timeout=120)
    assert_one_line_error(proc, "3 of 3 files could not be predicted")
    assert [line.split("\t")[2] for line in proc.stdout.strip().splitlines()] == [
        "not a regular file (a FIFO, device or socket)"
    ] * 3
    assert_one_line_error(run_cli("-m", "trainer.predict", f"--model_dir={tmp_path}", str(garbage)), "model.keras")
    assert_one_line_error(run_cli("-m", "trainer.evaluate", f"--model_dir={tmp_path}"), "--data_dir")


def test_vertex_environment_sets_output_folders(records_dir, tmp_path):
    env = {
        "AIP_MODEL_DIR": str(tmp_path / "aip_model"),
        "AIP_CHECKPOINT_DIR": str(tmp_path / "aip_ckpt"),
        "AIP_TENSORBOARD_LOG_DIR": str(tmp_path / "aip_logs"),
    }
    proc = run_cli(
        "-m",
        "trainer.main",
        f"--data_dir={records_dir}",
        "--epochs=1",
        "--steps_per_epoch=2",
        "--batch_size=8",
        "--weights=none",
        "--head_units=8",
        "--noexport",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.exists(tmp_path / "aip_model" / "history.csv")
    assert os.path.exists(tmp_path / "aip_model" / "metrics.json")
    assert os.path.exists(tmp_path / "aip_ckpt" / "checkpoint")
    assert glob.glob(str(tmp_path / "aip_logs" / "events.out.tfevents.*"))


def test_predict_a_folder_of_mixed_files_to_csv(trained_run, learn_records, tmp_path):
    model_dir, _ = trained_run
    folder = tmp_path / "photos"
    folder.mkdir()
    celeba = os.path.join(os.path.dirname(learn_records), "celeba", "img_align_celeba")
    for name in ("000001.jpg", "000002.jpg"):
        Image.open(os.path.join(celeba, name)).save(folder / name.replace(".jpg", ".png"))
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    Image.open(os.path.join(celeba, "000003.jpg")).convert("L").save(folder / "sub" / "gray.jpg")
    csv_path = tmp_path / "preds.csv"
    proc = run_cli("-m", "trainer.predict", f"--model_dir={model_dir}", str(folder), f"--output={csv_path}")
    assert_one_line_error(proc, "1 of 4 files could not be predicted")
    rows = {os.path.relpath(r["file"], folder): r for r in csv.DictReader(open(csv_path))}
    assert sorted(rows) == ["000001.png", "000002.png", "notes.txt", os.path.join("sub", "gray.jpg")]
    assert rows["notes.txt"]["class"] == "error" and rows["notes.txt"]["error"].startswith("cannot decode")
    for name in ("000001.png", "000002.png", os.path.join("sub", "gray.jpg")):
        assert rows[name]["class"] in ("female", "male") and 0 <= float(rows[name]["p_male"]) <= 1
        assert rows[name]["class"] == ("male" if float(rows[name]["p_male"]) >= 0.5 else "female")
    good = run_cli("-m", "trainer.predict", f"--model_dir={model_dir}", str(folder / "*.png"))  # a glob
    assert good.returncode == 0 and len(good.stdout.strip().splitlines()) == 2, good.stderr[-2000:]


def test_synthetic_on_an_unwritable_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("-m", "preprocessing.synthetic_celeba", f"--output_dir={blocker}/sub", "--num_images=5")
    assert_one_line_error(proc, str(blocker))


def test_predict_streams_a_batch_at_a_time(trained_run, celeba_txt, tmp_path):
    """Files 3 and 4 are created only after the first batch of 2 was predicted: a prediction that read every file
    first (all of CelebA in memory) would report them missing."""
    import shutil

    from trainer.fingerprint import trained_transform
    from trainer.model import load_trained
    from trainer.predict import predict_files

    model_dir, _ = trained_run
    images = sorted(glob.glob(os.path.join(celeba_txt, "img_align_celeba", "*.jpg")))[:2]
    later = [str(tmp_path / "later0.jpg"), str(tmp_path / "later1.jpg")]
    rows = predict_files(load_trained(model_dir), images + later, trained_transform(model_dir), batch_size=2)
    first = [next(rows), next(rows)]
    assert all(p is not None and error is None for p, error in first), first
    for source, target in zip(images, later):
        shutil.copy(source, target)
    rest = list(rows)
    assert [error for _, error in rest] == [None, None], rest
    assert np.allclose([p for p, _ in rest], [p for p, _ in first], atol=1e-5)
