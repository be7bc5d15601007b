"""End-to-end runs of the records job on synthetic CelebA downloads."""

import glob
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from celeba_common.errors import UserError
from conftest import ROOT, SMALL_RECORDS, assert_one_line_error, build, run_cli
from dataset_format import manifest as manifest_lib, schema, tfrecord
from dataset_format.transform import Transform, transform_image
from preprocessing import celeba
from preprocessing.synthetic_celeba import write_lists

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not


def _shard_digests(data_dir):
    manifest = manifest_lib.read_manifest(data_dir)
    return {s["file"]: s["sha256"] for info in manifest["splits"].values() for s in info["shards"]}


def _records(data_dir, split):
    files = sorted(glob.glob(os.path.join(data_dir, f"*-{split}.tfrecord-*")))
    return [schema.parse_example(r) for r in tf.data.TFRecordDataset(files)]


def _names(data_dir, split):
    with open(os.path.join(data_dir, "splits", f"{split}.txt")) as f:
        return f.read().split()


def test_outputs_and_manifest(records_dir, celeba_txt):
    manifest = manifest_lib.load_verified(records_dir)
    assert os.path.exists(os.path.join(records_dir, "_SUCCESS"))
    assert {k: v["num_examples"] for k, v in manifest["splits"].items()} == {"train": 120, "validation": 20, "test": 20}
    for split, info in manifest["splits"].items():
        assert [s["file"] for s in info["shards"]] == [schema.shard_name("celeba", split, i, 2) for i in range(2)]
        assert sum(s["num_records"] for s in info["shards"]) == info["num_examples"]
        assert int(info["labels"]["0"]) + int(info["labels"]["1"]) == info["num_examples"]
        for shard in info["shards"]:
            assert tfrecord.count_records(os.path.join(records_dir, shard["file"])) == shard["num_records"]
        assert len(_names(records_dir, split)) == info["num_examples"]
    assert manifest["image_size"] == 32 and manifest["attribute_names"] == list(schema.ATTRIBUTE_NAMES)
    assert manifest["source"]["attributes_sha256"] == celeba.fingerprint(
        os.path.join(celeba_txt, "list_attr_celeba.txt")
    )
    assert manifest["flags"]["split_sizes"] == "120,20,20"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    version = importlib.metadata.version("celeba-tfrecords")
    assert manifest["code_version"] == (f"{version}+{commit}" if commit else version)
    assert open(os.path.join(records_dir, "errors.jsonl")).read() == ""
    assert not glob.glob(records_dir + ".partial-*")


def test_record_image_and_label_come_from_the_same_file(records_dir, celeba_txt):
    layout = celeba.find_layout(celeba_txt)
    rows = {r.name: r for r in celeba.read_rows(layout)}
    records = _records(records_dir, "train")
    assert sorted(r[schema.FILENAME_KEY].numpy().decode() for r in records) == _names(records_dir, "train")
    for record in records[:40]:
        name = record[schema.FILENAME_KEY].numpy().decode()
        row = rows[name]
        assert row.partition == "train"
        assert int(record[schema.LABEL_KEY]) == row.label
        assert list(record[schema.ATTRIBUTES_KEY].numpy()) == [1 if a == 1 else 0 for a in row.attributes]
        with open(os.path.join(layout.image_dir, name), "rb") as f:
            assert record[schema.IMAGE_KEY].numpy() == transform_image(f.read(), Transform(32))


def test_reproducible_across_runs_and_runners_but_not_seeds(records_dir, celeba_txt, tmp_path):
    again = str(tmp_path / "again")
    build(celeba_txt, again, beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert _shard_digests(again) == _shard_digests(records_dir)
    other = str(tmp_path / "other")
    build(celeba_txt, other, seed=7)
    assert _names(other, "train") != _names(records_dir, "train")
    assert set(_shard_digests(other).values()).isdisjoint(_shard_digests(records_dir).values())


def test_kaggle_and_zip_layouts_give_identical_shards(records_dir, celeba_txt, tmp_path):
    rows = celeba.read_rows(celeba.find_layout(celeba_txt))
    kaggle = tmp_path / "kaggle"
    shutil.copytree(os.path.join(celeba_txt, "img_align_celeba"), kaggle / "img_align_celeba" / "img_align_celeba")
    write_lists(str(kaggle), [(r.name, r.attributes) for r in rows], "kaggle")
    build(str(kaggle), str(tmp_path / "out_kaggle"))
    assert _shard_digests(str(tmp_path / "out_kaggle")) == _shard_digests(records_dir)

    zipped = tmp_path / "zipped"
    zipped.mkdir()
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        shutil.copy(os.path.join(celeba_txt, name), zipped / name)
    with zipfile.ZipFile(zipped / "img_align_celeba.zip", "w") as z:
        for path in sorted(glob.glob(os.path.join(celeba_txt, "img_align_celeba", "*.jpg"))):
            z.write(path, "img_align_celeba/" + os.path.basename(path))
    build(str(zipped), str(tmp_path / "out_zip"))
    assert _shard_digests(str(tmp_path / "out_zip")) == _shard_digests(records_dir)


def test_bad_images_are_dead_lettered_and_replaced(records_dir, celeba_copy, tmp_path):
    chosen = _names(records_dir, "train")
    images = os.path.join(celeba_copy, "img_align_celeba")
    path = lambda name: os.path.join(images, name)  # noqa: E731
    grey, cmyk, png, truncated, garbage, missing = chosen[:6]
    Image.open(path(grey)).convert("L").save(path(grey), format="JPEG")
    Image.open(path(cmyk)).convert("CMYK").save(path(cmyk), format="JPEG")
    Image.open(path(png)).save(path(png), format="PNG")  # a PNG named .jpg
    data = open(path(truncated), "rb").read()
    open(path(truncated), "wb").write(data[: len(data) // 3])
    open(path(garbage), "wb").write(b"<html>not an image</html>")
    os.remove(path(missing))
    out = str(tmp_path / "out")
    manifest = build(celeba_copy, out)
    assert manifest["splits"]["train"]["num_examples"] == 120
    kept = _names(out, "train")
    for name in (grey, cmyk, png):
        assert name in kept
    errors = [json.loads(line) for line in open(os.path.join(out, "errors.jsonl"))]
    assert {(e["name"], e["stage"]) for e in errors} == {(truncated, "decode"), (garbage, "decode"), (missing, "read")}
    assert all(e["reason"] for e in errors) and manifest["num_left_out"] == 3
    # the replacements are the next candidates in rank order: everything else chosen before is still chosen
    assert set(chosen) - set(kept) == {truncated, garbage, missing}
    grey_record = next(r for r in _records(out, "train") if r[schema.FILENAME_KEY].numpy().decode() == grey)
    assert tf.io.decode_jpeg(grey_record[schema.IMAGE_KEY]).shape == (32, 32, 3)


def test_shortfall_fails_and_leaves_nothing(celeba_copy, tmp_path):
    rows = celeba.read_rows(celeba.find_layout(celeba_copy))
    validation = [r.name for r in rows if r.partition == "validation"]
    for name in validation[:10]:
        open(os.path.join(celeba_copy, "img_align_celeba", name), "wb").write(b"garbage")
    out = str(tmp_path / "out")
    with pytest.raises(UserError, match=r"split validation is 1 images short: 20 wanted, 19 readable"):
        build(celeba_copy, out)
    assert not os.path.exists(out)
    assert not glob.glob(out + ".partial-*")


def test_existing_output_refused_then_overwritten_completely(celeba_txt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not empty; pass --overwrite"):
        build(celeba_txt, str(out))
    with pytest.raises(UserError, match="not a dataset of this job"):
        build(celeba_txt, str(out), overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    shutil.rmtree(out)
    build(celeba_txt, str(out), num_shards=3)
    build(celeba_txt, str(out), num_shards=1, overwrite=True)
    shards = sorted(p.name for p in out.glob("*.tfrecord-*"))
    assert shards == [f"celeba-{s}.tfrecord-00000-of-00001" for s in ("test", "train", "validation")]
    manifest_lib.load_verified(str(out))


def test_balance(celeba_txt, tmp_path):
    manifest = build(celeba_txt, str(tmp_path / "out"), split_sizes="60,10,10", balance=True)
    for info in manifest["splits"].values():
        assert info["labels"]["0"] == info["labels"]["1"]


def test_too_large_split_fails_before_reading_images(celeba_txt, tmp_path):
    with pytest.raises(
        UserError, match="split train asks for 5000 images but the official train partition lists only 244"
    ):
        build(celeba_txt, str(tmp_path / "out"), split_sizes="5000,10,10")
    assert not os.path.exists(tmp_path / "out")


def test_tfds_source_with_mock_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from preprocessing import tfds_source

    monkeypatch.setattr(tfds_source, "_reachable", lambda host, **kw: True)  # mock_data replaces the download
    with tfds.testing.mock_data(num_examples=40):
        manifest = build("", str(tmp_path / "out"), source="tfds", split_sizes="20,5,5", num_shards=1)
    assert {k: v["num_examples"] for k, v in manifest["splits"].items()} == {"train": 20, "validation": 5, "test": 5}
    assert manifest["source"]["kind"] == "tfds"
    records = _records(str(tmp_path / "out"), "train")
    assert len(records) == 20 and records[0][schema.FILENAME_KEY].numpy().decode().startswith("train_")
    assert not os.path.exists(tmp_path / "out" / ".source")


def test_cli_and_inspect_records(celeba_txt, tmp_path):
    out = str(tmp_path / "cli")
    proc = run_cli(
        "-m",
        "preprocessing.build_records",
        f"--celeba_dir={celeba_txt}",
        f"--output_dir={out}",
        "--split_sizes=40,10,10",
        "--image_size=32",
        "--num_shards=2",
    )
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "images/s" in proc.stdout
    proc = run_cli("-m", "preprocessing.inspect_records", f"--data_dir={out}", "--samples=8", "--split=validation")
    assert proc.returncode == 0, proc.stderr
    assert "all 6 shards match the manifest" in proc.stdout and " validation images: " in proc.stdout
    sheet = Image.open(os.path.join(out, "contact_sheet.png"))
    assert sheet.size[0] > 100 and np.asarray(sheet).std() > 10
    shard = os.path.join(out, "celeba-train.tfrecord-00001-of-00002")
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[:-100])
    proc = run_cli("-m", "preprocessing.inspect_records", f"--data_dir={out}", "--samples=0")
    assert_one_line_error(proc, "celeba-train.tfrecord-00001-of-00002")
    assert "truncated" in proc.stdout


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--split_sizes=1,2"], ["--split_sizes=1,2"]),
        (["--image_size=0"], ["image_size"]),
        (["--resize_mode=zoom"], ["resize_mode"]),
        (["--jpeg_quality=101"], ["jpeg_quality"]),
        (["--bogus_flag=1"], ["--bogus_flag"]),
        (["--celeba_dir=/nonexistent/celeba"], ["/nonexistent/celeba", "CelebA"]),
    ],
)
def test_cli_bad_input_is_one_line(args, needles, tmp_path):
    proc = run_cli("-m", "preprocessing.build_records", f"--output_dir={tmp_path / 'out'}", *args)
    assert_one_line_error(proc, *needles)
    assert not os.path.exists(tmp_path / "out")


def test_tfds_source_offline_fails_fast_with_one_line(tmp_path, monkeypatch):
    from preprocessing import tfds_source

    monkeypatch.setattr(tfds_source, "_reachable", lambda host, **kw: False)
    with pytest.raises(UserError, match=r"no prepared celeb_a .* drive.google.com is unreachable"):
        build("", str(tmp_path / "out"), source="tfds", tfds_data_dir=str(tmp_path / "tfds"))
    assert not os.path.exists(tmp_path / "out")


def test_cli_paths_that_are_files_or_unwritable(celeba_txt, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    proc = run_cli("-m", "preprocessing.build_records", f"--celeba_dir={celeba_txt}", f"--output_dir={a_file}")
    assert_one_line_error(proc, str(a_file), "is a file")
    assert a_file.read_text() == "keep me"
    proc = run_cli("-m", "preprocessing.build_records", f"--celeba_dir={a_file}", f"--output_dir={tmp_path / 'o'}")
    assert_one_line_error(proc, str(a_file), "not a folder")
    proc = run_cli(
        "-m",
        "preprocessing.build_records",
        f"--celeba_dir={celeba_txt}",
        f"--output_dir={a_file}/sub/out",
        "--split_sizes=10,5,5",
    )
    assert_one_line_error(proc, "cannot write", f"{a_file}/sub/out")
    proc = run_cli("-m", "trainer.main", f"--data_dir={a_file}", "--weights=none")
    assert_one_line_error(proc, str(a_file), "not a dataset folder")


def test_killed_run_leaves_no_success_and_its_leftovers_are_cleaned(celeba_txt, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "preprocessing.build_records",
            f"--celeba_dir={celeba_txt}",
            f"--output_dir={out}",
            "--split_sizes=200,20,20",
            "--image_size=32",
            "--direct_running_mode=in_memory",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob("out.partial-*/.chunks")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob("out.partial-*")) and not out.exists()  # killed mid-way: no dataset, no _SUCCESS
    build(celeba_txt, str(out))
    assert (out / "_SUCCESS").exists() and not list(tmp_path.glob("out.partial-*"))


def test_ctrl_c_to_a_multi_process_build_is_one_line_and_stops_its_workers(celeba_copy, tmp_path):
    """Ctrl-C reaches the whole process group (a real SIGINT to it), sent as soon as the job's worker processes are
    up: the job (96 px, so its workers stay busy for seconds) is then mid-way. (A FIFO among the images used to hold
    a worker mid-read; a FIFO is now left out without being read.)"""
    import signal
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "preprocessing.build_records",
            f"--celeba_dir={celeba_copy}",
            f"--output_dir={out}",
            "--split_sizes=200,20,20",
            "--image_size=96",
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives a job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None and len(workers) < 2:  # wait for the workers
        workers = [
            int(p)
            for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        ]
        time.sleep(0.05)
    assert workers, "the build runs no worker processes"
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), "interrupted")
    assert stderr.splitlines()[-1] == "error: interrupted" and "CRITICAL" not in stderr, stderr
    assert not out.exists() and not list(tmp_path.glob("out.partial-*"))
    time.sleep(0.5)
    assert not [w for w in workers if os.path.exists(f"/proc/{w}")], "worker processes outlived the build"


class FlakyImageSource(celeba.ImageSource):
    """A test double standing in for a flaky store (GCS 503s, resets): the listed images fail to read `failures`
    times each with a transient error, then read fine."""

    flaky: dict = {}

    def read(self, name):
        if FlakyImageSource.flaky.get(name, 0) > 0:
            FlakyImageSource.flaky[name] -= 1
            raise ConnectionResetError(f"connection reset while reading {name}")
        return super().read(name)


def test_transient_read_errors_are_retried_and_change_nothing(celeba_txt, records_dir, tmp_path, monkeypatch):
    from preprocessing import graph

    monkeypatch.setattr(graph, "READ_RETRY_SECONDS", 0.0)
    monkeypatch.setattr(
        celeba.ImageSource,
        "for_layout",
        classmethod(lambda cls, layout: FlakyImageSource(layout.image_dir, layout.image_zip)),
    )
    chosen = sorted(
        n
        for split in ("train", "validation", "test")
        for n in open(os.path.join(records_dir, "splits", f"{split}.txt")).read().split()
    )
    FlakyImageSource.flaky = {name: 1 for name in chosen[::7]}  # each fails once, then reads fine
    manifest = build(celeba_txt, str(tmp_path / "flaky"))
    assert not any(FlakyImageSource.flaky.values())  # every flaky image was read again, not left out
    assert manifest["num_left_out"] == 0
    clean = manifest_lib.read_manifest(records_dir)  # the same flags, no failures
    assert manifest["splits"] == clean["splits"]  # the same shards, byte for byte

    FlakyImageSource.flaky = {chosen[0]: graph.READ_ATTEMPTS}  # never readable in time: the job fails
    out = str(tmp_path / "failed")
    with pytest.raises(Exception, match="connection reset"):
        build(celeba_txt, out)
    assert not os.path.exists(out) and not glob.glob(out + ".partial-*")


def test_runner_checks_before_anything_starts(celeba_txt, tmp_path):
    out = str(tmp_path / "out")
    assert_one_line_error(
        run_cli(
            "-m",
            "preprocessing.build_records",
            f"--celeba_dir={celeba_txt}",
            f"--output_dir={out}",
            "--runner=NoSuchRunner",
        ),
        "--runner=NoSuchRunner",
    )
    proc = run_cli(
        "-m",
        "preprocessing.build_records",
        f"--celeba_dir={celeba_txt}",
        "--output_dir=gs://b/out",
        "--runner=DataflowRunner",
        "--project=p",
        "--region=r",
        "--temp_location=gs://b/tmp",
    )
    assert_one_line_error(proc, "--celeba_dir", "local path", "dataflowrunner")
    proc = run_cli(
        "-m", "preprocessing.build_records", "--celeba_dir=gs://b/celeba", f"--output_dir={out}", "--runner=FlinkRunner"
    )
    assert_one_line_error(proc, "--output_dir", "local path", "flinkrunner")
    assert not os.path.exists(out) and not glob.glob(out + ".partial-*")


def test_output_folder_overlapping_the_download_is_refused(celeba_copy, tmp_path):
    inside = os.path.join(celeba_copy, "records")  # output inside the download
    assert_one_line_error(
        run_cli(
            "-m", "preprocessing.build_records", f"--celeba_dir={celeba_copy}", f"--output_dir={inside}", "--overwrite"
        ),
        "overlap",
    )
    parent = os.path.dirname(celeba_copy)  # the download inside the output, whatever the flags
    assert_one_line_error(
        run_cli(
            "-m", "preprocessing.build_records", f"--celeba_dir={celeba_copy}", f"--output_dir={parent}", "--overwrite"
        ),
        "overlap",
        "--overwrite would delete",
    )
    assert len(os.listdir(os.path.join(celeba_copy, "img_align_celeba"))) == 300


def test_two_runs_started_together_one_wins_and_its_dataset_stays(celeba_txt, tmp_path):
    out = str(tmp_path / "out")
    cmd = [
        sys.executable,
        "-m",
        "preprocessing.build_records",
        f"--celeba_dir={celeba_txt}",
        f"--output_dir={out}",
        *SMALL_RECORDS,
    ]
    runs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code)
    assert "Traceback" not in loser
    assert re.search(r"error: output folder .* (appeared while this job ran|exists and is not empty)", loser), loser
    manifest_lib.load_verified(out)  # the winner's dataset, complete
    assert os.path.exists(os.path.join(out, "_SUCCESS")) and not glob.glob(out + ".partial-*")
