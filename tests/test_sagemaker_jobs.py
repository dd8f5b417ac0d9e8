"""The CreateTrainingJob request StartTraining sends (issue #14 item 11), checked against botocore's SageMaker model:
its shape, the metric definitions against the line the container prints, KMS on the artifact and the volume, and
a start that is safe to retry.

moto's CreateTrainingJob overwrites a job of the same name instead of refusing it, so the duplicate-name tests
answer with a botocore Stubber, which checks every request against the model and answers with the documented
error code (ResourceInUse, one of CreateTrainingJob's errors in the model) and the message AWS returns.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from botocore.validate import ParamValidator

from chalicelib.lifecycle import sagemaker_jobs
from chalicelib.lifecycle.sagemaker_jobs import (
    ENV_KMS_KEY,
    LOCAL_STORAGE_FAMILIES,
    METRIC_DEFINITIONS,
    TrainingConfigMissing,
    TrainingJobs,
    TrainingSettings,
    has_local_storage,
    job_name,
)

MODEL = botocore.session.get_session().get_service_model("sagemaker")
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ENV = {
    "READMIT_TRAINING_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/readmit-training:1.4.0",
    "READMIT_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/readmit-sagemaker",
    "READMIT_ARTIFACT_URI": "s3://readmit-artifacts-dev/training",
    ENV_KMS_KEY: KEY,
}
DATA = "s3://readmit-data-dev/training/diabetic_data.csv"
HPS = {"holdout_frac": 0.2, "seed": 20260601}
NAME = "readmit-manual-run-1"
PRINTED = "readmit-metric roc_auc=0.68123 ece=0.00512"  # chalicelib/model/sagemaker_train.py's line, as specified
DUPLICATE = (
    "Training job names must be unique within an AWS account and region, and a training job with this name "
    f"already exists (arn:aws:sagemaker:us-east-1:123456789012:training-job/{NAME})"
)


def settings(**overrides: Any) -> TrainingSettings:
    return TrainingSettings.from_env({**ENV, **overrides})


def stubbed() -> tuple[Any, Stubber]:
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    return client, Stubber(client)


def described(request: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A DescribeTrainingJob answer for the job ``request`` created (the output shape's required members)."""
    now = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
    return {
        "TrainingJobName": request["TrainingJobName"],
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{request['TrainingJobName']}",
        "ModelArtifacts": {"S3ModelArtifacts": ""},
        "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "Starting",
        "AlgorithmSpecification": request["AlgorithmSpecification"],
        "RoleArn": request["RoleArn"],
        "HyperParameters": request["HyperParameters"],
        "InputDataConfig": request["InputDataConfig"],
        "OutputDataConfig": request["OutputDataConfig"],
        "ResourceConfig": request["ResourceConfig"],
        "StoppingCondition": request["StoppingCondition"],
        "CreationTime": now,
        **changes,
    }


# --- the request -----------------------------------------------------------------------------------------------------
def test_the_request_is_a_valid_create_training_job_input() -> None:
    request = TrainingJobs(settings()).request(NAME, DATA, HPS)
    report = ParamValidator().validate(request, MODEL.operation_model("CreateTrainingJob").input_shape)
    assert not report.has_errors(), report.generate_report()
    # what botocore's validator does not check: the name pattern and every MetricDefinition's constraints
    name_shape = MODEL.shape_for("TrainingJobName")
    assert re.fullmatch(name_shape.metadata["pattern"], request["TrainingJobName"])
    definitions = request["AlgorithmSpecification"]["MetricDefinitions"]
    assert len(definitions) <= MODEL.shape_for("MetricDefinitionList").metadata["max"]
    for definition in definitions:
        for field, shape in (("Name", "MetricName"), ("Regex", "MetricRegex")):
            meta = MODEL.shape_for(shape).metadata
            assert meta["min"] <= len(definition[field]) <= meta["max"], definition
            assert re.fullmatch(meta["pattern"], definition[field]), definition


def test_our_image_runs_with_no_script_mode_settings_and_the_workflow_hyperparameters() -> None:
    request = TrainingJobs(settings()).request(NAME, DATA, HPS)
    assert request["AlgorithmSpecification"]["TrainingImage"] == ENV["READMIT_TRAINING_IMAGE"]
    assert request["HyperParameters"] == {"holdout_frac": "0.2", "seed": "20260601"}  # strings, as the API takes
    assert not any(k.startswith("sagemaker_") for k in request["HyperParameters"])
    assert request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == DATA
    assert "source_uri" not in TrainingSettings.model_fields


def test_the_metric_regexes_read_both_values_from_the_line_the_container_prints() -> None:
    found = {d["Name"]: re.search(d["Regex"], f"2026-11-29 02:41:07 {PRINTED}\n") for d in METRIC_DEFINITIONS}
    assert {name: float(m.group(1)) for name, m in found.items() if m} == {"roc_auc": 0.68123, "ece": 0.00512}
    for d in METRIC_DEFINITIONS:  # one capture group each (SageMaker takes the first), and no other log line
        assert re.compile(d["Regex"]).groups == 1
        assert re.search(d["Regex"], "roc_auc=0.68123 ece=0.00512 (cross-validated)") is None


def test_the_artifact_and_the_training_volume_are_encrypted_with_the_stacks_key() -> None:
    request = TrainingJobs(settings()).request(NAME, DATA, HPS)
    assert request["OutputDataConfig"]["KmsKeyId"] == KEY
    assert request["ResourceConfig"]["VolumeKmsKeyId"] == KEY
    assert request["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"


@pytest.mark.parametrize("instance", ["ml.g5.2xlarge", "ml.p4d.24xlarge", "ml.g4dn.xlarge", "ml.r5d.large"])
def test_instances_with_local_storage_get_no_volume_key_which_aws_refuses_for_them(instance: str) -> None:
    request = TrainingJobs(settings(READMIT_TRAINING_INSTANCE=instance)).request(NAME, DATA, HPS)
    assert "VolumeKmsKeyId" not in request["ResourceConfig"]  # their NVMe store is encrypted by the hardware
    assert request["OutputDataConfig"]["KmsKeyId"] == KEY  # the artifact still is, with our key


def test_the_local_storage_families_are_training_instance_families() -> None:
    families = {t.removeprefix("ml.").rsplit(".", 1)[0] for t in MODEL.shape_for("TrainingInstanceType").enum}
    assert families >= LOCAL_STORAGE_FAMILIES, LOCAL_STORAGE_FAMILIES - families
    assert not has_local_storage("ml.m5.xlarge") and not has_local_storage("ml.c5.2xlarge")
    assert not has_local_storage("ml.p3.2xlarge") and has_local_storage("ml.p3dn.24xlarge")


def test_settings_refuse_to_start_a_job_without_the_kms_key() -> None:
    with pytest.raises(TrainingConfigMissing, match=ENV_KMS_KEY):
        TrainingSettings.from_env({k: v for k, v in ENV.items() if k != ENV_KMS_KEY})


# --- a start that is safe to retry ---------------------------------------------------------------------------------
def test_a_retried_start_finds_the_job_its_first_attempt_created() -> None:
    client, stub = stubbed()
    jobs = TrainingJobs(settings(), client=client)
    request = jobs.request(NAME, DATA, HPS)
    stub.add_client_error(
        "create_training_job", service_error_code="ResourceInUse", service_message=DUPLICATE, http_status_code=400,
        expected_params=request,
    )  # fmt: skip
    stub.add_response("describe_training_job", described(request), {"TrainingJobName": NAME})
    with stub:
        assert jobs.start(NAME, DATA, HPS) == NAME
    stub.assert_no_pending_responses()


def test_a_job_of_the_same_name_with_other_data_is_not_taken_for_ours() -> None:
    client, stub = stubbed()
    jobs = TrainingJobs(settings(), client=client)
    request = jobs.request(NAME, DATA, HPS)
    source = {"S3DataType": "S3Prefix", "S3Uri": "s3://other/d.csv", "S3DataDistributionType": "FullyReplicated"}
    other = [{**request["InputDataConfig"][0], "DataSource": {"S3DataSource": source}}]
    stub.add_client_error("create_training_job", service_error_code="ResourceInUse", service_message=DUPLICATE)
    stub.add_response("describe_training_job", described(request, InputDataConfig=other), {"TrainingJobName": NAME})
    with stub, pytest.raises(ClientError, match="ResourceInUse"):
        jobs.start(NAME, DATA, HPS)


def test_other_errors_are_raised_without_looking_for_a_job() -> None:
    client, stub = stubbed()
    stub.add_client_error("create_training_job", service_error_code="ResourceLimitExceeded", service_message="quota")
    with stub, pytest.raises(ClientError, match="ResourceLimitExceeded"):
        TrainingJobs(settings(), client=client).start(NAME, DATA, HPS)
    stub.assert_no_pending_responses()  # and no DescribeTrainingJob was queued or made


# --- the job's name --------------------------------------------------------------------------------------------------
def test_job_names_are_valid_stable_per_execution_and_distinct_when_long() -> None:
    pattern = MODEL.shape_for("TrainingJobName").metadata["pattern"]
    base = "readmit-retrain-manual-2026-11-29T02-00-00-" + "x" * 30
    a, b = job_name(base + "aaaa", "manual"), job_name(base + "bbbb", "manual")
    assert a != b and len(a) <= 63 and len(b) <= 63
    assert all(re.fullmatch(pattern, n) for n in (a, b, job_name("run_1", "schedule")))
    assert job_name(base + "aaaa", "manual") == a  # a retry of the same execution names the same job
    assert job_name("run-1", "manual") == NAME  # short names stay readable, as before


def test_the_module_no_longer_reads_a_source_uri() -> None:
    assert not hasattr(sagemaker_jobs, "ENV_SOURCE") and not hasattr(sagemaker_jobs, "ENTRY_POINT")  # no script mode
    assert settings().model_dump().keys() == {
        "image_uri", "role_arn", "output_uri", "kms_key_id", "instance_type", "volume_gb", "max_runtime_s",
        "mlflow_tracking_uri",
    }  # fmt: skip
