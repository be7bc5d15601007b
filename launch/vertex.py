"""Submits the trainer to Vertex AI as a CustomJob (one machine with N GPUs, or several: MultiWorkerMirrored).

Usage:
  python -m launch.vertex --project=P --region=us-central1 --image_uri=REGION-docker.pkg.dev/P/repo/trainer \
      --machine_type=a3-highgpu-8g --accelerator_type=NVIDIA_H100_80GB --accelerator_count=8 --replica_count=2 \
      --base_output_dir=gs://B/runs/r1 [--dry_run] -- --data_dir=gs://B/tfrecords/celeba --batch_size=512

--dry_run prints the CustomJob as JSON on stdout and the equivalent gcloud command on stderr; nothing is sent.
Pool 0 is the chief (1 replica); pool 1 holds the other replica_count - 1 workers; with --data_service_workers=N,
pool 3 holds N CPU machines running a tf.data service that decodes the training input (trainer --data_service).
Vertex AI hands each replica CLUSTER_SPEC and AIP_MODEL_DIR, which trainer.main turns into TF_CONFIG and its
--model_dir.

Serving: python -m launch.vertex --deploy --project=P --region=R --model_uri=gs://B/runs/r1/export \
      [--serving_machine_type=n1-standard-4 --serving_accelerator_type=NVIDIA_TESLA_T4 --serving_accelerator_count=1]
uploads the SavedModel as a Vertex AI Model (prebuilt TF serving container) and deploys it to an endpoint
(launch/deploy.py); with --dry_run it prints the requests, the gcloud commands and a predict call.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import shlex
import sys
from typing import Dict, Optional, Sequence, Tuple

from celeba_common.cli import passthrough_args, run_main
from celeba_common.errors import UserError
from celeba_common.flagdefs import define_flags, from_flags, option
from launch import machines


@dataclasses.dataclass
class VertexJob:
    """Where and on what the trainer runs on Vertex AI (launch.sweep builds the same from its own flags)."""

    project: Optional[str] = option(None, "Google Cloud project.")
    region: str = option("us-central1", "Vertex AI region.")
    image_uri: Optional[str] = option(None, "Trainer container image (built from launch/Dockerfile).")
    machine_type: Optional[str] = option(
        None, "Machine type of every replica (default: the one that carries the GPUs, n1-standard-8 without)."
    )
    accelerator_type: Optional[str] = option(
        None, "e.g. NVIDIA_TESLA_T4, NVIDIA_L4, NVIDIA_A100_80GB, NVIDIA_H100_80GB."
    )
    accelerator_count: int = option(0, "GPUs per replica.")
    replica_count: int = option(1, "Machines: 1 chief + (replica_count - 1) workers.")
    display_name: Optional[str] = option(None, "Job name (default celeba-vgg16-<time>).")
    base_output_dir: Optional[str] = option(
        None,
        "gs:// folder of the job's outputs (required): Vertex AI sets "
        "AIP_MODEL_DIR=<it>/model/, the trainer's --model_dir.",
    )
    service_account: Optional[str] = option(None, "Service account the job runs as.")
    spot: bool = option(False, "Run on Spot VMs (cheaper, preemptible; the trainer resumes where it stopped).")
    restart_job_on_worker_restart: bool = option(
        False,
        "Restart the whole job when a worker restarts (with Spot VMs: every worker resumes from the last checkpoint).",
    )
    timeout: str = option("", "Longest run, e.g. 36h, 90m, 7d (default: Vertex AI's 7 days).")
    labels: Tuple[str, ...] = option((), "Labels of the job, e.g. team=vision,run=baseline.")
    data_service_workers: int = option(
        0,
        "Add a pool of this many CPU machines running a tf.data service "
        "(launch.data_service) that decodes the training input; 0: none.",
        lower_bound=0,
    )
    data_service_machine_type: str = option("n2-highcpu-32", "Machine type of the tf.data service pool.")
    dry_run: bool = option(False, "Print the job instead of submitting it.")


def parse_timeout(text: str) -> Optional[str]:
    """'36h', '90m', '3600s', '7d' -> '129600s' (the API's Duration); '' -> None."""
    if not text:
        return None
    found = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    seconds = int(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)] if found else 0
    if not 0 < seconds <= 30 * 86400:
        raise UserError(f"--timeout={text}: expected a duration such as 36h, 90m or 7d (at most 30d)")
    return f"{seconds}s"


def parse_labels(pairs: Sequence[str]) -> Dict[str, str]:
    """KEY=VALUE pairs -> a dict, checked against Google Cloud's label rules."""
    labels = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not (re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) and re.fullmatch(r"[a-z0-9_-]{0,63}", value)):
            raise UserError(
                f"--labels={pair}: labels are key=value, lowercase letters, digits, _ and - (a key "
                f"starts with a letter; 63 characters at most)"
            )
        labels[key] = value
    return labels


def job_spec(
    display_name: str,
    image_uri: str,
    machine_type: Optional[str],
    accelerator_type: Optional[str],
    accelerator_count: int,
    replica_count: int,
    args: Sequence[str],
    base_output_dir: Optional[str] = None,
    service_account: Optional[str] = None,
    module: str = "trainer.main",
    scheduling: Optional[dict] = None,
    labels: Optional[Dict[str, str]] = None,
) -> dict:
    """The CustomJob resource (REST field names) for the trainer."""
    if replica_count < 1:
        raise UserError(f"--replica_count={replica_count}: must be >= 1 (1 chief + replica_count - 1 workers)")
    machine_type, accelerator_type, accelerator_count = machines.resolve(
        machine_type, accelerator_type, accelerator_count
    )
    if not image_uri:
        raise UserError("--image_uri is required: the trainer image built from launch/Dockerfile")
    if not base_output_dir or not base_output_dir.startswith("gs://"):
        raise UserError(
            f"--base_output_dir={base_output_dir}: a gs:// folder is required; Vertex AI writes the "
            f"job's outputs under it (the model in <it>/model/) and stages the job there"
        )
    machine = {"machineType": machine_type}
    if accelerator_type:
        machine.update({"acceleratorType": accelerator_type, "acceleratorCount": accelerator_count})
    container = {"imageUri": image_uri, "args": list(args)}
    if module != "trainer.main":  # the image's entry point runs trainer.main
        container["command"] = ["python", "-m", module]
    pool = {"machineSpec": machine, "containerSpec": container}
    pools = [{**pool, "replicaCount": 1}]
    if replica_count > 1:
        pools.append({**json.loads(json.dumps(pool)), "replicaCount": replica_count - 1})
    spec = {"workerPoolSpecs": pools, "baseOutputDirectory": {"outputUriPrefix": base_output_dir}}
    if service_account:
        spec["serviceAccount"] = service_account
    if scheduling:
        spec["scheduling"] = scheduling
    job = {"displayName": display_name, "jobSpec": spec}
    if labels:
        job["labels"] = labels
    return job


def scheduling_of(config: "VertexJob") -> dict:
    """The CustomJobSpec's scheduling: Spot VMs, restarts, timeout (only what the flags set)."""
    scheduling = {}
    if config.spot:
        scheduling["strategy"] = "SPOT"
    if config.restart_job_on_worker_restart:
        scheduling["restartJobOnWorkerRestart"] = True
    timeout = parse_timeout(config.timeout)
    if timeout:
        scheduling["timeout"] = timeout
    return scheduling


def gcloud_command(job: dict, project: str, region: str, spec_file: str = "job_spec.json") -> str:
    """The equivalent command line: gcloud with the job's spec as its --config, or, when the job has empty worker
    pools (gcloud refuses those; the REST API takes them), the REST call with curl."""
    if any(not pool for pool in job["jobSpec"]["workerPoolSpecs"]):
        url = f"https://{region}-aiplatform.googleapis.com/v1/projects/{project}/locations/{region}/customJobs"
        return (
            f"# save the JSON above as job.json (its empty worker pools keep pool 3 in place, which gcloud's "
            f"--config refuses), then:\n"
            f'curl -X POST -H "Authorization: Bearer $(gcloud auth print-access-token)" '
            f'-H "Content-Type: application/json" -d @job.json {shlex.quote(url)}'
        )
    labels = ",".join(f"{k}={v}" for k, v in job.get("labels", {}).items())
    return (
        f"# save .jobSpec of the JSON above as {spec_file}, then:\n"
        f"gcloud ai custom-jobs create --project={shlex.quote(project)} --region={shlex.quote(region)} "
        f"--display-name={shlex.quote(job['displayName'])} --config={spec_file}"
        + (f" --labels={shlex.quote(labels)}" if labels else "")
    )


def _snake(obj):
    """REST camelCase keys -> the Python SDK's snake_case keys."""
    if isinstance(obj, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): _snake(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_snake(v) for v in obj]
    return obj


def submit(job: dict, project: str, region: str) -> str:
    """Submits through google-cloud-aiplatform; returns the job's resource name."""
    try:
        from google.cloud import aiplatform
    except ImportError:
        raise UserError("google-cloud-aiplatform is not installed: pip install -e '.[cloud]'") from None
    try:
        import google.auth

        google.auth.default()
    except Exception as e:  # DefaultCredentialsError and friends
        raise UserError(
            f"no Google Cloud credentials ({type(e).__name__}): run 'gcloud auth application-default "
            f"login' or set GOOGLE_APPLICATION_CREDENTIALS"
        ) from None
    spec = job["jobSpec"]
    base = spec["baseOutputDirectory"]["outputUriPrefix"]
    scheduling = spec.get("scheduling", {})
    extra = {}
    if scheduling.get("strategy") == "SPOT":
        from google.cloud.aiplatform_v1.types import custom_job as custom_job_types

        extra["scheduling_strategy"] = custom_job_types.Scheduling.Strategy.SPOT
    try:
        aiplatform.init(project=project, location=region, staging_bucket=base)
        custom = aiplatform.CustomJob(
            display_name=job["displayName"],
            labels=job.get("labels"),
            worker_pool_specs=_snake(spec["workerPoolSpecs"]),
            base_output_dir=base,
        )
        custom.submit(
            service_account=spec.get("serviceAccount"),
            timeout=_seconds(scheduling.get("timeout")),
            restart_job_on_worker_restart=scheduling.get("restartJobOnWorkerRestart", False),
            **extra,
        )
    except Exception as e:
        raise UserError(
            f"Vertex AI refused the job: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    return custom.resource_name


def model_export_uri(base_output_dir: str) -> str:
    """Where a training job's SavedModel lands: Vertex AI sets AIP_MODEL_DIR=<base_output_dir>/model/, the
    trainer's --model_dir, and the trainer exports into its export/."""
    return f"{base_output_dir.rstrip('/')}/model/export"


def _seconds(duration: Optional[str]) -> Optional[int]:
    return int(duration[:-1]) if duration else None


def check_batch_size(args: Sequence[str], replica_count: int, accelerator_count: int) -> None:
    """The trainer's global batch must split evenly over every GPU of the job (one replica per CPU-only machine)."""
    batch = parse_trainer_flags(args).batch_size
    replicas = max(replica_count, 1) * max(accelerator_count, 1)
    if batch <= 0 or batch % replicas:
        raise UserError(
            f"--batch_size={batch} does not divide by the job's {replicas} GPUs ({replica_count} "
            f"machines x {max(accelerator_count, 1)}); use a multiple of {replicas}"
        )


def check_trainer_flags(args: Sequence[str]) -> None:
    """The trainer's flags parsed and checked as trainer.main will parse and check them (no file is read), so a
    typo or a bad value fails here in a second, not after the cloud machines have started."""
    parse_trainer_flags(args)


def parse_trainer_flags(args: Sequence[str]):
    """The TrainConfig that trainer.main will build from `args` (checked, no file read; model_dir a placeholder
    when absent): launchers ask it, never the strings."""
    from absl import flags

    from trainer.config import TrainConfig

    values = flags.FlagValues()
    define_flags(TrainConfig, values)
    try:
        extra = values(["trainer.main", *args])[1:]
    except flags.Error as e:
        raise UserError(f"trainer flags after the --: {' '.join(str(e).split())}") from None
    if extra:
        raise UserError(f"trainer flags after the --: unexpected argument {extra[0]}")
    config = from_flags(TrainConfig, values, model_dir=values["model_dir"].value or "model")
    config.check_values()
    return config


def build_job(
    config: VertexJob, args: Sequence[str], display_name: Optional[str] = None, module: str = "trainer.main"
) -> dict:
    """The CustomJob for `config` running the trainer with `args`."""
    if not config.project:
        raise UserError("--project is required")
    check_trainer_flags(args)
    _, _, gpus = machines.resolve(config.machine_type, config.accelerator_type, config.accelerator_count)
    check_batch_size(args, config.replica_count, gpus)
    name = (
        display_name
        or config.display_name
        or f"celeba-vgg16-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
    )
    if config.data_service_workers:
        args = [a for a in args if not a.startswith("--data_service")] + ["--data_service=vertex"]
    job = job_spec(
        name,
        config.image_uri,
        config.machine_type,
        config.accelerator_type,
        config.accelerator_count,
        config.replica_count,
        args,
        config.base_output_dir,
        config.service_account,
        module,
        scheduling_of(config),
        parse_labels(config.labels),
    )
    if config.data_service_workers:
        add_data_service_pool(job, config.image_uri, config.data_service_workers, config.data_service_machine_type)
    return job


def add_data_service_pool(job: dict, image_uri: str, workers: int, machine_type: str) -> None:
    """Pool 3 of the job: CPU machines running a tf.data service. Its first replica also runs the dispatcher, which
    the trainers find through CLUSTER_SPEC (--data_service=vertex); pools 1 and 2 stay empty when unused."""
    pools = job["jobSpec"]["workerPoolSpecs"]
    while len(pools) < 3:
        pools.append({})
    pools.append(
        {
            "machineSpec": {"machineType": machine_type},
            "replicaCount": workers,
            "containerSpec": {
                "imageUri": image_uri,
                "command": ["python", "-m", "launch.data_service", "--role=vertex"],
            },
        }
    )


def launch(
    config: VertexJob, args: Sequence[str], display_name: Optional[str] = None, module: str = "trainer.main"
) -> str:
    """Dry run: prints the job and returns ''; else submits it and returns its resource name."""
    job = build_job(config, args, display_name, module)
    if not any(a.startswith("--data_dir=gs://") for a in args):
        sys.stderr.write("note: no --data_dir=gs://... in the trainer flags; the job cannot see local folders\n")
    if config.dry_run:
        print(json.dumps(job, indent=2))
        sys.stderr.write(gcloud_command(job, config.project, config.region) + "\n")
        return ""
    return submit(job, config.project, config.region)


def main(argv: Sequence[str]) -> int:
    from launch.deploy import VertexDeploy, deploy

    job, serving = from_flags(VertexJob), from_flags(VertexDeploy)
    if serving.deploy and not serving.model_uri and job.base_output_dir:  # where a Vertex training job put it
        serving = dataclasses.replace(serving, model_uri=model_export_uri(job.base_output_dir))
    if serving.deploy:
        endpoint = deploy(serving, job.project, job.region, job.dry_run)
        if endpoint:
            print(f"deployed to {endpoint}")
        return 0
    name = launch(job, passthrough_args(argv))
    if name:
        print(f"submitted {name}")
    return 0


def _define_flags() -> None:
    from launch.deploy import VertexDeploy

    define_flags(VertexJob)
    define_flags(VertexDeploy)


def cli() -> None:
    run_main(main, define_flags=_define_flags)


if __name__ == "__main__":
    cli()
