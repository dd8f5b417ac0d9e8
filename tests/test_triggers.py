"""EventBridge triggers of retraining, checked in moto: real-shaped events reach an SQS stand-in target
(moto cannot target a state machine) exactly when the template's rule says they should."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.replay import template as sam_template
from tests.test_template import CfnLoader

ROOT = Path(__file__).resolve().parent.parent


def template_pattern(stage: str) -> dict[str, Any]:
    import yaml

    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=CfnLoader)
    pattern = template["Resources"]["RetrainStateMachine"]["Properties"]["Events"]["DriftAlarm"]["Properties"][
        "Pattern"
    ]
    text = json.dumps(pattern).replace('{"Sub": "readmit-drift-${Stage}"}', json.dumps(f"readmit-drift-{stage}"))
    return json.loads(text)


@pytest.fixture
def bus() -> Iterator[tuple[Any, Any, str]]:
    with mock_aws():
        events, sqs = boto3.client("events"), boto3.client("sqs")
        url = sqs.create_queue(QueueName="retrain-target")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="drift", EventPattern=json.dumps(template_pattern("dev")))
        target_input = {
            "trigger": "drift",
            "data_uri": "s3://d/training/diabetic_data.csv",
            "registry_uri": "s3://m/registry",
        }
        events.put_targets(
            Rule="drift", Targets=[{"Id": "sfn-stand-in", "Arn": arn, "Input": json.dumps(target_input)}]
        )
        yield events, sqs, url


def send(events: Any, event: dict[str, Any]) -> None:
    events.put_events(
        Entries=[
            {"Source": event["source"], "DetailType": event["detail-type"], "Detail": json.dumps(event["detail"]),
             "Resources": event["resources"]}
        ]
    )  # fmt: skip


def received(sqs: Any, url: str) -> list[dict[str, Any]]:
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
    return [json.loads(m["Body"]) for m in messages]


def alarm_event() -> dict[str, Any]:
    return json.loads((ROOT / "events" / "eventbridge_drift_alarm.json").read_text())


@pytest.mark.slow
def test_the_drift_alarm_entering_alarm_starts_a_drift_retraining(bus: tuple[Any, Any, str]) -> None:
    events, sqs, url = bus
    send(events, alarm_event())
    [delivered] = received(sqs, url)  # moto delivers the matched event itself; it ignores a target's Input
    assert delivered["detail"]["alarmName"] == "readmit-drift-dev" and delivered["detail"]["state"]["value"] == "ALARM"


@pytest.mark.slow
def test_the_rule_hands_the_state_machine_a_valid_drift_execution_input() -> None:
    import yaml

    from chalicelib.lifecycle.pipeline import RetrainInput

    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=CfnLoader)
    rule = template["Resources"]["RetrainStateMachine"]["Properties"]["Events"]["DriftAlarm"]["Properties"]
    text = rule["Input"]["Sub"].replace("${DataBucket}", "data").replace("${ModelBucket}", "models")
    run = RetrainInput.model_validate(json.loads(sam_template().resolve({"Sub": text})))  # parameters: their defaults
    assert run.trigger == "drift" and run.data_uri == "s3://data/training/diabetic_data.csv"
    # The gate is the stack's (GateMinAuc, ...), set on the evaluation step itself, so a manual run that names no
    # gate is judged by the same thresholds as the schedule and the alarm; an input's `gate` only overrides.
    assert run.gate == {}
    env = template["Resources"]["EvaluateFunction"]["Properties"]["Environment"]["Variables"]
    assert {k: v["Ref"] for k, v in env.items() if k.startswith("READMIT_GATE_")} == {
        "READMIT_GATE_MIN_AUC": "GateMinAuc",
        "READMIT_GATE_MAX_AUC_DROP": "GateMaxAucDrop",
        "READMIT_GATE_MAX_ECE": "GateMaxEce",
    }


@pytest.mark.slow
def test_the_alarm_returning_to_ok_starts_nothing(bus: tuple[Any, Any, str]) -> None:
    events, sqs, url = bus
    event = alarm_event()
    event["detail"]["state"]["value"] = "OK"
    send(events, event)
    assert received(sqs, url) == []


@pytest.mark.slow
def test_another_alarm_starts_nothing(bus: tuple[Any, Any, str]) -> None:
    events, sqs, url = bus
    event = alarm_event()
    event["detail"]["alarmName"] = "readmit-api-errors-dev"
    send(events, event)
    assert received(sqs, url) == []


def test_the_weekly_schedule_expression_is_accepted_and_its_fixture_is_a_scheduled_event() -> None:
    with mock_aws():
        events = boto3.client("events")
        events.put_rule(Name="weekly", ScheduleExpression="cron(0 2 ? * SUN *)")
        assert events.describe_rule(Name="weekly")["ScheduleExpression"] == "cron(0 2 ? * SUN *)"
    fixture = json.loads((ROOT / "events" / "eventbridge_weekly_schedule.json").read_text())
    assert fixture["detail-type"] == "Scheduled Event" and fixture["source"] == "aws.events"
