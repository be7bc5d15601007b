"""Nothing silently wrong in the run folder: resume fingerprint, record counts, prediction's transform, damaged
checkpoints and models, paths that are files. Each case ends in one `error:` line or a stated fallback."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from conftest import assert_one_line_error, build, run_cli

FAST = ["--weights=none", "--batch_size=8", "--head_units=8", "--steps_per_epoch=3", "--feature_cache=off"]


def _train(data_dir, model_dir, *extra):
    return run_cli("-m", "trainer.main", f"--data_dir={data_dir}", f"--model_dir={model_dir}", *FAST, *extra)


def test_resume_with_changed_settings_is_refused_naming_the_change(records_dir, learn_records, tmp_path):
    model_dir = str(tmp_path / "m")
    first = _train(records_dir, model_dir, "--epochs=1", "--noexport")
    assert first.returncode == 0, first.stderr[-3000:]
    run = json.load(open(os.path.join(model_dir, "run.json")))
    assert run["fingerprint"]["lr"] == 1e-4 and run["transform"]["image_size"] == 32
    line = assert_one_line_error(_train(records_dir, model_dir, "--epochs=2", "--lr=0.01", "--noexport"),
                                 "lr=0.0001, not 0.01", "--fresh")
    assert "Traceback" not in line
    assert_one_line_error(_train(learn_records, model_dir, "--epochs=2", "--noexport"), "the records")
    again = _train(records_dir, model_dir, "--epochs=2", "--noexport")  # --epochs may change
    assert again.returncode == 0 and "Resumed after epoch 1" in again.stdout, again.stderr[-3000:]


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(records_dir, tmp_path):
    model_dir = str(tmp_path / "m")
    assert _train(records_dir, model_dir, "--epochs=2", "--noexport").returncode == 0
    data = os.path.join(model_dir, "checkpoints", "ckpt-2.data-00000-of-00001")
    with open(data, "r+b") as f:  # cut short, as a full disk or a kill mid-save leaves it
        f.truncate(os.path.getsize(data) // 2)
    proc = _train(records_dir, model_dir, "--epochs=3", "--noexport")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ckpt-2 is unreadable" in proc.stderr and "Resumed after epoch 1" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_paths_that_are_files_and_damaged_models_give_one_line(records_dir, trained_run, tmp_path):
    model_dir, _ = trained_run
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert_one_line_error(_train(records_dir, str(a_file), "--epochs=1"), str(a_file), "is a file")
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (40, 50), (120, 80, 60)).save(image)
    assert_one_line_error(run_cli("-m", "trainer.predict", f"--model_dir={a_file}", str(image)), "is a file")
    damaged = tmp_path / "damaged"
    shutil.copytree(model_dir, damaged, ignore=shutil.ignore_patterns("checkpoints", "logs", "export"))
    keras_file = damaged / "model.keras"
    keras_file.write_bytes(keras_file.read_bytes()[:1000])
    assert_one_line_error(run_cli("-m", "trainer.predict", f"--model_dir={damaged}", str(image)),
                          "model.keras cannot be loaded")


def test_manifest_claiming_more_records_than_the_shards_hold_is_refused(records_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(records_dir, copy)
    manifest = json.load(open(copy / "manifest.json"))
    shard = manifest["splits"]["train"]["shards"][0]
    shard["num_records"] += 60  # as if it held an extra half epoch
    manifest["splits"]["train"]["num_examples"] += 60
    json.dump(manifest, open(copy / "manifest.json", "w"))
    assert_one_line_error(_train(str(copy), str(tmp_path / "m"), "--epochs=1", "--noverify_data"), shard["file"],
                          f"{shard['num_records'] - 60} records, manifest says {shard['num_records']}")


def test_prediction_uses_the_run_folders_transform_after_the_data_moves(celeba_txt, tmp_path):
    from preprocessing.transform import transform_image

    data_dir = str(tmp_path / "stretch")
    build(celeba_txt, data_dir, resize_mode="stretch")
    model_dir = str(tmp_path / "m")
    assert _train(data_dir, model_dir, "--epochs=1").returncode == 0
    os.rename(data_dir, data_dir + "-moved")  # the data folder the run recorded is gone
    image = os.path.join(celeba_txt, "img_align_celeba", "000001.jpg")  # 178x218: crop and stretch differ
    proc = run_cli("-m", "trainer.predict", f"--model_dir={model_dir}", image)
    assert proc.returncode == 0, proc.stderr[-3000:]
    p_cli = float(proc.stdout.split()[-1])
    import tensorflow as tf

    from trainer.model import load_trained

    model = load_trained(model_dir)
    raw = open(image, "rb").read()
    p = {mode: float(model.predict(tf.io.decode_jpeg(transform_image(raw, 32, mode))[None], verbose=0)[0, 1])
         for mode in ("stretch", "crop")}
    assert abs(p_cli - p["stretch"]) < 1e-3 and not np.isclose(p["stretch"], p["crop"], atol=1e-4), (p_cli, p)


@pytest.fixture
def full_disk(tmp_path):
    """A 150 KB tmpfs: writes past that fail with ENOSPC, as on a full disk (needs root, as CI runs)."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_a_full_disk_ends_in_one_line_and_leaves_nothing_half_written(celeba_txt, records_dir, full_disk):
    out = full_disk / "records"
    proc = run_cli("-m", "preprocessing.build_records", f"--celeba_dir={celeba_txt}", f"--output_dir={out}",
                   "--split_sizes=120,20,20", "--image_size=32", "--num_shards=2")
    assert_one_line_error(proc, "No space left on device")
    assert os.listdir(full_disk) == []  # no dataset, no .partial work folder
    model_dir = full_disk / "run"
    proc = _train(records_dir, str(model_dir), "--epochs=1")
    assert_one_line_error(proc, "could not save a checkpoint", "No space left on device")
    assert not list(model_dir.rglob("*_temp"))
