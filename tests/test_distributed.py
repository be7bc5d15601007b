"""MirroredStrategy on 2 logical CPUs and a 2-process MultiWorkerMirroredStrategy cluster on 127.0.0.1."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, assert_one_line_error, run_cli

pytestmark = pytest.mark.slow  # processes and training runs: `make test` runs them, `make check` does not


def test_mirrored_two_devices_equals_one_device(records_dir):
    proc = run_cli(os.path.join(ROOT, "tests", "helpers", "mirrored_vs_one_device.py"), records_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["max_weight_diff"] < 1e-5, result
    assert abs(result["losses_mirrored"][0] - result["losses_single"][0]) < 1e-5
    # the same on features held in memory: each replica gathers its half of every global batch
    assert result["resident_max_weight_diff"] < 1e-5, result
    assert all(abs(a - b) < 1e-5 for a, b in zip(result["resident_losses_mirrored"], result["resident_losses_single"]))
    # and on cached features read back from their folder (too many to hold in memory): extracted on 2 replicas,
    # the same rows in the same order as on one device, then the same head steps
    streamed = json.loads(proc.stdout.strip().splitlines()[-2])
    assert streamed["features_rows"] == [120, 120] and streamed["features_max_diff"] < 1e-5, streamed
    assert streamed["streamed_max_weight_diff"] < 1e-5, streamed
    assert abs(streamed["streamed_losses_mirrored"][0] - streamed["streamed_losses_single"][0]) < 1e-5


def test_local_cluster_stops_all_workers_when_one_fails(records_dir, tmp_path):
    import psutil

    # worker 1 fails at once (its data folder is missing); worker 0 would wait for it forever
    script = tmp_path / "worker.py"
    script.write_text(
        "import json, os, sys, time\n"
        "index = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
        "print('started', flush=True)\n"
        "if index == 1:\n"
        "    sys.stderr.write('error: data folder /nope does not exist\\n'); sys.exit(2)\n"
        "time.sleep(600)\n"
    )
    proc = run_cli(
        "-m",
        "launch.local_cluster",
        "--num_workers=2",
        "--grace_seconds=2",
        "--module=worker",
        env={"PYTHONPATH": str(tmp_path)},
        timeout=120,
    )
    assert_one_line_error(proc, "local cluster failed", "status 2")
    assert "[worker 1] error: data folder /nope does not exist" in proc.stdout
    assert "[worker 0] started" in proc.stdout
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and p.info["cmdline"][-1:] == ["worker"] and "-m" in p.info["cmdline"]
    ]
    assert not leftovers


def test_batch_must_divide_by_replicas(records_dir, tmp_path):
    proc = run_cli(
        "-m",
        "trainer.main",
        f"--data_dir={records_dir}",
        f"--model_dir={tmp_path / 'm'}",
        "--num_cpu_devices=2",
        "--strategy=mirrored",
        "--batch_size=7",
        "--weights=none",
    )
    assert_one_line_error(proc, "--batch_size=7", "2 replicas")


def test_sigkill_to_the_launcher_leaves_no_worker(tmp_path):
    import psutil

    script = tmp_path / "sleeper.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "launch.local_cluster", "--num_workers=2", "--module=sleeper"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started = 0
    while started < 2:
        line = launcher.stdout.readline()
        assert line, "the launcher ended before its workers started"
        started += "started" in line
    workers = psutil.Process(launcher.pid).children()
    assert len(workers) == 2
    launcher.kill()
    launcher.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, [p.cmdline() for p in alive]


def _eval_json(output):
    return [json.loads(line.split("] ", 1)[-1]) for line in output.splitlines() if '"mode"' in line]


def test_evaluation_counts_each_example_once_on_every_strategy(records_dir):
    helper = os.path.join(ROOT, "tests", "helpers", "eval_everywhere.py")
    results = {}
    for mode in ("one", "mirrored"):
        proc = run_cli(helper, mode, records_dir)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[mode] = _eval_json(proc.stdout)[0]
    proc = run_cli(
        "-m",
        "launch.local_cluster",
        "--num_workers=2",
        "--module=eval_everywhere",
        "--",
        "multi_worker",
        records_dir,
        env={"PYTHONPATH": os.path.dirname(helper)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workers = _eval_json(proc.stdout)
    assert len(workers) == 2 and workers[0] == workers[1]  # every worker gets the same, complete figures
    results["multi_worker"] = workers[0]
    assert [r["replicas"] for r in results.values()] == [1, 2, 2]
    for mode in ("mirrored", "multi_worker"):
        assert results[mode]["num_examples"] == 20  # the manifest's test count
        for key in ("val_loss", "val_accuracy", "test_loss", "test_accuracy", "roc_auc"):
            assert abs(results[mode][key] - results["one"][key]) <= 1e-5, (mode, key, results)


def _cluster_cmd(data_dir, model_dir, *extra):
    return [
        sys.executable,
        "-m",
        "launch.local_cluster",
        "--num_workers=2",
        "--grace_seconds=20",
        "--",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        "--batch_size=8",
        "--weights=none",
        "--head_units=8",
        "--noexport",
        *extra,
    ]


def _latest_checkpoint_number(model_dir):
    index = os.path.join(model_dir, "checkpoints", "checkpoint")
    if not os.path.exists(index):
        return 0
    found = re.search(r'model_checkpoint_path: "ckpt-(\d+)"', open(index).read())
    return int(found.group(1)) if found else 0


def _start_cluster(cmd, model_dir, checkpoints_wanted, timeout=300):
    import time

    import psutil

    launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while _latest_checkpoint_number(model_dir) < checkpoints_wanted:
        assert launcher.poll() is None and time.time() < deadline, launcher.communicate()[0][-3000:]
        time.sleep(0.05)
    workers = sorted(
        psutil.Process(launcher.pid).children(), key=lambda p: json.loads(p.environ()["TF_CONFIG"])["task"]["index"]
    )
    assert len(workers) == 2
    return launcher, workers


def _checksums(out):
    return dict(re.findall(r"\[worker \d\].*weights checksum \((worker-\d)\): (\w+)", out))


def test_multi_worker_resume_after_sigkill_of_every_process(records_dir, tmp_path):
    """2 workers, feature cache (each worker caches its own shard), bfloat16; killed whole after epoch 2 of 6."""
    model_dir = str(tmp_path / "mw")
    cmd = _cluster_cmd(records_dir, model_dir, "--epochs=6", "--precision=mixed_bfloat16")
    launcher, workers = _start_cluster(cmd, model_dir, checkpoints_wanted=2)  # epoch 2 checkpointed
    for process in [launcher, *workers]:
        process.kill()
    launcher.wait()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    resumed = re.findall(r"\[worker (\d)\] Resumed after epoch (\d+)", again.stdout)
    assert sorted(w for w, _ in resumed) == ["0", "1"] and len({e for _, e in resumed}) == 1, resumed
    assert int(resumed[0][1]) >= 2
    out = again.stdout
    assert re.search(r"\[worker 0\].*MultiWorkerMirroredStrategy, 2 replicas in sync", out), out[-3000:]
    assert "feature cache: computing" not in out  # both workers' features were cached before the kill
    sums = _checksums(out)
    assert set(sums) == {"worker-0", "worker-1"} and len(set(sums.values())) == 1, sums
    with open(os.path.join(model_dir, "history.csv")) as f:
        assert [int(line.split(",")[0]) for line in f.read().splitlines()[1:]] == [1, 2, 3, 4, 5, 6]
    assert os.path.exists(os.path.join(model_dir, "metrics.json"))  # only the chief writes the outputs
    worker1 = [line for line in out.splitlines() if line.startswith("[worker 1]")]
    assert worker1 and not [line for line in worker1 if "val_accuracy" in line or "model, metrics and plots" in line]
    # a clean end: every worker reaches the final barrier, so nobody reports the others as crashed
    assert not [
        line for line in out.splitlines() if re.match(r"\[worker \d\] (E\d{4} |ERROR)", line) or "StartAbort" in line
    ]


def test_sigterm_to_one_worker_stops_every_worker_at_the_same_step(records_dir, tmp_path):
    import signal

    model_dir = str(tmp_path / "mw")
    cmd = _cluster_cmd(
        records_dir, model_dir, "--epochs=1", "--steps_per_epoch=80", "--checkpoint_steps=10", "--feature_cache=off"
    )
    launcher, workers = _start_cluster(cmd, model_dir, checkpoints_wanted=1)  # mid-epoch 1
    workers[1].send_signal(signal.SIGTERM)
    out, _ = launcher.communicate(timeout=120)  # no hang: the launcher returns
    stops = re.findall(
        r"\[worker (\d)\] stopped by SIGTERM \(to (this|another) worker\) at epoch (\d+), "
        r"step (\d+)",
        out,
    )
    assert sorted((w, who) for w, who, _, _ in stops) == [("0", "another"), ("1", "this")], out[-3000:]
    assert len({(e, s) for _, _, e, s in stops}) == 1  # the same step everywhere
    epoch, step = int(stops[0][2]), int(stops[0][3])
    assert epoch == 1 and 0 < step < 80
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    resumed = re.findall(r"\[worker (\d)\] Resumed at epoch 1, step (\d+)", again.stdout)
    assert sorted(resumed) == [("0", str(step)), ("1", str(step))], again.stdout[-3000:]
    sums = _checksums(again.stdout)
    assert set(sums) == {"worker-0", "worker-1"} and len(set(sums.values())) == 1, sums


def test_an_overflow_on_one_replica_skips_the_step_on_every_replica():
    """mixed_float16, 2 logical CPUs: replica 1's batch overflows float16, replica 0's does not."""
    proc = run_cli(os.path.join(ROOT, "tests", "helpers", "loss_scale_two_replicas.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["weights_unchanged"] and result["weights_finite"], result
    assert result["scale_after"] == result["scale_before"] / 2  # lowered once, the same on every replica


def test_sigkill_of_one_worker_ends_the_other_in_one_line(records_dir, tmp_path):
    import signal as signals

    model_dir = str(tmp_path / "mw")
    cmd = _cluster_cmd(records_dir, model_dir, "--epochs=50", "--feature_cache=off")
    launcher, workers = _start_cluster(cmd, model_dir, checkpoints_wanted=1)
    workers[1].send_signal(signals.SIGKILL)
    out, _ = launcher.communicate(timeout=180)
    assert launcher.returncode != 0
    survivor = [line for line in out.splitlines() if line.startswith("[worker 0]")]
    assert not [line for line in survivor if "Traceback" in line], out[-3000:]  # (TF's own C++ log lines remain)
    errors = [line for line in survivor if "] error:" in line]
    assert len(errors) <= 1, errors  # one line (or none: the launcher may stop it first)
    assert not errors or "the cluster lost a worker (" in errors[0], errors
    assert "local cluster failed" in out


def test_a_worker_that_never_starts_ends_the_run_in_one_line(records_dir, tmp_path):
    from conftest import free_port

    tf_config = {
        "cluster": {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]},
        "task": {"type": "worker", "index": 0},
    }  # worker 1 is never started
    proc = run_cli(
        "-m",
        "trainer.main",
        f"--data_dir={records_dir}",
        f"--model_dir={tmp_path / 'm'}",
        "--weights=none",
        "--batch_size=8",
        "--cluster_wait=10",
        env={"TF_CONFIG": json.dumps(tf_config)},
        timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "joined within 10 s" in errors[0] and "--cluster_wait" in errors[0], proc.stderr
