"""Nothing silently wrong in the run folder: resume fingerprint, record counts, prediction's transform, damaged
checkpoints and models, paths that are files. Each case ends in one `error:` line or a stated fallback."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SMALL_RECORDS, assert_one_line_error, build, run_cli, wait_for_checkpoint

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not

FAST = ["--weights=none", "--batch_size=8", "--head_units=8", "--steps_per_epoch=3", "--feature_cache=off"]


def _train(data_dir, model_dir, *extra):
    return run_cli("-m", "trainer.main", f"--data_dir={data_dir}", f"--model_dir={model_dir}", *FAST, *extra)


def test_resume_with_changed_settings_is_refused_naming_the_change(records_dir, learn_records, tmp_path):
    model_dir = str(tmp_path / "m")
    first = _train(records_dir, model_dir, "--epochs=1", "--noexport")
    assert first.returncode == 0, first.stderr[-3000:]
    run = json.load(open(os.path.join(model_dir, "run.json")))
    assert run["fingerprint"]["lr"] == 1e-4 and run["transform"]["image_size"] == 32
    line = assert_one_line_error(
        _train(records_dir, model_dir, "--epochs=2", "--lr=0.01", "--noexport"), "lr=0.0001, not 0.01", "--fresh"
    )
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
    assert_one_line_error(
        run_cli("-m", "trainer.predict", f"--model_dir={damaged}", str(image)), "model.keras cannot be loaded"
    )


def test_manifest_claiming_more_records_than_the_shards_hold_is_refused(records_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(records_dir, copy)
    manifest = json.load(open(copy / "manifest.json"))
    shard = manifest["splits"]["train"]["shards"][0]
    shard["num_records"] += 60  # as if it held an extra half epoch
    manifest["splits"]["train"]["num_examples"] += 60
    json.dump(manifest, open(copy / "manifest.json", "w"))
    assert_one_line_error(
        _train(str(copy), str(tmp_path / "m"), "--epochs=1", "--noverify_data"),
        shard["file"],
        f"{shard['num_records'] - 60} records, manifest says {shard['num_records']}",
    )


def test_prediction_uses_the_run_folders_transform_after_the_data_moves(celeba_txt, tmp_path):
    from dataset_format.transform import Transform, transform_image

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
    p = {
        mode: float(model.predict(tf.io.decode_jpeg(transform_image(raw, Transform(32, mode)))[None], verbose=0)[0, 1])
        for mode in ("stretch", "crop")
    }
    assert abs(p_cli - p["stretch"]) < 1e-3 and not np.isclose(p["stretch"], p["crop"], atol=1e-4), (p_cli, p)
    # evaluating it on records of the same size but another crop would be silently wrong: refused
    crop_records = str(tmp_path / "crop")
    build(celeba_txt, crop_records, resize_mode="crop")
    proc = run_cli("-m", "trainer.evaluate", f"--model_dir={model_dir}", f"--data_dir={crop_records}")
    assert_one_line_error(proc, "resize_mode=stretch", "resize_mode=crop")


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
    proc = _records_cli(celeba_txt, out)
    assert_one_line_error(proc, "No space left on device")
    assert os.listdir(full_disk) == []  # no dataset, no .partial work folder
    # two worker processes: each prints the failing bundle's traceback; they go to a log the error names
    proc = _records_cli(celeba_txt, out, "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    line = assert_one_line_error(proc, "No space left on device", "the workers' log: ")
    log = line.split("the workers' log: ")[1].rstrip(")")
    assert "Traceback" in open(log).read() and os.listdir(full_disk) == []
    os.remove(log)
    model_dir = full_disk / "run"
    proc = _train(records_dir, str(model_dir), "--epochs=1")
    assert_one_line_error(proc, "could not save a checkpoint", "No space left on device")
    assert not list(model_dir.rglob("*_temp"))


def _records_cli(celeba_dir, output_dir, *extra, timeout=300):
    return run_cli(
        "-m",
        "preprocessing.build_records",
        f"--celeba_dir={celeba_dir}",
        f"--output_dir={output_dir}",
        *SMALL_RECORDS,
        *extra,
        timeout=timeout,
    )


def test_a_kill_inside_an_overwrite_loses_no_dataset(celeba_txt, tmp_path):
    """--overwrite moves the old dataset aside, moves the new one in, then deletes the old: a kill between the two
    moves (a window of microseconds here, minutes on gs://) leaves OUTPUT missing and OUTPUT.replaced-* complete.
    That state, made here by the same rename, is put back by the next run, with or without --overwrite."""
    out = tmp_path / "records"
    build(celeba_txt, str(out))
    manifest = (out / "manifest.json").read_bytes()
    os.rename(out, tmp_path / "records.replaced-0123abcd")  # the kill's leftover
    proc = _records_cli(celeba_txt, out)  # no --overwrite: the old dataset is back, and kept
    assert_one_line_error(proc, "exists and is not empty", "--overwrite")
    assert (out / "manifest.json").read_bytes() == manifest and sorted(os.listdir(tmp_path)) == ["records"]
    os.rename(out, tmp_path / "records.replaced-0123abcd")
    proc = _records_cli(celeba_txt, out, "--overwrite", "--seed=7")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["records"] and (out / "_SUCCESS").exists()
    assert json.loads((out / "manifest.json").read_bytes())["flags"]["seed"] == 7
    # and an ordinary --overwrite leaves nothing aside either
    proc = _records_cli(celeba_txt, out, "--overwrite")
    assert proc.returncode == 0 and sorted(os.listdir(tmp_path)) == ["records"], proc.stderr[-3000:]


def test_an_image_folder_linked_into_the_output_is_not_deleted_by_overwrite(celeba_copy, celeba_txt, tmp_path):
    out = tmp_path / "records"
    build(celeba_txt, str(out))
    images = os.path.join(celeba_copy, "img_align_celeba")
    shutil.move(images, out / "faces")  # the user keeps the images inside the old output folder...
    os.symlink(out / "faces", images)  # ... and links them back into the download
    count = len(os.listdir(out / "faces"))
    proc = _records_cli(celeba_copy, out, "--overwrite")
    assert_one_line_error(proc, "img_align_celeba", "inside the output folder")
    assert len(os.listdir(out / "faces")) == count and (out / "_SUCCESS").exists()


def test_a_full_disk_during_export_leaves_no_half_export(records_dir, tmp_path):
    """Room for the checkpoints (2 x 59 MB of VGG16 at 32 px) but not for the exported model."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150m", "tmpfs", str(mount_point)], check=True)
    try:
        model_dir = mount_point / "run"
        proc = _train(records_dir, str(model_dir), "--epochs=1")
        assert_one_line_error(proc, "could not export the model", "No space left on device", "rerun the same command")
        assert (model_dir / "checkpoints" / "checkpoint").exists() and (model_dir / "metrics.json").exists()
        left = sorted(os.listdir(model_dir))
        assert "export" not in left and "model.keras" not in left and not [n for n in left if "partial" in n], left
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_records_rebuilt_under_a_running_trainer_stop_it(celeba_txt, tmp_path):
    data_dir = str(tmp_path / "records")
    build(celeba_txt, data_dir)
    model_dir = str(tmp_path / "m")
    cmd = [
        sys.executable,
        "-m",
        "trainer.main",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        *FAST,
        "--epochs=200",
        "--noexport",
    ]
    running = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert wait_for_checkpoint(model_dir, running), running.communicate()[1][-3000:]
    proc = _records_cli(celeba_txt, data_dir, "--overwrite", "--seed=9")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, err = running.communicate(timeout=300)
    assert running.returncode == 2 and "changed while this run trained" in err, (out[-2000:], err[-3000:])
    assert "Traceback" not in err


def test_fresh_removes_the_old_runs_outputs_first(records_dir, tmp_path):
    model_dir = tmp_path / "m"
    assert _train(records_dir, str(model_dir), "--epochs=1").returncode == 0
    assert (model_dir / "model.keras").exists() and (model_dir / "export").exists()
    proc = _train(records_dir, str(model_dir), "--epochs=1", "--fresh", "--noexport", "--lr=0.01")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # no model of the old run beside the new run.json (predict would pair them)
    assert not (model_dir / "model.keras").exists() and not (model_dir / "export").exists()
    assert json.load(open(model_dir / "run.json"))["fingerprint"]["lr"] == 0.01


def test_a_resume_past_the_shorter_epochs_end_records_no_invented_loss(records_dir, tmp_path):
    """Stopped at step S >= 5 of a 30-step epoch, resumed with --steps_per_epoch=5: that epoch trains no further
    step, so its training loss and accuracy are unknown (nan), not 0."""
    model_dir = str(tmp_path / "m")
    base = [
        "-m",
        "trainer.main",
        f"--data_dir={records_dir}",
        f"--model_dir={model_dir}",
        "--weights=none",
        "--batch_size=8",
        "--head_units=8",
        "--feature_cache=off",
        "--epochs=1",
        "--noexport",
    ]
    cmd = [sys.executable, *base, "--steps_per_epoch=30", "--checkpoint_steps=5", "--steps_per_loop=1"]
    running = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert wait_for_checkpoint(model_dir, running), running.communicate()[1][-3000:]
    running.send_signal(signal.SIGTERM)
    _, err = running.communicate(timeout=120)
    assert running.returncode == 143, err[-3000:]
    proc = run_cli(*base, "--steps_per_epoch=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = list(csv.DictReader(open(os.path.join(model_dir, "history.csv"))))[0]
    assert row["loss"] == "nan" and row["accuracy"] == "nan" and float(row["val_loss"]) > 0, row


def test_the_fingerprint_lives_in_the_checkpoints(records_dir, tmp_path):
    """run.json deleted, replaced by `[]` or `1`, or checkpoints copied into another folder: a resume with another
    --lr is still refused, from the fingerprint saved in the checkpoint; a refused resume writes nothing; the right
    command then resumes, and rewrites a damaged run.json."""
    model_dir = tmp_path / "m"
    assert _train(records_dir, str(model_dir), "--epochs=1", "--noexport").returncode == 0
    (model_dir / "run.json").unlink()
    assert_one_line_error(
        _train(records_dir, str(model_dir), "--epochs=2", "--lr=0.01", "--noexport"), "lr=0.0001, not 0.01"
    )
    assert not (model_dir / "run.json").exists()  # the refused resume wrote no run.json of its own
    for damaged in ("[]", "1"):
        (model_dir / "run.json").write_text(damaged)
        assert_one_line_error(
            _train(records_dir, str(model_dir), "--epochs=2", "--lr=0.01", "--noexport"), "lr=0.0001, not 0.01"
        )
        assert (model_dir / "run.json").read_text() == damaged
    other = tmp_path / "other"
    shutil.copytree(model_dir / "checkpoints", other / "checkpoints")
    assert_one_line_error(
        _train(records_dir, str(other), "--epochs=2", "--lr=0.01", "--noexport"), "lr=0.0001, not 0.01"
    )
    again = _train(records_dir, str(model_dir), "--epochs=2", "--noexport")
    assert again.returncode == 0 and "Resumed after epoch 1" in again.stdout, again.stderr[-3000:]
    assert json.load(open(model_dir / "run.json"))["fingerprint"]["lr"] == 1e-4


def test_manifests_of_the_wrong_shape_are_one_line(records_dir, tmp_path):
    """`[]`, no splits, a shard named /dev/zero (which inspect and the trainer would hash forever), an image
    transform no records job writes."""
    manifest = json.load(open(os.path.join(records_dir, "manifest.json")))
    zero = json.loads(json.dumps(manifest))
    zero["splits"]["train"]["shards"][0]["file"] = "/dev/zero"
    zoom = {**manifest, "resize_mode": "zoom"}
    for i, damaged in enumerate(([], {"schema_version": manifest["schema_version"]}, zero, zoom)):
        copy = tmp_path / f"copy{i}"
        shutil.copytree(records_dir, copy)
        (copy / "manifest.json").write_text(json.dumps(damaged))
        assert_one_line_error(_train(str(copy), str(tmp_path / f"m{i}"), "--epochs=1"), "manifest.json is damaged")
    proc = run_cli("-m", "preprocessing.inspect_records", f"--data_dir={tmp_path / 'copy2'}", timeout=60)
    assert_one_line_error(proc, "manifest.json is damaged")


def test_a_fifo_in_the_download_is_left_out_not_waited_for(celeba_copy, records_dir, tmp_path):
    name = open(os.path.join(records_dir, "splits", "train.txt")).read().split()[0]  # one the split picks
    image = os.path.join(celeba_copy, "img_align_celeba", name)
    os.remove(image)
    os.mkfifo(image)  # nobody ever writes into it: reading it would block forever
    out = tmp_path / "records"
    proc = _records_cli(celeba_copy, out, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = [json.loads(line) for line in open(out / "errors.jsonl")]
    assert [(e["name"], e["reason"]) for e in errors] == [(name, "not a regular file (a FIFO, device or socket)")]


def test_damaged_inputs_around_a_run_end_in_one_line(records_dir, tmp_path):
    """A flipped byte read with --noverify_data, a manifest whose image size was edited, a tf.data service with
    nothing listening: one line each (the last within its bounded wait), no TensorFlow traceback, no hang."""
    from conftest import free_port

    flipped = tmp_path / "flipped"
    shutil.copytree(records_dir, flipped)
    shard = flipped / json.load(open(flipped / "manifest.json"))["splits"]["train"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a record's JPEG bytes: its checksum no longer matches
    shard.write_bytes(bytes(data))
    assert_one_line_error(_train(str(flipped), str(tmp_path / "m1"), "--epochs=1", "--noverify_data"), "damaged")
    edited = tmp_path / "edited"
    shutil.copytree(records_dir, edited)
    manifest = json.load(open(edited / "manifest.json"))
    manifest["image_size"] = 64
    (edited / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(
        _train(str(edited), str(tmp_path / "m2"), "--epochs=1"), "[32]x[32] px", "manifest.json says 64 px"
    )
    proc = _train(records_dir, str(tmp_path / "m3"), "--epochs=1", f"--data_service=grpc://127.0.0.1:{free_port()}")
    assert_one_line_error(proc, "no tf.data service dispatcher answers there", "after 20 s")


def test_a_damaged_history_does_not_block_the_resume(records_dir, tmp_path):
    model_dir = tmp_path / "m"
    assert _train(records_dir, str(model_dir), "--epochs=1", "--noexport").returncode == 0
    (model_dir / "history.csv").write_bytes(b"\xff\xfe\x00 not text")
    proc = _train(records_dir, str(model_dir), "--epochs=2", "--noexport")
    assert proc.returncode == 0 and "history.csv is damaged" in proc.stderr, proc.stderr[-3000:]
    (model_dir / "history.csv").write_text("epoch,loss,accuracy,val_loss,val_accuracy\n1,abc,0.5,0.7,0.5\n")
    proc = _train(records_dir, str(model_dir), "--epochs=3", "--noexport")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [row["epoch"] for row in csv.DictReader(open(model_dir / "history.csv"))] == ["3"]


def test_a_one_class_download_warns_and_writes_strict_json(celeba_copy, tmp_path):
    attributes = os.path.join(celeba_copy, "list_attr_celeba.txt")
    lines = open(attributes).read().splitlines()
    male = lines[1].split().index("Male") + 1
    rows = [line.split() for line in lines[2:]]
    for row in rows:
        row[male] = "1"
    with open(attributes, "w") as f:
        f.write("\n".join(lines[:2] + [" ".join(row) for row in rows]) + "\n")
    data_dir = str(tmp_path / "records")
    build(celeba_copy, data_dir)
    proc = _train(data_dir, str(tmp_path / "m"), "--epochs=1", "--noexport")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "holds male images only" in proc.stderr
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert metrics["roc_auc"] is None  # undefined with one class: null, not NaN
    names = os.path.join(celeba_copy, "list_eval_partition.txt")
    text = open(names).read().splitlines()
    text[0] = text[0].replace(".jpg", "\0.jpg", 1)
    open(names, "w").write("\n".join(text) + "\n")
    assert_one_line_error(_records_cli(celeba_copy, tmp_path / "out"), "not a plain file name")


def test_a_damaged_zip_entry_is_a_dead_letter_and_a_cut_zip_one_line(celeba_copy, records_dir, tmp_path):
    import zipfile

    images = os.path.join(celeba_copy, "img_align_celeba")
    archive = os.path.join(celeba_copy, "img_align_celeba.zip")
    with zipfile.ZipFile(archive, "w") as z:  # stored, not deflated: a flipped byte shows only in the CRC
        for name in sorted(os.listdir(images)):
            z.write(os.path.join(images, name), f"img_align_celeba/{name}")
    shutil.rmtree(images)
    name = open(os.path.join(records_dir, "splits", "train.txt")).read().split()[0]  # one the split picks
    entry = zipfile.ZipFile(archive).getinfo(f"img_align_celeba/{name}")
    data = bytearray(open(archive, "rb").read())
    data[entry.header_offset + 30 + len(entry.filename) + entry.compress_size // 2] ^= 0xFF
    open(archive, "wb").write(bytes(data))
    out = tmp_path / "records"
    build(celeba_copy, str(out))
    errors = [json.loads(line) for line in open(out / "errors.jsonl")]
    assert [e["name"] for e in errors] == [name] and "damaged zip entry (Bad CRC-32" in errors[0]["reason"], errors
    for cut in (data[: len(data) // 2], b""):
        open(archive, "wb").write(bytes(cut))
        proc = _records_cli(celeba_copy, tmp_path / "cut")
        assert_one_line_error(proc, "img_align_celeba.zip is not a readable zip", "download it again")
        assert not (tmp_path / "cut").exists()


@pytest.fixture
def proxies():
    """Two HTTPS proxies on 127.0.0.1 (test doubles for a network): one that lets every CONNECT through and then
    closes, one that accepts connections and never answers; and a port where nothing listens."""
    import socket
    import threading

    from conftest import free_port

    servers = [socket.socket(), socket.socket()]
    for server in servers:
        server.bind(("127.0.0.1", 0))
        server.listen(16)

    def answer():
        while True:
            try:
                conn, _ = servers[0].accept()
            except OSError:
                return
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    yield {
        name: f"http://127.0.0.1:{port}"
        for name, port in (
            ("answers", servers[0].getsockname()[1]),
            ("silent", servers[1].getsockname()[1]),
            ("closed", free_port()),
        )
    }
    for server in servers:
        server.close()


def test_cloud_storage_out_of_reach_or_without_credentials_is_one_line_in_seconds(records_dir, proxies, tmp_path):
    """Without the check each client retries first: Beam's for 120 s, TensorFlow's over 3 minutes (measured)."""
    import time

    no_credentials = {
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
        "GOOGLE_APPLICATION_CREDENTIALS": "",
        "STORAGE_EMULATOR_HOST": "",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "",
    }
    celeba = str(tmp_path / "celeba")  # never read: refused before
    cases = [
        (
            ["-m", "trainer.main", "--data_dir=gs://b/records", f"--model_dir={tmp_path / 'm'}", *FAST],
            "closed",
            ("cannot reach Cloud Storage for gs://b/records", "through the proxy", "Connection refused"),
        ),
        (
            [
                "-m",
                "trainer.main",
                f"--data_dir={records_dir}",
                f"--model_dir={tmp_path / 'm'}",
                *FAST,
                "--feature_cache_dir=gs://b/features",
            ],
            "silent",
            ("gs://b/features", "no answer in 10 s"),
        ),
        (
            ["-m", "preprocessing.build_records", f"--celeba_dir={celeba}", "--output_dir=gs://b/records"],
            "closed",
            ("cannot reach Cloud Storage for gs://b/records", "Connection refused"),
        ),
        (
            ["-m", "preprocessing.build_records", f"--celeba_dir={celeba}", "--output_dir=gs://b/records"],
            "answers",
            ("no Google Cloud credentials to write gs://b/records", "gcloud auth application-default login"),
        ),
        (
            ["-m", "trainer.predict", f"--model_dir={tmp_path}", "--output=gs://b/p.csv", "x.jpg"],
            "answers",
            ("no Google Cloud credentials to write gs://b/p.csv",),
        ),
        (["-m", "trainer.cache", "--feature_cache_dir=gs://b/features"], "closed", ("cannot reach Cloud Storage",)),
    ]
    for args, proxy, needles in cases:
        start = time.time()
        proc = run_cli(*args, env={**no_credentials, "HTTPS_PROXY": proxies[proxy], "https_proxy": ""}, timeout=90)
        assert_one_line_error(proc, *needles)
        assert time.time() - start < 45, (args, time.time() - start)
    assert not os.path.exists(tmp_path / "m")


def test_a_failed_weights_download_names_its_cause_in_whole_words(records_dir, proxies, tmp_path):
    """Keras' own message is `URL fetch failure on <80-character URL>: None -- <cause>`; cut at 160 characters, the
    cause was lost mid-word (`[Errno -2] Na`)."""
    proxy = {"HTTPS_PROXY": proxies["closed"], "https_proxy": proxies["closed"], "KERAS_HOME": str(tmp_path)}
    proc = run_cli(
        "-m",
        "trainer.main",
        f"--data_dir={records_dir}",
        f"--model_dir={tmp_path / 'm'}",
        *FAST,
        "--weights=imagenet",
        env=proxy,
    )
    line = assert_one_line_error(
        proc, "could not download the VGG16 ImageNet weights ([Errno 111] Connection refused); pass --weights="
    )
    assert "URL fetch failure" not in line
    assert not list((tmp_path / "models").glob("*"))  # no partial download left for the next run to trust


def test_a_second_trainer_in_a_run_folder_in_use_is_refused(records_dir, tmp_path):
    """A real second process while the first trains; the lock dies with its holder (SIGKILL), so the rerun
    resumes."""
    model_dir = tmp_path / "m"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainer.main",
            f"--data_dir={records_dir}",
            f"--model_dir={model_dir}",
            *FAST,
            "--epochs=20",
            "--noexport",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_checkpoint(str(model_dir), first), first.communicate()[1][-3000:]
        second = _train(records_dir, str(model_dir), "--epochs=20", "--noexport")
        assert_one_line_error(
            second, f"another trainer (host {os.uname().nodename}, pid {first.pid}", f"is training in {model_dir}"
        )
    finally:
        first.kill()
        first.wait()
    resumed = _train(records_dir, str(model_dir), "--epochs=20", "--noexport")
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_a_remote_run_folder_lease_refuses_a_live_holder_and_outlives_a_dead_one(tmp_path):
    """The lease that guards gs:// run folders (no flock there), through fileio on a local folder, between real
    processes; renewals every 0.4 s instead of 20 s."""
    import time

    holder_code = (
        "import sys, time; from trainer import runlock; runlock._lease(sys.argv[1], 0.4); "
        "print('held', flush=True); time.sleep(600)"
    )
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    holder = subprocess.Popen([sys.executable, "-c", holder_code, folder], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        contender = run_cli(
            "-c",
            "from celeba_common.cli import run_main; from trainer import runlock; "
            f"run_main(lambda argv: runlock._lease({folder!r}, 0.4))",
            timeout=60,
        )
        assert_one_line_error(contender, f"pid {holder.pid}", "renews its lease _RUNNING")
    finally:
        holder.kill()
        holder.wait()
    start = time.time()
    taken = run_cli("-c", f"from trainer import runlock; runlock._lease({folder!r}, 0.4)", timeout=60)
    assert taken.returncode == 0, taken.stderr
    assert time.time() - start >= 1.2  # it watched the dead holder's lease for 3 renewals first
    assert not os.path.exists(os.path.join(folder, "_RUNNING"))  # released at its exit
