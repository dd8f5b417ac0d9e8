"""template.yaml: valid CloudFormation (cfn-lint), and the API's events match the Chalice routes exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"


class CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form intrinsics (!Ref, !Sub, …) as plain values."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node)}
    return {suffix: loader.construct_mapping(node)}


CfnLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


@pytest.mark.slow
def test_cfn_lint_reports_nothing() -> None:
    import os

    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    bootstrap = sorted(str(p) for p in (ROOT / "deploy" / "aws").glob("*.yaml"))  # the OIDC/deploy-role template
    done = subprocess.run([str(cfn_lint), str(TEMPLATE), *bootstrap], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_chalice_route_has_exactly_one_api_event(template: dict[str, Any]) -> None:
    import app

    routes = {(path, method.lower()) for path, methods in app.app.routes.items() for method in methods}
    events = template["Resources"]["ApiFunction"]["Properties"]["Events"]
    declared = {(e["Properties"]["Path"], e["Properties"]["Method"]) for e in events.values() if e["Type"] == "Api"}
    assert routes <= declared
    assert declared - routes == {("/{proxy+}", "any")}  # the catch-all: app.unrouted answers 404, or 405 with Allow


def test_health_openapi_and_the_page_are_public_and_everything_else_needs_a_key(template: dict[str, Any]) -> None:
    api = template["Resources"]["Api"]["Properties"]
    assert api["Auth"]["ApiKeyRequired"] is True
    events = template["Resources"]["ApiFunction"]["Properties"]["Events"]
    public = {
        e["Properties"]["Path"]
        for e in events.values()
        if e["Properties"].get("Auth", {}).get("ApiKeyRequired") is False
    }
    assert public == {"/health", "/openapi.json", "/"}  # "/" is the clinician page; its calls send the key


def test_buckets_are_encrypted_private_and_tls_only(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    buckets = [k for k, v in resources.items() if v["Type"] == "AWS::S3::Bucket"]
    policies = {v["Properties"]["Bucket"]["Ref"]: v for v in resources.values() if v["Type"] == "AWS::S3::BucketPolicy"}
    log_destinations = {
        v["Properties"]["LoggingConfiguration"]["DestinationBucketName"]["Ref"]
        for v in resources.values()
        if "LoggingConfiguration" in v.get("Properties", {})
    }
    for name in buckets:
        props = resources[name]["Properties"]
        algorithm = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"][
            "SSEAlgorithm"
        ]
        # S3 server access logs can only be delivered to an SSE-S3 bucket; every other bucket uses the KMS key
        assert algorithm == ("AES256" if name in log_destinations else "aws:kms"), name
        assert name in log_destinations or props["LoggingConfiguration"]["DestinationBucketName"]["Ref"], name
        assert all(props["PublicAccessBlockConfiguration"].values())
        statement = policies[name]["Properties"]["PolicyDocument"]["Statement"][0]
        assert statement["Effect"] == "Deny" and statement["Condition"]["Bool"]["aws:SecureTransport"] is False


def test_retraining_triggers_are_the_weekly_schedule_and_the_drift_alarm(template: dict[str, Any]) -> None:
    events = template["Resources"]["RetrainStateMachine"]["Properties"]["Events"]
    assert events["WeeklySchedule"]["Properties"]["Schedule"] == "cron(0 2 ? * SUN *)"
    pattern = events["DriftAlarm"]["Properties"]["Pattern"]
    assert pattern["detail-type"] == ["CloudWatch Alarm State Change"] and pattern["detail"]["state"]["value"] == [
        "ALARM"
    ]


@pytest.mark.slow
def test_sam_validate_lint_accepts_the_template() -> None:
    import os

    sam = Path(sys.executable).parent / "sam"
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "SAM_CLI_TELEMETRY": "0"}
    done = subprocess.run(
        [str(sam), "validate", "--lint", "--template", str(TEMPLATE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0 and "is a valid SAM Template" in done.stdout + done.stderr, done.stdout + done.stderr


def test_the_dashboard_body_is_valid_json_covering_api_predictions_drift_and_retraining(
    template: dict[str, Any],
) -> None:
    import json
    import re

    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Sub"]
    dashboard = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))
    graphs = [w for w in dashboard["widgets"] if w["type"] == "metric"]  # the alarm widget: tests/test_alarms.py
    metrics = {m[1] for w in graphs for m in w["properties"]["metrics"] if m[0] != "..."}
    assert {"LatencyMs", "Predictions", "HighRiskPredictions", "MaxFeaturePSI", "RiskPSI", "ModelsPromoted"} <= metrics
    assert {"5XXError", "ExecutionsFailed"} <= metrics
