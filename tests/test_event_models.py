"""The AWS events the functions read are parsed with Powertools' parser models (issue #18): SQS records and the S3
notifications in their bodies (embedder), the EventBridge schedule (drift monitor), SageMaker's model package state
change (promote, reject) and S3's Object Created (batch); the events/ fixtures are what AWS sends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel, S3Model, SqsModel
from pydantic import ValidationError

from chalicelib.registry.sagemaker import ModelPackageStateChange
from chalicelib.similar.ingest import Chunk, PoisonMessage, S3Notification, parse_message
from tests.helpers import FakeContext, load_event, load_function

EVENTS = Path(__file__).resolve().parent.parent / "events"


def sqs_bodies() -> list[tuple[str, str]]:
    return [
        (path.name, str(record.body))
        for path in sorted(EVENTS.glob("embedder_sqs_*.json"))
        for record in SqsModel.model_validate(load_event(path.name)).Records  # every fixture is an SQS event
    ]


def test_every_s3_notification_fixture_is_powertools_s3_model_and_reads_as_before() -> None:
    notifications = 0
    for name, body in sqs_bodies():
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            continue  # the poison fixture's truncated body
        if "Records" not in data:
            continue
        strict = S3Model.model_validate(data)  # what S3 sends passes Powertools' own model unrelaxed
        notifications += 1
        try:
            chunks = parse_message(body)
        except PoisonMessage:  # an unsupported file type is found later, never here
            pytest.fail(f"{name}: a valid S3 notification read as poison")
        created = [r for r in strict.Records if r.eventName.startswith("ObjectCreated:")]
        assert chunks == [Chunk(r.s3.bucket.name, r.s3.object.key) for r in created if r.s3.object], name
    assert notifications >= 3


def test_the_notification_model_is_powertools_s3_model_requiring_only_what_is_read() -> None:
    s3 = {"bucket": {"name": "b"}, "object": {"key": "a+b.csv"}}
    minimal = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": s3}]}
    with pytest.raises(ValidationError):
        S3Model.model_validate(minimal)  # Powertools requires fields this function never reads
    assert isinstance(S3Notification.model_validate(minimal), S3Model)
    assert parse_message(json.dumps(minimal)) == [Chunk("b", "a b.csv")]
    del s3["object"]
    with pytest.raises(PoisonMessage, match="without bucket name or object key"):
        parse_message(json.dumps(minimal))  # but a created object's key is required
    with pytest.raises(PoisonMessage, match="a record is not an S3 event"):
        parse_message(json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}))  # eventSource has no default


def test_the_drift_monitor_reads_its_schedule_as_an_eventbridge_event(monkeypatch: pytest.MonkeyPatch) -> None:
    scheduled = EventBridgeModel.model_validate(load_event("drift_monitor_daily.json"))
    assert scheduled.detail_type == "Scheduled Event" and scheduled.source == "aws.events"
    handler = load_function("drift_monitor").handler
    with pytest.raises(ValidationError, match="detail-type"):
        handler({"detail": {}}, FakeContext("readmit-drift-monitor"))


@pytest.mark.parametrize("name", ["promote_model_package_approved.json", "reject_model_package_rejected.json"])
def test_model_package_events_are_eventbridge_events_with_sagemakers_documented_detail(name: str) -> None:
    event: dict[str, Any] = load_event(name)
    change = ModelPackageStateChange.model_validate(event)
    assert isinstance(change, EventBridgeModel)
    assert change.detail.ModelPackageArn == event["detail"]["ModelPackageArn"]
