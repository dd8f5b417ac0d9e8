"""Replaying events/ fixtures through template.yaml's functions in this process: the machinery behind
`readmit invoke`, plus the AWS stand-ins (moto) that the retraining steps need."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from moto import mock_aws

from chalicelib.cli.local_invoke import invoke
from chalicelib.cli.sam_template import Template, Unresolved, intrinsic
from tests.helpers import load_event

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
# What the stack would hand the retraining steps; the buckets exist in moto (retrain_world).
RETRAIN_ENV = {
    "READMIT_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/readmit-sagemaker",
    "READMIT_ARTIFACT_URI": "s3://readmit-artifacts-dev/training",
    "READMIT_TRAINING_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/readmit-training@sha256:" + "0" * 64,
    "READMIT_TRAINING_KMS_KEY": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
}
RETRAIN_BUCKETS = ("readmit-data-dev", "readmit-models-dev", "readmit-artifacts-dev")


@functools.cache
def template() -> Template:
    return Template(ROOT / "template.yaml", region="us-east-1")


fixture = load_event  # the replaying tests import it from here


def run(logical_id: str, event: dict[str, Any] | str, **env: str) -> Any:
    """The function's response to ``event`` (a fixture name or the event itself), as `readmit invoke` runs it."""
    payload = fixture(event) if isinstance(event, str) else event
    return invoke(template().function(logical_id), payload, env).response


def proxy(response: dict[str, Any]) -> tuple[int, Any]:
    """Status and body of an API Gateway proxy response (JSON bodies parsed)."""
    body, kind = response["body"], response["headers"].get("Content-Type", "")
    return response["statusCode"], json.loads(body) if "json" in kind else body


def s3_put(client: Any, uri: str, data: bytes) -> None:
    bucket, _, key = uri[len("s3://") :].partition("/")
    client.put_object(Bucket=bucket, Key=key, Body=data)


@contextmanager
def retrain_world(sample_csv: Path, model_tarball: bytes) -> Iterator[Any]:
    """moto S3 holding the training data and a trained artifact where the fixtures say; the retraining steps'
    stack-resource variables set in the environment (as the caller's, which `readmit invoke` keeps)."""
    saved = dict(os.environ)
    os.environ.update(RETRAIN_ENV)
    try:
        with mock_aws():
            s3 = boto3.client("s3")
            for bucket in RETRAIN_BUCKETS:
                s3.create_bucket(Bucket=bucket)
            event = fixture("retrain_evaluate.json")
            s3_put(s3, event["data_uri"], sample_csv.read_bytes())
            s3_put(s3, event["training"]["model_artifact"], model_tarball)
            yield s3
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ---- EventBridge: does a fixture start a (non-function) target? -------------------------------------------------
ANY = object()  # a pattern value naming a stack resource: matches whatever the deployed name will be


def resolved(value: Any) -> Any:
    """Intrinsics resolved where they need nothing deployed; ANY where they do."""
    if intrinsic(value):
        try:
            return template().resolve(value)
        except Unresolved:
            return ANY
    if isinstance(value, dict):
        return {k: resolved(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolved(v) for v in value]
    return value


def _matches(allowed: Any, value: Any) -> bool:
    if allowed is ANY:
        return True
    if isinstance(allowed, dict):
        if "prefix" in allowed:
            return isinstance(value, str) and (allowed["prefix"] is ANY or value.startswith(allowed["prefix"]))
        if "suffix" in allowed:
            return isinstance(value, str) and (allowed["suffix"] is ANY or value.endswith(allowed["suffix"]))
        if "exists" in allowed:
            return (value is not None) == allowed["exists"]
        if "anything-but" in allowed:
            return value not in (allowed["anything-but"] if isinstance(allowed["anything-but"], list) else [])
        return isinstance(value, dict) and pattern_matches(allowed, value)
    return allowed == value or (isinstance(value, list) and allowed in value)


def pattern_matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    """EventBridge's matching: every key of the pattern must hold one of its allowed values."""
    for key, allowed in pattern.items():
        value = event.get(key)
        if isinstance(allowed, dict) and not any(k in allowed for k in ("prefix", "suffix", "exists", "anything-but")):
            if not isinstance(value, dict) or not pattern_matches(allowed, value):
                return False
        elif not any(_matches(a, value) for a in (allowed if isinstance(allowed, list) else [allowed])):
            return False
    return True


def rules_starting(target: str) -> list[dict[str, Any]]:
    """The target's SAM events (Schedule, EventBridgeRule, CloudWatchEvent) and the AWS::Events::Rule
    resources whose targets name it, as {"schedule_name"} or {"pattern"} plus the "input" they send."""
    rules = []
    for event in template().resources[target].get("Properties", {}).get("Events", {}).values():
        props = event.get("Properties", {})
        if event["Type"] in ("Schedule", "ScheduleV2"):
            rules.append({"schedule_name": resolved(props.get("Name", ANY)), "input": props.get("Input")})
        elif event["Type"] in ("EventBridgeRule", "CloudWatchEvent"):
            rules.append({"pattern": resolved(props["Pattern"]), "input": props.get("Input")})
    for resource in template().resources.values():
        if resource.get("Type") != "AWS::Events::Rule":
            continue
        props = resource.get("Properties", {})
        for t in props.get("Targets", []):
            if target in json.dumps(t.get("Arn")) and "EventPattern" in props:
                rules.append({"pattern": resolved(props["EventPattern"]), "input": t.get("Input")})
            elif target in json.dumps(t.get("Arn")) and "ScheduleExpression" in props:
                rules.append({"schedule_name": resolved(props.get("Name", ANY)), "input": t.get("Input")})
    return rules


def starts(rule: dict[str, Any], event: dict[str, Any]) -> bool:
    if "pattern" in rule:
        return pattern_matches(rule["pattern"], event)
    name = rule["schedule_name"]
    return (
        event.get("detail-type") == "Scheduled Event"
        and event.get("source") == "aws.events"
        and (name is ANY or any(r.endswith(f":rule/{name}") for r in event.get("resources", [])))
    )
