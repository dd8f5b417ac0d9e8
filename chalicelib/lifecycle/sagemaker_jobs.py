"""SageMaker training jobs that run readmit's own training image (deploy/training/Dockerfile: the code baked in,
entry point ``python -m chalicelib.model.sagemaker_train train``).

The retraining workflow starts a job and polls it (a describe/wait loop rather than `.sync`, which cannot be
executed outside AWS). The client is passed in, so tests hand in a moto client or a botocore Stubber.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.core import settings
from chalicelib.core.aws_clients import LazyClient
from chalicelib.lifecycle.errors import TrainingConfigMissing
from chalicelib.model.tracking import ENV_TRACKING_URI

ENV_IMAGE = settings.ENV_TRAINING_IMAGE  # our image in this account's ECR (template parameter TrainingImage)
ENV_ROLE = settings.ENV_SAGEMAKER_ROLE_ARN
ENV_OUTPUT = settings.ENV_ARTIFACT_URI  # s3://… prefix for model.tar.gz
ENV_INSTANCE = settings.ENV_TRAINING_INSTANCE
ENV_KMS_KEY = settings.ENV_TRAINING_KMS_KEY  # the stack's DataKey: model artifact (S3) and training volume (EBS)

# What the container prints once trained (chalicelib/model/sagemaker_train.py):
#   readmit-metric roc_auc=0.68123 ece=0.00512
# SageMaker reads each metric from the first capture group of its Regex in the job's log; botocore's
# MetricDefinition: Name 1-255 chars, Regex 1-500 chars, at most 40 definitions
# (botocore/data/sagemaker/2017-07-24/service-2.json, shapes MetricName, MetricRegex, MetricDefinitionList;
# https://docs.aws.amazon.com/sagemaker/latest/dg/automatic-model-tuning-define-metrics-variables.html).
METRIC_DEFINITIONS: tuple[dict[str, str], ...] = (
    {"Name": "roc_auc", "Regex": r"readmit-metric roc_auc=([0-9]+\.[0-9]+)"},
    {"Name": "ece", "Regex": r"readmit-metric roc_auc=\S+ ece=([0-9]+\.[0-9]+)"},
)

# Instance families whose storage is local NVMe instance store, which the instance's hardware encrypts: for
# them CreateTrainingJob refuses a VolumeKmsKeyId ("You can't request a VolumeKmsKeyId when using an instance
# type with local storage", ResourceConfig.VolumeKmsKeyId in botocore's model; botocore names ml.p4d, ml.g4dn
# and ml.g5 under VolumeSizeInGB; the others from https://docs.aws.amazon.com/ec2/latest/instancetypes/ →
# instance store). Any other type gets the key: if AWS refuses it, StartTraining fails loudly, which is the safe
# direction for PHI (leaving the key out would silently fall back to the AWS managed key).
LOCAL_STORAGE_FAMILIES = frozenset(
    {"g4dn", "g5", "g6", "g6e", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200", "p6-b300", "p6e-gb200"}
    | {"r5d", "trn1", "trn1n", "trn2"}
)


class TrainingSettings(BaseModel):
    """What StartTraining needs from the stack (template.yaml sets them on StartTrainingFunction)."""

    model_config = ConfigDict(frozen=True)

    image_uri: str = Field(min_length=1)
    role_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/")
    output_uri: str = Field(pattern=r"^s3://")
    kms_key_id: str = Field(min_length=1, max_length=2048, pattern=r"^[a-zA-Z0-9:/_-]+$")  # botocore KmsKeyId
    instance_type: str = Field(default=settings.default("training_instance"), pattern=r"^ml\.")
    volume_gb: int = Field(default=10, ge=1)
    max_runtime_s: int = Field(default=3600, ge=1)
    # where the job's run is tracked (chalicelib/model/tracking.py): "off", or a SageMaker MLflow tracking server's ARN;
    # a TrainingEnvironmentMap value is at most 512 characters (botocore's sagemaker model)
    mlflow_tracking_uri: str = Field(default="off", max_length=512)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> TrainingSettings:
        s = settings.Settings.from_env(env)
        required = {ENV_IMAGE: s.training_image, ENV_ROLE: s.sagemaker_role_arn, ENV_OUTPUT: s.artifact_uri}
        required[ENV_KMS_KEY] = s.training_kms_key
        if missing := [name for name, value in required.items() if not value]:
            raise TrainingConfigMissing(f"set {', '.join(missing)}")
        return cls(
            image_uri=s.training_image,
            role_arn=s.sagemaker_role_arn,
            output_uri=s.artifact_uri,
            kms_key_id=s.training_kms_key,
            instance_type=s.training_instance,
            mlflow_tracking_uri=s.mlflow_tracking_uri or "off",
        )


def has_local_storage(instance_type: str) -> bool:
    """ml.g5.2xlarge → family g5 → True."""
    family = instance_type.removeprefix("ml.").rsplit(".", 1)[0]
    return family in LOCAL_STORAGE_FAMILIES


def job_name(execution_name: str, trigger: str) -> str:
    """A valid SageMaker job name (botocore TrainingJobName: ``[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}``), the same on
    every call for one execution (so a retried start finds its own job) and distinct across executions: a name
    too long to keep whole ends in a hash of all of it instead of being cut where two names may agree."""
    full = re.sub(r"[^a-zA-Z0-9-]", "-", f"readmit-{trigger}-{execution_name}").strip("-")
    if len(full) <= 63:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:10]
    return f"{full[:52].rstrip('-')}-{digest}"


class TrainingJobs:
    """Starts jobs (which needs the settings) and reports their status (which does not)."""

    def __init__(self, settings: TrainingSettings | None = None, client: Any = None) -> None:
        self.settings = settings
        self._client = client

    client = LazyClient("sagemaker")

    def request(self, name: str, data_uri: str, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
        """The CreateTrainingJob parameters (tests check them against botocore's input shape)."""
        s = self.settings or TrainingSettings.from_env()
        resources: dict[str, Any] = {"InstanceType": s.instance_type, "InstanceCount": 1, "VolumeSizeInGB": s.volume_gb}
        if not has_local_storage(s.instance_type):
            resources["VolumeKmsKeyId"] = s.kms_key_id
        return {
            "TrainingJobName": name,
            "AlgorithmSpecification": {
                "TrainingImage": s.image_uri,
                "TrainingInputMode": "File",
                "MetricDefinitions": [dict(m) for m in METRIC_DEFINITIONS],
            },
            "RoleArn": s.role_arn,
            "HyperParameters": {k: str(v) for k, v in hyperparameters.items()},
            "InputDataConfig": [
                {
                    "ChannelName": "train",
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": data_uri,
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                }
            ],
            "OutputDataConfig": {"S3OutputPath": s.output_uri, "KmsKeyId": s.kms_key_id},
            "ResourceConfig": resources,
            "StoppingCondition": {"MaxRuntimeInSeconds": s.max_runtime_s},
            # TrainingEnvironmentMap: at most 100 entries, keys [a-zA-Z_][a-zA-Z0-9_]*, values ≤ 512 characters
            "Environment": {ENV_TRACKING_URI: s.mlflow_tracking_uri, settings.ENV_TRAINING_JOB_NAME: name},
        }

    def start(self, name: str, data_uri: str, hyperparameters: Mapping[str, Any]) -> str:
        """Create the job; a retry after a create that succeeded (Lambda or Step Functions retried the step)
        finds the job it made and reports it as started."""
        from botocore.exceptions import ClientError

        request = self.request(name, data_uri, hyperparameters)
        try:
            self.client.create_training_job(**request)
        except ClientError as exc:
            # A duplicate name is ResourceInUse: "Training job names must be unique within an AWS account and
            # region, and a training job with this name already exists (arn:…)" (an error CreateTrainingJob
            # declares in botocore's model; the message as AWS returns it: aws/amazon-sagemaker-examples#3108).
            if exc.response.get("Error", {}).get("Code") != "ResourceInUse" or not self._is_ours(request):
                raise
        return name

    def _is_ours(self, request: Mapping[str, Any]) -> bool:
        """The existing job is this execution's: same name, same data and hyperparameters."""
        job = self.client.describe_training_job(TrainingJobName=request["TrainingJobName"])
        channels = job.get("InputDataConfig") or [{}]
        source = channels[0].get("DataSource", {}).get("S3DataSource", {}).get("S3Uri")
        wanted = request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
        hps = job.get("HyperParameters") or {}
        return (
            job.get("TrainingJobName") == request["TrainingJobName"]
            and source == wanted
            and all(hps.get(k) == v for k, v in request["HyperParameters"].items())
        )

    def status(self, name: str) -> dict[str, Any]:
        job = self.client.describe_training_job(TrainingJobName=name)
        return {
            "job_name": name,
            "status": job["TrainingJobStatus"],
            "model_artifact": job.get("ModelArtifacts", {}).get("S3ModelArtifacts"),
            "failure_reason": job.get("FailureReason", ""),
        }
