"""The retraining workflow's Lambda handlers, replayed from events/ against moto (S3, SageMaker) with a real
model artifact built by our SageMaker entry point."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from chalicelib.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
SAGEMAKER_ENV = {
    "READMIT_TRAINING_IMAGE": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3",
    "READMIT_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/readmit-sagemaker",
    "READMIT_SOURCE_URI": "s3://readmit-artifacts-dev/code/sourcedir.tar.gz",
    "READMIT_ARTIFACT_URI": "s3://readmit-artifacts-dev/training",
}


class Context:
    function_name = "readmit-retrain-step"
    memory_limit_in_mb = 3008
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:readmit-retrain-step"
    aws_request_id = "fixture"


def handler(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"fn_{name}", ROOT / "functions" / name / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


def fixture(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def s3_put(client: Any, uri: str, data: bytes) -> None:
    bucket, _, key = uri[len("s3://") :].partition("/")
    client.put_object(Bucket=bucket, Key=key, Body=data)


@pytest.fixture(scope="module")
def model_tarball(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """model.tar.gz exactly as SageMaker packs SM_MODEL_DIR after our entry point ran."""
    from chalicelib import sagemaker_train

    tmp = tmp_path_factory.mktemp("sm")
    (tmp / "train").mkdir()
    (tmp / "train" / "data.csv").write_bytes(sample_csv.read_bytes())
    hps = {"n_estimators": 40, "folds": 3, "baselines": "false", "holdout_frac": 0.2}
    env = {
        "SM_CHANNEL_TRAIN": str(tmp / "train"),
        "SM_MODEL_DIR": str(tmp / "model"),
        "SM_OUTPUT_DATA_DIR": str(tmp / "out"),
        "SM_HPS": json.dumps(hps),
    }
    sagemaker_train.main(env)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for item in sorted((tmp / "model").rglob("*")):
            tar.add(item, arcname=str(item.relative_to(tmp / "model")))
    return buf.getvalue()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, sample_csv: Path, model_tarball: bytes) -> Iterator[Any]:
    for k, v in SAGEMAKER_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Readmit")
    with mock_aws():
        s3 = boto3.client("s3")
        for bucket in ("readmit-data-dev", "readmit-models-dev", "readmit-artifacts-dev"):
            s3.create_bucket(Bucket=bucket)
        ev = fixture("retrain_evaluate.json")
        s3_put(s3, ev["data_uri"], sample_csv.read_bytes())
        s3_put(s3, ev["training"]["model_artifact"], model_tarball)
        yield s3


def test_start_training_creates_a_sagemaker_job_running_our_entry_point(aws: Any) -> None:
    out = handler("start_training")(fixture("retrain_start_training.json"), Context())
    job = boto3.client("sagemaker").describe_training_job(TrainingJobName=out["job_name"])
    assert job["HyperParameters"]["sagemaker_program"] == "chalicelib/sagemaker_train.py"
    assert job["HyperParameters"]["holdout_frac"] == "0.2"  # the evaluation patients stay out of training
    assert job["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"].endswith("diabetic_data.csv")


def test_check_training_reports_the_job_status_and_artifact(aws: Any) -> None:
    started = handler("start_training")(fixture("retrain_start_training.json"), Context())
    event = {**fixture("retrain_check_training.json"), "training": started}
    status = handler("check_training")(event, Context())
    assert status["job_name"] == started["job_name"] and status["status"] in ("InProgress", "Completed")


def test_a_bad_execution_input_is_refused_by_name(aws: Any) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="trigger"):
        handler("start_training")({**fixture("retrain_start_training.json"), "trigger": "cron"}, Context())


def test_evaluate_registers_the_challenger_and_returns_a_gate_decision(aws: Any) -> None:
    out = handler("evaluate")(fixture("retrain_evaluate.json"), Context())
    registry = Registry.open("s3://readmit-models-dev/registry")
    assert out["challenger_version"] in registry.list_versions()
    assert out["champion_version"] is None and "no champion yet" in out["reasons"][-1]
    assert isinstance(out["promote"], bool) and out["challenger"]["n"] > 1000


def test_promote_then_reject_change_the_champion_only_on_promotion(aws: Any) -> None:
    decision = handler("evaluate")(fixture("retrain_evaluate.json"), Context())
    decision["promote"] = True
    promoted = handler("promote")({**fixture("retrain_promote.json"), "decision": decision}, Context())
    registry = Registry.open("s3://readmit-models-dev/registry")
    assert registry.champion() == decision["challenger_version"] == promoted["champion"]

    rejected_event = fixture("retrain_reject.json")
    rejected_event["decision"]["challenger_version"] = decision["challenger_version"]
    out = handler("reject")(rejected_event, Context())
    assert registry.champion() == decision["challenger_version"] == out["champion"]
    last = registry.history()[-1]
    assert last["event"] == "rejected" and last["trigger"] == "drift" and "trails the champion" in last["reason"]


def test_promote_refuses_a_decision_that_failed_the_gate(aws: Any) -> None:
    with pytest.raises(ValueError, match="did not pass"):
        handler("promote")(fixture("retrain_reject.json"), Context())


def test_every_function_folder_has_a_fixture() -> None:
    functions = {p.name for p in (ROOT / "functions").iterdir() if (p / "app.py").exists()}
    fixtures = [p.stem for p in EVENTS.glob("*.json")]
    missing = {f for f in functions if not any(s.startswith((f"retrain_{f}", f)) for s in fixtures)}
    assert not missing, missing


def test_the_light_steps_do_not_import_the_training_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, chalicelib.pipeline, chalicelib.promotion\n"
        "heavy = [m for m in ('pandas', 'sklearn', 'xgboost', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == ""
    from chalicelib import pipeline, train

    assert train.TrainConfig.seed == pipeline.DEFAULT_SEED
