"""SageMaker training jobs that run our own training code (`chalicelib/sagemaker_train.py`, script mode).

The retraining workflow starts a job and polls it (a describe/wait loop rather than `.sync`, which
cannot be executed outside AWS). The client is passed in, so tests hand in a moto client.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .aws_clients import LazyClient

ENV_IMAGE = "READMIT_TRAINING_IMAGE"  # a SageMaker framework image (e.g. the XGBoost or SKLearn container)
ENV_ROLE = "READMIT_SAGEMAKER_ROLE_ARN"
ENV_SOURCE = "READMIT_SOURCE_URI"  # s3://…/sourcedir.tar.gz holding chalicelib/ and requirements
ENV_OUTPUT = "READMIT_ARTIFACT_URI"  # s3://… prefix for model.tar.gz
ENV_INSTANCE = "READMIT_TRAINING_INSTANCE"
ENTRY_POINT = "chalicelib/sagemaker_train.py"


class TrainingConfigMissing(KeyError):
    """A setting the training job needs is not configured."""


@dataclass(frozen=True)
class TrainingSettings:
    image_uri: str
    role_arn: str
    source_uri: str
    output_uri: str
    instance_type: str = "ml.m5.xlarge"
    max_runtime_s: int = 3600

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> TrainingSettings:
        missing = [k for k in (ENV_IMAGE, ENV_ROLE, ENV_SOURCE, ENV_OUTPUT) if not env.get(k)]
        if missing:
            raise TrainingConfigMissing(f"set {', '.join(missing)}")
        return cls(
            env[ENV_IMAGE], env[ENV_ROLE], env[ENV_SOURCE], env[ENV_OUTPUT], env.get(ENV_INSTANCE, "ml.m5.xlarge")
        )


def job_name(execution_name: str, trigger: str) -> str:
    """A valid, unique SageMaker job name (≤ 63 chars of [a-zA-Z0-9-]) derived from the execution."""
    clean = re.sub(r"[^a-zA-Z0-9-]", "-", f"readmit-{trigger}-{execution_name}")
    return clean[:63].rstrip("-")


class TrainingJobs:
    """Starts jobs (which needs the settings) and reports their status (which does not)."""

    def __init__(self, settings: TrainingSettings | None = None, client: Any = None) -> None:
        self.settings = settings
        self._client = client

    client = LazyClient("sagemaker")

    def start(self, name: str, data_uri: str, hyperparameters: Mapping[str, Any]) -> str:
        s = self.settings or TrainingSettings.from_env()
        self.client.create_training_job(
            TrainingJobName=name,
            AlgorithmSpecification={"TrainingImage": s.image_uri, "TrainingInputMode": "File"},
            RoleArn=s.role_arn,
            HyperParameters={
                "sagemaker_program": ENTRY_POINT,
                "sagemaker_submit_directory": s.source_uri,
                **{k: str(v) for k, v in hyperparameters.items()},
            },
            InputDataConfig=[
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
            OutputDataConfig={"S3OutputPath": s.output_uri},
            ResourceConfig={"InstanceType": s.instance_type, "InstanceCount": 1, "VolumeSizeInGB": 10},
            StoppingCondition={"MaxRuntimeInSeconds": s.max_runtime_s},
        )
        return name

    def status(self, name: str) -> dict[str, Any]:
        job = self.client.describe_training_job(TrainingJobName=name)
        return {
            "job_name": name,
            "status": job["TrainingJobStatus"],
            "model_artifact": job.get("ModelArtifacts", {}).get("S3ModelArtifacts"),
            "failure_reason": job.get("FailureReason", ""),
        }
