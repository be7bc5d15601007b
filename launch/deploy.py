"""Deploys an exported SavedModel to a Vertex AI endpoint (launch.vertex --deploy): upload it as a Model with a
prebuilt TensorFlow serving container, create an endpoint, deploy the model there on a machine (and GPU).

With --dry_run it prints the three REST requests as JSON (stdout), the equivalent gcloud commands and a predict
call with a base64 image (stderr); nothing is sent. The SavedModel's serving_default takes raw image bytes
(trainer/serving.py), so the request carries the file and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from typing import List, Optional

from celeba_common.errors import UserError
from celeba_common.flagdefs import option

# Vertex AI's prebuilt TensorFlow prediction containers (us-docker.pkg.dev/vertex-ai/prediction/...).
SERVING_IMAGES = {
    "cpu": "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest",
    "gpu": "us-docker.pkg.dev/vertex-ai/prediction/tf2-gpu.2-15:latest",
}


@dataclasses.dataclass
class VertexDeploy:
    deploy: bool = option(False, "Deploy --model_uri to an endpoint instead of submitting a training job.")
    model_uri: Optional[str] = option(
        None,
        "gs:// folder of the SavedModel: a trainer.main --model_dir's export/ "
        "(default with --base_output_dir: the training job's <it>/model/export).",
    )
    model_display_name: str = option("celeba-gender-vgg16", "Display name of the Vertex AI Model and endpoint.")
    serving_machine_type: str = option("n1-standard-4", "Machine type of the endpoint's replicas.")
    serving_accelerator_type: Optional[str] = option(None, "GPU of each endpoint replica, e.g. NVIDIA_TESLA_T4.")
    serving_accelerator_count: int = option(0, "GPUs per endpoint replica.", lower_bound=0)
    min_replicas: int = option(1, "Fewest endpoint replicas.", lower_bound=1)
    max_replicas: int = option(1, "Most endpoint replicas (autoscaling above min).", lower_bound=1)
    serving_image: Optional[str] = option(None, "Serving container (default: Vertex AI's prebuilt TF 2 CPU or GPU).")

    def validate(self) -> None:
        if not self.model_uri or not self.model_uri.startswith("gs://"):
            raise UserError(
                f"--model_uri={self.model_uri}: --deploy needs the gs:// folder of the SavedModel "
                f"(MODEL_DIR/export of a run on gs://), or the training job's --base_output_dir"
            )
        if bool(self.serving_accelerator_type) != bool(self.serving_accelerator_count):
            raise UserError("--serving_accelerator_type and --serving_accelerator_count go together")
        if self.max_replicas < self.min_replicas:
            raise UserError(f"--max_replicas={self.max_replicas} is below --min_replicas={self.min_replicas}")


def requests(config: VertexDeploy, project: str, region: str) -> List[dict]:
    """The REST calls, in order: models.upload, endpoints.create, endpoints.deployModel."""
    base = f"https://{region}-aiplatform.googleapis.com/v1/projects/{project}/locations/{region}"
    image = config.serving_image or SERVING_IMAGES["gpu" if config.serving_accelerator_count else "cpu"]
    machine = {"machineType": config.serving_machine_type}
    if config.serving_accelerator_type:
        machine.update(
            {"acceleratorType": config.serving_accelerator_type, "acceleratorCount": config.serving_accelerator_count}
        )
    return [
        {
            "method": "POST",
            "url": f"{base}/models:upload",
            "body": {
                "model": {
                    "displayName": config.model_display_name,
                    "artifactUri": config.model_uri,
                    "containerSpec": {"imageUri": image},
                }
            },
        },
        {"method": "POST", "url": f"{base}/endpoints", "body": {"displayName": config.model_display_name}},
        {
            "method": "POST",
            "url": f"{base}/endpoints/ENDPOINT_ID:deployModel",
            "body": {
                "deployedModel": {
                    "model": f"projects/{project}/locations/{region}/models/MODEL_ID",
                    "displayName": config.model_display_name,
                    "dedicatedResources": {
                        "machineSpec": machine,
                        "minReplicaCount": config.min_replicas,
                        "maxReplicaCount": config.max_replicas,
                    },
                },
                "trafficSplit": {"0": 100},
            },
        },
    ]


def gcloud_commands(config: VertexDeploy, project: str, region: str) -> str:
    q = shlex.quote
    image = config.serving_image or SERVING_IMAGES["gpu" if config.serving_accelerator_count else "cpu"]
    where = f"--project={q(project)} --region={q(region)}"
    accelerator = (
        f" --accelerator=type={config.serving_accelerator_type},count={config.serving_accelerator_count}"
        if config.serving_accelerator_type
        else ""
    )
    return "\n".join(
        [
            f"gcloud ai models upload {where} --display-name={q(config.model_display_name)} "
            f"--container-image-uri={q(image)} --artifact-uri={q(config.model_uri)}",
            f"gcloud ai endpoints create {where} --display-name={q(config.model_display_name)}",
            f"gcloud ai endpoints deploy-model ENDPOINT_ID {where} --model=MODEL_ID "
            f"--display-name={q(config.model_display_name)} --machine-type={q(config.serving_machine_type)}"
            f"{accelerator} --min-replica-count={config.min_replicas} --max-replica-count={config.max_replicas}",
            "# predict: serving_default takes the file's bytes, base64 in JSON",
            'echo \'{"instances": [{"image_bytes": {"b64": "\'$(base64 -w0 photo.jpg)\'"}}]}\' > request.json',
            f"gcloud ai endpoints predict ENDPOINT_ID {where} --json-request=request.json",
            f'curl -X POST -H "Authorization: Bearer $(gcloud auth print-access-token)" '
            f"-H 'Content-Type: application/json' https://{region}-aiplatform.googleapis.com/v1/projects/{project}/"
            f"locations/{region}/endpoints/ENDPOINT_ID:predict -d @request.json",
            '# -> {"predictions": [{"class": "male", "p_male": 0.97, "probabilities": [0.03, 0.97]}]}',
        ]
    )


def deploy(config: VertexDeploy, project: Optional[str], region: str, dry_run: bool) -> str:
    """Dry run: prints the requests and commands, returns ''. Else deploys and returns the endpoint's name."""
    if not project:
        raise UserError("--project is required")
    config.validate()
    if dry_run:
        print(json.dumps(requests(config, project, region), indent=2))
        sys.stderr.write(gcloud_commands(config, project, region) + "\n")
        return ""
    try:
        from google.cloud import aiplatform
    except ImportError:
        raise UserError("google-cloud-aiplatform is not installed: pip install -e '.[cloud]'") from None
    upload, _, deployment = (r["body"] for r in requests(config, project, region))
    resources = deployment["deployedModel"]["dedicatedResources"]
    try:
        aiplatform.init(project=project, location=region)
        model = aiplatform.Model.upload(
            display_name=config.model_display_name,
            artifact_uri=config.model_uri,
            serving_container_image_uri=upload["model"]["containerSpec"]["imageUri"],
        )
        endpoint = model.deploy(
            machine_type=config.serving_machine_type,
            accelerator_type=config.serving_accelerator_type,
            accelerator_count=config.serving_accelerator_count or None,
            min_replica_count=resources["minReplicaCount"],
            max_replica_count=resources["maxReplicaCount"],
        )
    except Exception as e:  # the SDK raises many kinds: credentials, quota, permissions
        raise UserError(
            f"Vertex AI refused the deployment: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    return endpoint.resource_name
