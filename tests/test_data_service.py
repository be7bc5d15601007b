"""Training through a real tf.data service: a dispatcher and two worker processes started by the project's launchers."""

import json
import os
import subprocess

import pytest

from conftest import assert_one_line_error, run_cli

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not


def test_training_through_a_local_data_service_learns_and_says_so(learn_records, tmp_path):
    model_dir = tmp_path / "run"
    proc = run_cli(
        "-m",
        "launch.local_cluster",
        "--num_workers=1",
        "--data_service_workers=2",
        "--",
        f"--data_dir={learn_records}",
        f"--model_dir={model_dir}",
        "--weights=none",
        "--epochs=6",
        "--feature_cache=off",
        "--batch_size=32",
        "--lr=5e-3",
        "--precision=float32",
        "--noexport",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tf.data service at grpc://127.0.0.1:" in proc.stdout
    assert "training input from the tf.data service at grpc://127.0.0.1:" in proc.stdout, proc.stdout[-3000:]
    metrics = json.load(open(model_dir / "metrics.json"))
    manifest = json.load(open(os.path.join(learn_records, "manifest.json")))
    majority = max(manifest["splits"]["test"]["labels"].values()) / manifest["splits"]["test"]["num_examples"]
    # The same flags without the service: test accuracy 0.77, ROC AUC 0.866. Through the service (its order is not
    # seeded) runs gave accuracy 0.54-0.79 (0.54 = the majority class: the 0.5 threshold is not settled after 6
    # epochs) but ROC AUC 0.854-0.872: the band is held on the ranking, which a model that learned nothing scores
    # at about 0.5, and accuracy may not fall below the majority class.
    assert metrics["roc_auc"] >= 0.75, metrics["roc_auc"]
    assert metrics["test_accuracy"] >= majority, (metrics["test_accuracy"], majority)
    port = proc.stdout.split("tf.data service at grpc://127.0.0.1:")[1].split(":")[0].split()[0]
    assert not subprocess.run(["pgrep", "-f", f"launch.data_service --role.*{port}"], capture_output=True).stdout, (
        "service processes outlived the launcher"
    )


def test_data_service_flags_are_checked_up_front(learn_records, tmp_path):
    proc = run_cli(
        "-m",
        "trainer.main",
        f"--data_dir={learn_records}",
        f"--model_dir={tmp_path}/m",
        "--data_service=localhost:5050",
    )
    assert_one_line_error(proc, "--data_service=localhost:5050", "grpc://HOST:PORT")
    proc = run_cli("-m", "launch.data_service", "--role=worker")
    assert_one_line_error(proc, "--dispatcher", "HOST:PORT")


def test_vertex_dry_run_adds_a_cpu_pool_for_the_data_service():
    from launch.vertex import VertexJob, build_job
    from trainer import cluster

    job = build_job(
        VertexJob(
            project="p",
            image_uri="img",
            accelerator_type="NVIDIA_L4",
            accelerator_count=1,
            replica_count=2,
            data_service_workers=4,
            base_output_dir="gs://b/r",
        ),
        ["--data_dir=gs://b/d", "--batch_size=64"],
    )
    pools = job["jobSpec"]["workerPoolSpecs"]
    assert len(pools) == 4 and pools[2] == {}
    assert pools[3]["replicaCount"] == 4 and "acceleratorType" not in pools[3]["machineSpec"]
    assert pools[3]["containerSpec"]["command"][-1] == "--role=vertex"
    assert "--data_service=vertex" in pools[0]["containerSpec"]["args"]
    spec = {
        "cluster": {"workerpool0": ["c:2222"], "workerpool1": ["w:2222"], "workerpool3": ["d0:2222", "d1:2222"]},
        "task": {"type": "workerpool1", "index": 0},
    }
    assert cluster.vertex_data_service({"CLUSTER_SPEC": json.dumps(spec)}) == "grpc://d0:5050"
    assert cluster.cluster_spec_to_tf_config(spec)["cluster"] == {"chief": ["c:2222"], "worker": ["w:2222"]}
    # each data service replica advertises its own CLUSTER_SPEC host (the names that resolve between replicas)
    replica = {**spec, "task": {"type": "workerpool3", "index": 1}}
    assert cluster.vertex_data_service_replica({"CLUSTER_SPEC": json.dumps(replica)}) == (1, "d1")
