"""The retraining workflow's Lambda handlers, resolved from template.yaml and replayed from events/ (as `readmit
invoke` runs them) against moto (S3, SageMaker) with a real model artifact built by our SageMaker entry point."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.registry.registry import Registry
from tests.replay import ROOT, fixture, retrain_world, run

KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"  # the stack's DataKey


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, sample_csv: Path, model_tarball: bytes) -> Iterator[Any]:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Readmit")
    # stack values template.yaml cannot resolve here (a resource's ARN, a parameter without a default): the caller's
    monkeypatch.setenv("READMIT_TRAINING_KMS_KEY", KEY)
    monkeypatch.setenv("READMIT_TRAINING_IMAGE", "123456789012.dkr.ecr.us-east-1.amazonaws.com/readmit-training:1")
    with retrain_world(sample_csv, model_tarball) as s3:
        yield s3


@pytest.mark.slow
def test_start_training_creates_a_sagemaker_job_of_our_image_encrypted_with_the_stacks_key(aws: Any) -> None:
    out = run("StartTrainingFunction", "retrain_start_training.json")
    job = boto3.client("sagemaker").describe_training_job(TrainingJobName=out["job_name"])
    assert not any(k.startswith("sagemaker_") for k in job["HyperParameters"])  # no script mode: the code is baked in
    assert job["HyperParameters"]["holdout_frac"] == "0.2"  # the evaluation patients stay out of training
    assert job["OutputDataConfig"]["KmsKeyId"] == job["ResourceConfig"]["VolumeKmsKeyId"] == KEY
    assert job["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"].endswith("diabetic_data.csv")


@pytest.mark.slow
def test_check_training_reports_the_job_status_and_artifact(aws: Any) -> None:
    started = run("StartTrainingFunction", "retrain_start_training.json")
    event = {**fixture("retrain_check_training.json"), "training": started}
    status = run("CheckTrainingFunction", event)
    assert status["job_name"] == started["job_name"] and status["status"] in ("InProgress", "Completed")


@pytest.mark.slow
def test_a_bad_execution_input_is_refused_by_name(aws: Any) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="trigger"):
        run("StartTrainingFunction", {**fixture("retrain_start_training.json"), "trigger": "cron"})


@pytest.mark.slow
def test_evaluate_registers_the_challenger_and_returns_a_gate_decision(aws: Any) -> None:
    out = run("EvaluateFunction", "retrain_evaluate.json")
    registry = Registry.open("s3://readmit-models-dev/registry")
    assert out["challenger_version"] in registry.list_versions()
    assert out["champion_version"] is None and "no champion yet" in out["reasons"][-1]
    assert isinstance(out["promote"], bool) and out["challenger"]["n"] > 1000


GATE = ("min_auc", "max_auc_drop", "max_ece")
STACK_GATE = {"READMIT_GATE_MIN_AUC": "0.99", "READMIT_GATE_MAX_AUC_DROP": "0.25", "READMIT_GATE_MAX_ECE": "0.5"}


@pytest.mark.slow
def test_an_execution_without_a_gate_is_judged_by_the_stacks_thresholds(aws: Any) -> None:
    event = fixture("retrain_evaluate.json")
    assert "gate" not in event  # as `readmit retrain --remote` and a console StartExecution send it
    out = run("EvaluateFunction", event, **STACK_GATE)
    assert {k: out["config"][k] for k in GATE} == {"min_auc": 0.99, "max_auc_drop": 0.25, "max_ece": 0.5}
    assert out["promote"] is False and any("below the floor 0.990" in r for r in out["reasons"])


@pytest.mark.slow
def test_an_executions_gate_overrides_the_stacks_thresholds_field_by_field(aws: Any) -> None:
    out = run("EvaluateFunction", {**fixture("retrain_evaluate.json"), "gate": {"min_auc": 0.5}}, **STACK_GATE)
    assert {k: out["config"][k] for k in GATE} == {"min_auc": 0.5, "max_auc_drop": 0.25, "max_ece": 0.5}


def test_the_gate_settings_are_numbers_or_the_step_says_which_is_not() -> None:
    from chalicelib.lifecycle.gate import GateConfig
    from chalicelib.lifecycle.pipeline import gate_config

    assert gate_config({}, {}) == GateConfig()  # nothing set: the code's defaults
    assert gate_config({"max_ece": 0.03}, {"READMIT_GATE_MAX_ECE": "0.01"}).max_ece == 0.03
    with pytest.raises(ValueError, match="READMIT_GATE_MIN_AUC='high' is not a number"):
        gate_config({}, {"READMIT_GATE_MIN_AUC": "high"})


@pytest.mark.slow
def test_promote_then_reject_change_the_champion_only_on_promotion(aws: Any) -> None:
    decision = run("EvaluateFunction", "retrain_evaluate.json")
    decision["promote"] = True
    promoted = run("PromoteFunction", {**fixture("retrain_promote.json"), "decision": decision})
    registry = Registry.open("s3://readmit-models-dev/registry")
    assert registry.champion() == decision["challenger_version"] == promoted["champion"]

    rejected_event = fixture("retrain_reject.json")
    rejected_event["decision"]["challenger_version"] = decision["challenger_version"]
    out = run("RejectFunction", rejected_event)
    assert registry.champion() == decision["challenger_version"] == out["champion"]
    last = registry.history()[-1]
    assert last["event"] == "rejected" and last["trigger"] == "drift" and "trails the champion" in last["reason"]


@pytest.mark.slow
def test_promote_refuses_a_decision_that_failed_the_gate(aws: Any) -> None:
    with pytest.raises(ValueError, match="did not pass"):
        run("PromoteFunction", "retrain_reject.json")


@pytest.mark.slow
def test_the_light_steps_do_not_import_the_training_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, chalicelib.lifecycle.pipeline, chalicelib.lifecycle.promotion\n"
        "heavy = [m for m in ('pandas', 'sklearn', 'xgboost', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == ""
    from chalicelib.lifecycle import pipeline
    from chalicelib.model import train

    assert train.TrainConfig.seed == pipeline.DEFAULT_SEED
