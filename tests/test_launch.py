"""launch/: Vertex AI and Dataflow specs (offline, from the dry runs), and the sweep."""

import csv
import json
import os

import pytest
from PIL import Image

from conftest import assert_one_line_error, run_cli

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not

VERTEX = [
    "-m",
    "launch.vertex",
    "--project=proj",
    "--region=europe-west4",
    "--image_uri=img:1",
    "--machine_type=a3-highgpu-8g",
    "--accelerator_type=NVIDIA_H100_80GB",
    "--accelerator_count=8",
]


def test_vertex_dry_run_two_machines():
    proc = run_cli(
        *VERTEX,
        "--replica_count=2",
        "--base_output_dir=gs://b/run",
        "--display_name=job1",
        "--dry_run",
        "--",
        "--data_dir=gs://b/records",
        "--batch_size=512",
    )
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)
    assert job["displayName"] == "job1"
    pools = job["jobSpec"]["workerPoolSpecs"]
    assert [p["replicaCount"] for p in pools] == [1, 1]
    for pool in pools:
        assert pool["machineSpec"] == {
            "machineType": "a3-highgpu-8g",
            "acceleratorType": "NVIDIA_H100_80GB",
            "acceleratorCount": 8,
        }
        assert pool["containerSpec"] == {"imageUri": "img:1", "args": ["--data_dir=gs://b/records", "--batch_size=512"]}
    assert job["jobSpec"]["baseOutputDirectory"] == {"outputUriPrefix": "gs://b/run"}
    assert "gcloud ai custom-jobs create --project=proj --region=europe-west4 --display-name=job1" in proc.stderr


def test_vertex_dry_run_one_machine_three_workers():
    one = json.loads(run_cli(*VERTEX, "--base_output_dir=gs://b/o", "--dry_run", "--", "--data_dir=gs://b/r").stdout)
    assert len(one["jobSpec"]["workerPoolSpecs"]) == 1 and "scheduling" not in one["jobSpec"]
    four = json.loads(
        run_cli(
            *VERTEX, "--base_output_dir=gs://b/o", "--replica_count=4", "--dry_run", "--", "--data_dir=gs://b/r"
        ).stdout
    )
    assert [p["replicaCount"] for p in four["jobSpec"]["workerPoolSpecs"]] == [1, 3]


def test_vertex_requests_that_google_cloud_accepts():
    base = ["-m", "launch.vertex", "--project=p", "--image_uri=i", "--base_output_dir=gs://b/o", "--dry_run"]
    machine = lambda *flags: json.loads(run_cli(*base, *flags, "--", "--data_dir=gs://b/r").stdout)[  # noqa: E731
        "jobSpec"
    ]["workerPoolSpecs"][0]["machineSpec"]
    # only the GPU given: the machine that carries it
    assert machine("--accelerator_type=NVIDIA_L4", "--accelerator_count=1") == {
        "machineType": "g2-standard-4",
        "acceleratorType": "NVIDIA_L4",
        "acceleratorCount": 1,
    }
    assert machine("--accelerator_type=NVIDIA_A100_80GB", "--accelerator_count=8")["machineType"] == "a2-ultragpu-8g"
    assert machine("--accelerator_type=NVIDIA_TESLA_A100", "--accelerator_count=4")["machineType"] == "a2-highgpu-4g"
    assert machine("--accelerator_type=NVIDIA_TESLA_T4", "--accelerator_count=2")["machineType"] == "n1-standard-8"
    # a fixed family's machine alone implies its GPUs
    assert machine("--machine_type=a3-highgpu-8g") == {
        "machineType": "a3-highgpu-8g",
        "acceleratorType": "NVIDIA_H100_80GB",
        "acceleratorCount": 8,
    }
    assert machine() == {"machineType": "n1-standard-8"}
    for flags, needles in [
        (
            ["--machine_type=n1-standard-8", "--accelerator_type=NVIDIA_L4", "--accelerator_count=1"],
            ["--machine_type=n1-standard-8", "NVIDIA_L4", "g2-standard-4"],
        ),
        (
            ["--machine_type=a2-highgpu-8g", "--accelerator_type=NVIDIA_H100_80GB", "--accelerator_count=8"],
            ["a2-highgpu-8g", "8 x NVIDIA_TESLA_A100"],
        ),
        (["--accelerator_type=NVIDIA_H100_80GB", "--accelerator_count=3"], ["--accelerator_count=3", "1, 2, 4, 8"]),
        (["--accelerator_type=NVIDIA_TESLA_T4", "--accelerator_count=8"], ["--accelerator_count=8", "N1"]),
        (["--accelerator_type=NVIDIA_K80", "--accelerator_count=1"], ["--accelerator_type=NVIDIA_K80"]),
    ]:
        assert_one_line_error(run_cli(*base, *flags, "--", "--data_dir=gs://b/r"), *needles)
    # scheduling, labels, service account: in the spec, and in the gcloud command
    proc = run_cli(
        *base,
        "--spot",
        "--restart_job_on_worker_restart",
        "--timeout=36h",
        "--labels=team=vision,run=a",
        "--service_account=sa@p.iam.gserviceaccount.com",
        "--display_name=j",
        "--",
        "--data_dir=gs://b/r",
    )
    job = json.loads(proc.stdout)
    assert job["jobSpec"]["scheduling"] == {"strategy": "SPOT", "restartJobOnWorkerRestart": True, "timeout": "129600s"}
    assert job["labels"] == {"team": "vision", "run": "a"}
    assert job["jobSpec"]["serviceAccount"] == "sa@p.iam.gserviceaccount.com"
    assert "--config=job_spec.json --labels=team=vision,run=a" in proc.stderr
    assert_one_line_error(run_cli(*base, "--timeout=soon", "--", "--data_dir=gs://b/r"), "--timeout=soon")
    assert_one_line_error(run_cli(*base, "--labels=Team=x", "--", "--data_dir=gs://b/r"), "--labels=Team=x")
    # the base output folder is required up front, dry run or not (the SDK stages the job there)
    assert_one_line_error(run_cli(*VERTEX, "--dry_run", "--", "--data_dir=gs://b/r"), "--base_output_dir")
    assert_one_line_error(run_cli(*VERTEX, "--", "--data_dir=gs://b/r"), "--base_output_dir")
    # a data service pool leaves pools 1 and 2 empty: gcloud's --config refuses those, so the REST call is printed
    proc = run_cli(*base, "--data_service_workers=2", "--", "--data_dir=gs://b/r")
    pools = json.loads(proc.stdout)["jobSpec"]["workerPoolSpecs"]
    assert pools[1:3] == [{}, {}] and "gcloud ai custom-jobs create" not in proc.stderr
    assert "curl -X POST" in proc.stderr and "/v1/projects/p/locations/us-central1/customJobs" in proc.stderr


def test_vertex_bad_input():
    assert_one_line_error(run_cli(*VERTEX, "--replica_count=0", "--dry_run"), "--replica_count=0")
    assert_one_line_error(
        run_cli("-m", "launch.vertex", "--project=p", "--image_uri=i", "--accelerator_count=2", "--dry_run"),
        "--accelerator_count=2",
        "--accelerator_type",
    )
    assert_one_line_error(run_cli("-m", "launch.vertex", "--image_uri=i", "--dry_run"), "--project")
    proc = run_cli(*VERTEX, "--base_output_dir=gs://b/o", "--", "--data_dir=gs://b/r")  # a real submission, offline
    line = assert_one_line_error(proc)
    assert "google-cloud-aiplatform" in line or "credentials" in line


def test_dataflow_dry_run_composes_build_records():
    proc = run_cli(
        "-m",
        "launch.dataflow",
        "--project=proj",
        "--region=us-east1",
        "--temp_location=gs://b/tmp",
        "--machine_type=n2-standard-4",
        "--max_num_workers=16",
        "--dry_run",
        "--",
        "--celeba_dir=gs://b/celeba",
        "--output_dir=gs://b/out",
        "--split_sizes=all",
    )
    assert proc.returncode == 0, proc.stderr
    command = proc.stdout.split()
    assert command[1:3] == ["-m", "preprocessing.build_records"]
    for expected in (
        "--celeba_dir=gs://b/celeba",
        "--output_dir=gs://b/out",
        "--split_sizes=all",
        "--runner=DataflowRunner",
        "--project=proj",
        "--region=us-east1",
        "--temp_location=gs://b/tmp",
        "--machine_type=n2-standard-4",
        "--max_num_workers=16",
    ):
        assert expected in command
    package = [a for a in command if a.startswith("--extra_package=")][0].split("=", 1)[1]
    assert os.path.isabs(package) and os.path.exists(package) and package.endswith(".whl")
    # every Beam option it adds is one build_records hands to Beam rather than rejecting
    from preprocessing.pipeline import check_beam_args

    check_beam_args(
        [
            a
            for a in command
            if a.startswith(
                (
                    "--runner",
                    "--project",
                    "--region",
                    "--temp_location",
                    "--extra_package",
                    "--machine_type",
                    "--max_num_workers",
                )
            )
        ]
    )


def test_dataflow_bad_input():
    base = ["-m", "launch.dataflow", "--project=p", "--temp_location=gs://b/tmp", "--dry_run", "--"]
    assert_one_line_error(run_cli(*base, "--celeba_dir=gs://b/c", "--output_dir=tfrecords/x"), "--output_dir")
    assert_one_line_error(run_cli(*base, "--celeba_dir=data/celeba", "--output_dir=gs://b/o"), "--celeba_dir")
    assert_one_line_error(
        run_cli("-m", "launch.dataflow", "--project=p", "--temp_location=/tmp", "--dry_run"), "--temp_location"
    )


def test_sweep_grid_tables_resume_and_failing_cell(records_dir, tmp_path):
    out = tmp_path / "sweep"
    args = [
        "-m",
        "launch.sweep",
        "--lrs=1e-3,3e-3",
        "--batch_sizes=8,100000",
        "--epochs=2",
        f"--output_dir={out}",
        "--converged_epochs=2",
        "--",
        f"--data_dir={records_dir}",
        "--weights=none",
        "--head_units=8",
        "--steps_per_epoch=2",
        "--noexport",
    ]
    proc = run_cli(*args, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["lr"], r["batch_size"]) for r in rows] == [
        ("0.001", "8"),
        ("0.001", "100000"),
        ("0.003", "8"),
        ("0.003", "100000"),
    ]
    for row in rows:
        if row["batch_size"] == "8":
            assert row["status"] == "finished" and row["epochs"] == "2"
            assert (
                float(row["val_accuracy_lowest"])
                <= float(row["val_accuracy_converged"])
                <= float(row["val_accuracy_highest"])
            )
            assert row["val_loss_at_lowest"] and row["val_loss_converged"]
        else:
            assert row["status"].startswith("failed") and "--batch_size=100000" in row["status"]
    summary = (out / "summary.md").read_text()
    assert "## Validation accuracy" in summary and "## Validation loss" in summary
    assert "**Best cell:**" in summary and "--batch_size=8" in summary
    assert Image.open(out / "val_accuracy_heatmap.png").size[0] > 100
    again = run_cli(*args, timeout=600)
    assert again.stdout.count("already finished, not rerun") == 2
    # The backbone ran once for the grid; each cell trained on the shared features from its first epoch.
    assert "the backbone runs once for all 4 cells" in proc.stdout
    for name in ("lr0.001_bs8", "lr0.003_bs8"):
        log = (out / f"{name}.log").read_text()
        assert "feature cache: computing" not in log and "feature cache: reusing the train split" in log, log[-2000:]
    # ... and equals the same cell run on its own, with a cache of its own.
    alone = tmp_path / "alone"
    proc = run_cli(
        "-m",
        "trainer.main",
        *args[args.index("--") + 1 :],
        f"--model_dir={alone}",
        "--batch_size=8",
        "--lr=1e-3",
        "--epochs=2",
        f"--feature_cache_dir={tmp_path}/own_cache",
        timeout=600,
    )
    assert proc.returncode == 0 and "feature cache: computing" in proc.stderr, proc.stderr[-2000:]
    for ours, theirs in zip(_history_rows(out / "lr0.001_bs8"), _history_rows(alone)):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert abs(float(ours[key]) - float(theirs[key])) <= 1e-5, (key, ours, theirs)


def _history_rows(model_dir):
    return list(csv.DictReader(open(model_dir / "history.csv")))


def test_sweep_bad_input(tmp_path):
    assert_one_line_error(run_cli("-m", "launch.sweep", "--lrs=", f"--output_dir={tmp_path}"), "grid is empty")
    assert_one_line_error(run_cli("-m", "launch.sweep", "--lrs=-1", f"--output_dir={tmp_path}"), "--lrs=-1")
    assert_one_line_error(run_cli("-m", "launch.sweep", f"--output_dir={tmp_path}", "--", "--lr=1"), "--lr")


def _printed_jobs(stdout):
    """The JSON objects a --dry_run printed one after another."""
    decoder, text, jobs = json.JSONDecoder(), stdout, []
    while "{" in text:
        job, end = decoder.raw_decode(text[text.index("{") :])
        jobs.append(job)
        text = text[text.index("{") + end :]
    return jobs


def test_sweep_on_vertex_dry_run(tmp_path):
    # the dry run touches no storage: gs://b/sweep is neither read nor written (there is no bucket here at all)
    proc = run_cli(
        "-m",
        "launch.sweep",
        "--vertex",
        "--dry_run",
        "--project=p",
        "--image_uri=img",
        "--accelerator_type=NVIDIA_L4",
        "--accelerator_count=1",
        "--lrs=1e-3",
        "--batch_sizes=32,64",
        "--epochs=3",
        "--output_dir=gs://b/sweep",
        "--",
        "--data_dir=gs://b/records",
        env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "nothing was read from or written to gs://b/sweep" in proc.stdout
    jobs = _printed_jobs(proc.stdout)
    assert [j["displayName"] for j in jobs] == ["sweep-lr0-001_bs32", "sweep-lr0-001_bs64"]
    args = jobs[1]["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"]
    assert args == [
        "--data_dir=gs://b/records",
        "--model_dir=gs://b/sweep/lr0.001_bs64",
        "--batch_size=64",
        "--lr=0.001",
        "--epochs=3",
    ]
    # each cell its own base_output_dir (its own AIP_CHECKPOINT_DIR); an L4 comes on a G2 machine
    assert jobs[1]["jobSpec"]["baseOutputDirectory"] == {"outputUriPrefix": "gs://b/sweep/lr0.001_bs64"}
    assert jobs[1]["jobSpec"]["workerPoolSpecs"][0]["machineSpec"] == {
        "machineType": "g2-standard-4",
        "acceleratorType": "NVIDIA_L4",
        "acceleratorCount": 1,
    }
    assert_one_line_error(
        run_cli(
            "-m",
            "launch.sweep",
            "--vertex",
            "--dry_run",
            "--project=p",
            "--image_uri=img",
            f"--output_dir={tmp_path}",
            "--",
            "--data_dir=gs://b/records",
        ),
        "--output_dir",
    )


def test_sweep_on_vertex_extracts_once_on_a_gpu_and_runs_its_cells_without():
    proc = run_cli(
        "-m",
        "launch.sweep",
        "--vertex",
        "--dry_run",
        "--project=p",
        "--image_uri=img",
        "--machine_type=g2-standard-8",
        "--accelerator_type=NVIDIA_L4",
        "--accelerator_count=1",
        "--lrs=1e-3,1e-4",
        "--batch_sizes=32",
        "--epochs=3",
        "--output_dir=gs://b/sweep",
        "--",
        "--data_dir=gs://b/records",
        "--feature_cache_dir=gs://b/features",
    )
    assert proc.returncode == 0, proc.stderr
    jobs = _printed_jobs(proc.stdout)
    assert [j["displayName"] for j in jobs] == ["sweep-extract-features", "sweep-lr0-001_bs32", "sweep-lr0-0001_bs32"]
    extract = jobs[0]["jobSpec"]["workerPoolSpecs"][0]
    assert extract["machineSpec"] == {
        "machineType": "g2-standard-8",
        "acceleratorType": "NVIDIA_L4",
        "acceleratorCount": 1,
    }
    assert extract["containerSpec"]["command"] == ["python", "-m", "trainer.extract_features"]
    for cell in jobs[1:]:
        pool = cell["jobSpec"]["workerPoolSpecs"][0]
        assert pool["machineSpec"] == {"machineType": "n1-standard-8"}  # no GPU: the head trains on the features
        assert "--feature_cache_dir=gs://b/features" in pool["containerSpec"]["args"]


def test_vertex_deploy_reads_the_export_where_the_training_job_put_it():
    proc = run_cli("-m", "launch.vertex", "--deploy", "--dry_run", "--project=p", "--base_output_dir=gs://b/runs/x")
    assert proc.returncode == 0, proc.stderr
    upload = json.loads(proc.stdout)[0]
    assert upload["body"]["model"]["artifactUri"] == "gs://b/runs/x/model/export"


def test_vertex_deploy_dry_run_prints_the_requests_and_a_predict_call():
    proc = run_cli(
        "-m",
        "launch.vertex",
        "--deploy",
        "--dry_run",
        "--project=p",
        "--region=europe-west4",
        "--model_uri=gs://b/runs/r1/export",
        "--serving_accelerator_type=NVIDIA_L4",
        "--serving_accelerator_count=1",
        "--max_replicas=3",
    )
    assert proc.returncode == 0, proc.stderr
    upload, create, deploy = json.loads(proc.stdout)
    assert upload["url"].endswith("/projects/p/locations/europe-west4/models:upload")
    assert upload["body"]["model"]["artifactUri"] == "gs://b/runs/r1/export"
    assert "vertex-ai/prediction/tf2-gpu" in upload["body"]["model"]["containerSpec"]["imageUri"]
    assert create["url"].endswith("/endpoints")
    resources = deploy["body"]["deployedModel"]["dedicatedResources"]
    assert resources["machineSpec"]["acceleratorType"] == "NVIDIA_L4" and resources["maxReplicaCount"] == 3
    for needle in (
        "gcloud ai models upload",
        "gcloud ai endpoints deploy-model",
        "base64",
        "image_bytes",
        "gcloud ai endpoints predict",
    ):
        assert needle in proc.stderr, needle
    assert_one_line_error(
        run_cli("-m", "launch.vertex", "--deploy", "--dry_run", "--project=p", "--model_uri=runs/local/export"),
        "--model_uri=runs/local/export",
        "gs://",
    )
    assert_one_line_error(
        run_cli(
            "-m",
            "launch.vertex",
            "--deploy",
            "--dry_run",
            "--project=p",
            "--model_uri=gs://b/e",
            "--min_replicas=3",
            "--max_replicas=2",
        ),
        "--max_replicas=2",
    )
