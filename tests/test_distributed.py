"""MirroredStrategy on 2 logical CPUs and a 2-process MultiWorkerMirroredStrategy cluster on 127.0.0.1."""
import json
import os
import re
import subprocess
import sys

from conftest import ROOT, TRAIN_ARGS, assert_one_line_error, run_cli


def test_mirrored_two_devices_equals_one_device(records_dir):
    proc = run_cli(os.path.join(ROOT, "tests", "helpers", "mirrored_vs_one_device.py"), records_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["max_weight_diff"] < 1e-5, result
    assert abs(result["losses_mirrored"][0] - result["losses_single"][0]) < 1e-5


def test_multi_worker_cluster_ends_with_equal_weights(learn_records, tmp_path):
    proc = run_cli("-m", "launch.local_cluster", "--num_workers=2", "--", f"--data_dir={learn_records}",
                   f"--model_dir={tmp_path / 'mw'}", "--epochs=2", "--steps_per_epoch=6", *TRAIN_ARGS,
                   "--precision=mixed_bfloat16", "--noexport", timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert re.search(r"\[worker 0\].*MultiWorkerMirroredStrategy, 2 replicas in sync", out), out[-3000:]
    sums = dict(re.findall(r"\[worker \d\].*weights checksum \((worker-\d)\): (\w+)", out))
    assert set(sums) == {"worker-0", "worker-1"} and len(set(sums.values())) == 1, sums
    assert os.path.exists(tmp_path / "mw" / "history.csv")  # only the chief writes the outputs
    assert os.path.exists(tmp_path / "mw" / "metrics.json")
    worker1 = [line for line in out.splitlines() if line.startswith("[worker 1]")]
    assert worker1 and not [line for line in worker1 if "val_accuracy" in line or "model, metrics and plots" in line]
    assert os.listdir(tmp_path / "mw" / "checkpoints") and not list((tmp_path / "mw").glob("ckpt-worker*"))


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
        "time.sleep(600)\n")
    proc = run_cli("-m", "launch.local_cluster", "--num_workers=2", "--grace_seconds=2",
                   "--module=worker", env={"PYTHONPATH": str(tmp_path)}, timeout=120)
    assert_one_line_error(proc, "local cluster failed", "status 2")
    assert "[worker 1] error: data folder /nope does not exist" in proc.stdout
    assert "[worker 0] started" in proc.stdout
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and
                 p.info["cmdline"][-1:] == ["worker"] and "-m" in p.info["cmdline"]]
    assert not leftovers


def test_batch_must_divide_by_replicas(records_dir, tmp_path):
    proc = run_cli("-m", "trainer.main", f"--data_dir={records_dir}", f"--model_dir={tmp_path / 'm'}",
                   "--num_cpu_devices=2", "--strategy=mirrored", "--batch_size=7", "--weights=none")
    assert_one_line_error(proc, "--batch_size=7", "2 replicas")


def test_sigkill_to_the_launcher_leaves_no_worker(tmp_path):
    import psutil

    script = tmp_path / "sleeper.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    launcher = subprocess.Popen([sys.executable, "-m", "launch.local_cluster", "--num_workers=2", "--module=sleeper"],
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(tmp_path)}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
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
