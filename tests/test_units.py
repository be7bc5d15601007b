"""In-process unit tests of helpers that used to be reachable only through subprocesses: flags declared on
dataclasses, the launch helpers and the precision choice."""

import os

import pytest
from absl import flags

from celeba_common.errors import UserError
from celeba_common.flagdefs import check_choices, define_flags, from_flags
from conftest import ROOT
from launch import dataflow, sweep, vertex
from trainer.config import TrainConfig


def _parse(cls, argv, skip=()):
    values = flags.FlagValues()
    define_flags(cls, values, skip=skip)
    values(["prog", *argv])
    return values


def test_train_flags_come_from_the_config_fields():
    values = _parse(TrainConfig, ["--batch_size=32", "--head_units=512,128", "--noaugment", "--pooling=avg"])
    config = from_flags(TrainConfig, values, model_dir="m")
    assert (config.batch_size, config.head_units, config.pooling, config.model_dir) == (32, (512, 128), "avg", "m")
    assert config.lr == TrainConfig.lr and config.checkpoint_dir is None
    assert values["model_dir"].default is None  # so that main can fall back to AIP_MODEL_DIR
    with pytest.raises(flags.IllegalFlagValueError):
        values(["prog", "--precision=fp8"])
    with pytest.raises(UserError, match="--head_units=a,2"):
        from_flags(TrainConfig, _parse(TrainConfig, ["--head_units=a,2"]))


def test_every_cli_config_defines_its_flags_into_one_flag_set():
    """vertex and dataflow share flag names; each set is declared once and their dataclasses stay apart."""
    assert set(_parse(vertex.VertexJob, [])) >= {"project", "region", "machine_type", "dry_run"}
    assert set(_parse(dataflow.DataflowJob, [])) >= {"project", "region", "machine_type", "dry_run"}
    values = flags.FlagValues()
    define_flags(sweep.SweepConfig, values)
    define_flags(vertex.VertexJob, values, skip=("display_name",))
    values(["prog", "--lrs=1e-3,1e-2", "--project=p", "--vertex"])
    assert from_flags(sweep.SweepConfig, values).lrs == ("1e-3", "1e-2")
    assert from_flags(vertex.VertexJob, values).project == "p"


def test_check_choices_names_the_flag():
    with pytest.raises(UserError, match="--strategy=tpu"):
        check_choices(TrainConfig(strategy="tpu"))
    with pytest.raises(UserError, match="--pooling=sum"):
        TrainConfig(pooling="sum").validate()


def test_job_spec_pools_and_batch_check():
    job = vertex.build_job(
        vertex.VertexJob(
            project="p",
            image_uri="img",
            accelerator_type="NVIDIA_L4",
            accelerator_count=4,
            replica_count=3,
            base_output_dir="gs://b/r",
        ),
        ["--batch_size=96"],
        "j",
    )
    pools = job["jobSpec"]["workerPoolSpecs"]
    assert [p["replicaCount"] for p in pools] == [1, 2]
    assert pools[1]["machineSpec"]["acceleratorCount"] == 4
    assert pools[0]["containerSpec"]["args"] == ["--batch_size=96"]
    with pytest.raises(UserError, match=r"--batch_size=100 does not divide by the job's 12 GPUs"):
        vertex.check_batch_size(["--batch_size", "100"], 3, 4)
    with pytest.raises(UserError, match=r"--batch_size=64 does not divide by the job's 48 GPUs"):
        vertex.check_batch_size([], 6, 8)  # the trainer's default batch size
    vertex.check_batch_size(["--batch_size=512"], 2, 8)
    vertex.check_batch_size(["--batch_size=5"], 1, 0)  # one CPU machine: one replica


def test_dataflow_command_in_process():
    job = dataflow.DataflowJob(project="p", temp_location="gs://b/tmp", max_num_workers=8)
    command = dataflow.build_command(["--celeba_dir=gs://b/c", "--output_dir=gs://b/o"], job, "/w.whl")
    assert "--runner=DataflowRunner" in command and "--max_num_workers=8" in command
    assert "--extra_package=/w.whl" in command and not any(a.startswith("--setup_file") for a in command)
    assert not any(a.startswith("--machine_type") for a in command)
    with pytest.raises(UserError, match="--output_dir=/local"):
        dataflow.build_command(["--celeba_dir=gs://b/c", "--output_dir=/local"], job, "/w.whl")


def test_summarize_history_and_best_cell():
    history = [{"val_accuracy": a, "val_loss": loss} for a, loss in ((0.6, 0.9), (0.8, 0.5), (0.7, 0.6), (0.75, 0.55))]
    summary = sweep.summarize_history(history, converged_epochs=2)
    assert summary["val_accuracy_lowest"] == 0.6 and summary["val_loss_at_lowest"] == 0.9
    assert summary["val_accuracy_highest"] == 0.8 and summary["val_loss_at_highest"] == 0.5
    assert summary["val_accuracy_converged"] == pytest.approx(0.725)
    assert summary["val_loss_converged"] == pytest.approx(0.575) and summary["epochs"] == 4
    rows = [
        {"lr": 1e-3, "val_accuracy_converged": 0.9, "val_loss_converged": 0.4},
        {"lr": 1e-2, "val_accuracy_converged": 0.9, "val_loss_converged": 0.3},
        {"lr": 1e-4, "val_accuracy_converged": 0.8, "val_loss_converged": 0.1},
        {"lr": 1e-1, "status": "failed"},
    ]
    assert sweep.best_cell(rows)["lr"] == 1e-2  # equal accuracy: the lower loss wins
    assert sweep.best_cell([{"status": "failed"}]) is None


def test_choose_precision():
    import tensorflow as tf

    from trainer import distribute

    for name in ("float32", "mixed_float16", "mixed_bfloat16"):
        assert distribute.choose_precision(name) == name
    with pytest.raises(ValueError, match="'fp8'"):  # a caller's mistake; the flag is checked by TrainConfig
        distribute.choose_precision("fp8")
    assert not tf.config.list_physical_devices("GPU")  # these machines have none
    with open("/proc/cpuinfo") as f:
        bf16 = any(flag in f.read().split() for flag in ("avx512_bf16", "amx_bf16"))
    assert distribute.choose_precision("auto") == ("mixed_bfloat16" if bf16 else "float32")


def test_feature_cache_key_follows_the_weights_file_content_and_the_records(records_dir, learn_records, tmp_path):
    from trainer import cache_layout, data

    info = data.load(records_dir, verify=False)
    weights = tmp_path / "vgg16_notop.h5"
    weights.write_bytes(b"first weights")

    def cache_key(*args):
        return cache_layout.cache_key(cache_layout.key_facts(info.manifest, *args))

    key = cache_key(str(weights), "flatten", "float32", 42)
    assert cache_key(str(weights), "flatten", "float32", 42) == key
    assert cache_key(str(weights), "flatten", "float32", 7) == key  # the seed counts only for random weights
    assert cache_key("none", "flatten", "float32", 7) != cache_key("none", "flatten", "float32", 42)
    weights.write_bytes(b"other weights")  # changed in place, same path
    assert cache_key(str(weights), "flatten", "float32", 42) != key
    assert cache_key("imagenet", "avg", "float32", 42) != cache_key("imagenet", "flatten", "float32", 42)
    other = data.load(learn_records, verify=False)  # other shards (same image size): another key
    assert cache_layout.cache_key(
        cache_layout.key_facts(other.manifest, "imagenet", "flatten", "float32", 42)
    ) != cache_key("imagenet", "flatten", "float32", 42)


def test_the_sweep_finds_its_own_grids_features_in_a_shared_cache(records_dir, learn_records, tmp_path):
    """The second --vertex invocation submits the cells only when the cache holds features of the grid's records,
    weights, pooling and seed; precision only when it is not `auto` (the GPU machine resolves that)."""
    import json

    from dataset_format.manifest import read_manifest
    from trainer import cache_layout

    cache = tmp_path / "features"

    def entry(manifest, pooling, precision, finished=True):
        facts = cache_layout.key_facts(manifest, "imagenet", pooling, precision, 42)
        folder = cache / cache_layout.cache_key(facts)
        (folder / "validation" / "worker-0-of-1").mkdir(parents=True)
        (folder / cache_layout.INFO).write_text(json.dumps({**facts, "records": "elsewhere"}))
        if finished:
            (folder / "validation" / "worker-0-of-1" / cache_layout.DONE).write_text("{}")

    def extracted(*flags):
        trainer = vertex.parse_trainer_flags([f"--data_dir={records_dir}", f"--feature_cache_dir={cache}", *flags])
        return sweep._extracted(trainer)

    entry(read_manifest(learn_records), "flatten", "mixed_float16")  # another dataset's features
    entry(read_manifest(records_dir), "avg", "mixed_float16")  # another pooling
    entry(read_manifest(records_dir), "flatten", "float32", finished=False)  # still extracting
    assert not extracted()  # the old check took any finished entry
    entry(read_manifest(records_dir), "flatten", "mixed_float16")
    assert extracted() and extracted("--precision=mixed_float16") and extracted("--pooling=avg")
    assert not extracted("--precision=float32") and not extracted("--pooling=max")
    assert not extracted("--weights=none")  # random weights: other features


def test_launchers_check_what_would_fail_only_in_the_cloud():
    """Trainer flags are parsed and checked before a Vertex job is built; a sweep grid lists each value once."""
    for args, match in (
        (["--lr=nan"], "--lr=nan"),
        (["--bogus=1"], "bogus"),
        (["--epochs=2", "extra"], "extra"),
        (["--seed=-3"], "--seed"),
    ):
        with pytest.raises(UserError, match=match):
            vertex.check_trainer_flags(args)
    vertex.check_trainer_flags(
        ["--data_dir=gs://b/d", "--batch_size=64", "--lr=1e-4", "--fine_tune_from=block5_conv1", "--fine_tune_epochs=2"]
    )
    with pytest.raises(UserError, match="1e-03 is listed twice|0.001 is listed twice"):
        sweep.parse_grid(["1e-3", "1e-3"], ["8"])
    with pytest.raises(UserError, match="8 is listed twice"):
        sweep.parse_grid(["1e-3"], ["8", "8"])


def test_small_inputs_that_used_to_end_in_a_traceback(tmp_path):
    import json

    from dataset_format.manifest import write_json
    from preprocessing.pipeline import check_beam_args
    from preprocessing.splits import parse_split_sizes

    path = str(tmp_path / "metrics.json")
    write_json(path, {"roc_auc": float("nan"), "rows": [float("inf"), 1.5]})  # a one-class test split
    assert json.loads(open(path).read(), parse_constant=lambda c: pytest.fail(c)) == {
        "roc_auc": None,
        "rows": [None, 1.5],
    }
    with pytest.raises(UserError, match="--direct_num_workers"):
        check_beam_args(["--direct_num_workers=-3"])
    check_beam_args(["--direct_num_workers=2"])
    with pytest.raises(UserError, match="--split_sizes"):
        parse_split_sizes("\u0662\u0664,3,3")  # Arabic-Indic digits: int() reads them, a list file never has them
    assert parse_split_sizes("24, 3,3") == {"train": 24, "validation": 3, "test": 3}


def test_the_readmes_resume_lists_are_the_configs():
    """README.md's "refused" and "may change on resume" lists are the resume="fixed" / "free" fields of TrainConfig,
    from which the fingerprint is made."""
    import re

    from trainer.config import resume_rules

    text = " ".join(open(os.path.join(ROOT, "README.md")).read().split())
    refused = re.search(r"A resume that changes the records .*? or any of (.*?) is refused", text).group(1)
    free = re.search(r"What may change on resume: (.*?)\. ", text).group(1)
    fixed_names, free_names = resume_rules()
    assert sorted(re.findall(r"`--(\w+)`", refused)) == sorted(fixed_names)
    assert sorted(re.findall(r"`--(\w+)`", free)) == sorted(free_names)


def test_the_fingerprint_keeps_the_keys_saved_checkpoints_hold():
    """Derived from the config now; the keys and value forms stay those of the checkpoints written before, so their
    resumes are still checked (and still accepted when nothing changed)."""
    from trainer.data import DatasetInfo
    from trainer.fingerprint import fingerprint

    manifest = {"image_size": 32, "resize_mode": "crop", "jpeg_quality": 95, "splits": {"train": {}}}
    config = TrainConfig(weights="none", head_units=(8, 4))
    found = fingerprint(config, DatasetInfo("d", manifest), "float32")
    assert sorted(found) == sorted(
        [
            "records",
            "image_size",
            "resize_mode",
            "jpeg_quality",
            "weights",
            "head_units",
            "dropout",
            "pooling",
            "fine_tune_from",
            "precision",
            "lr",
            "fine_tune_lr",
            "batch_size",
            "seed",
            "shuffle_buffer",
            "augment",
        ]
    )
    assert found["head_units"] == [8, 4] and found["weights"] == "none" and found["precision"] == "float32"


def test_sweep_cells_have_typed_states_and_folders_of_their_own():
    assert sweep.cell_name(1e-4, 8) != sweep.cell_name(1.000001e-4, 8)  # `{lr:g}` gave both lr0.0001_bs8
    assert sweep.cell_name(1e-3, 8) == "lr0.001_bs8" and sweep.cell_name(3e-05, 16) == "lr3e-05_bs16"
    assert "--lr=1.000001e-04" not in sweep.cell_args(
        1.000001e-4, 8, 2, "m", []
    ) and "--lr=0.0001000001" in sweep.cell_args(1.000001e-4, 8, 2, "m", [])  # the rate itself, not 6 digits of it
    cell = sweep.Cell(1e-3, 8, "out/lr0.001_bs8")
    assert cell.row()["status"] == "finished"
    cell.status, cell.detail = sweep.Status.FAILED, "error: --batch_size=8: too big"
    assert cell.row()["status"] == "failed (error: --batch_size=8: too big)"
    cell.status, cell.detail = sweep.Status.SUBMITTED, "projects/p/locations/r/customJobs/1"
    assert cell.row()["status"] == "submitted projects/p/locations/r/customJobs/1"
    assert sweep.Cell(1e-3, 8, "m", sweep.Status.DRY_RUN).row()["status"] == "dry run"


def test_the_sweep_reads_the_trainer_flags_as_the_trainer_does():
    """Not by matching strings: `--augment=false`, `--noaugment` and `--feature_cache off` mean what they mean."""
    parse = vertex.parse_trainer_flags
    assert sweep.shares_features(parse(["--data_dir=d", "--augment=false"]))
    assert sweep.shares_features(parse(["--noaugment"]))
    assert not sweep.shares_features(parse(["--augment"]))
    assert not sweep.shares_features(parse(["--feature_cache", "off"]))
    assert parse(["--feature_cache_dir=gs://b/f"]).feature_cache_dir == "gs://b/f"
    with pytest.raises(UserError, match="trainer flags after the --"):
        parse(["--no_such_flag=1"])
