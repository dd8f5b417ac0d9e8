"""Alarms a person receives (issue #16 item 5): every alarm notifies the topic the alert e-mail subscribes to, and
together they cover every function, dead-letter queue, consumed queue, state machine, the API's latency and the
WAF's blocks; the dashboard shows all of them."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import pytest

from tests.iam_model import Stack, load_cfn, translate
from tests.test_template_first_deploy import BASE, TEMPLATE

# "Alarms based on metric math expressions can reference a maximum of 10 metrics" (CloudWatch, alarm-limits).
MATH_ALARM_METRICS = 10


@functools.cache
def raw() -> dict[str, Any]:
    return load_cfn(TEMPLATE)


def alarms() -> dict[str, dict[str, Any]]:
    return {k: r["Properties"] for k, r in raw()["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}


def of_type(kind: str) -> list[str]:
    return [k for k, r in raw()["Resources"].items() if r["Type"] == kind]


def watched(props: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(namespace, metric, dimensions) for a plain alarm or each MetricStat of a metric math alarm."""
    if "Metrics" in props:
        stats = [m["MetricStat"]["Metric"] for m in props["Metrics"] if "MetricStat" in m]
    else:
        stats = [props]
    return [(s["Namespace"], s["MetricName"], {d["Name"]: d["Value"] for d in s.get("Dimensions", [])}) for s in stats]


def logical(node: dict[str, Any]) -> str:
    """The resource a Ref or GetAtt names, in either form the loader gives."""
    (key, arg), *_ = node.items()
    if key == "Ref":
        return arg
    return arg[0] if isinstance(arg, list) else arg.split(".")[0]


@pytest.mark.slow
def test_every_alarm_notifies_the_topic() -> None:
    assert len(alarms()) >= 15
    for name, props in alarms().items():
        assert props["AlarmActions"] == [{"Ref": "NotificationTopic"}], name
        assert props.get("TreatMissingData") == "notBreaching", name  # quiet stacks are not alarming


@pytest.mark.parametrize(("email", "subscribed"), [("oncall@example.org", True), ("", False)])
@pytest.mark.slow
def test_the_alert_email_subscribes_to_the_topic_only_when_given(email: str, subscribed: bool) -> None:
    parameters = {**BASE, "AlertEmail": email} if email else BASE
    stack = Stack(translate(raw(), parameters), parameters)
    subs = [k for k in stack.resources if stack.resource_type(k) == "AWS::SNS::Subscription"]
    assert bool(subs) is subscribed
    if subscribed:
        props = stack.props(subs[0])
        assert props["Protocol"] == "email" and stack.resolve(props["Endpoint"]) == email
        assert props["TopicArn"] == {"Ref": "NotificationTopic"}


@pytest.mark.slow
def test_every_function_has_an_errors_alarm_and_a_throttles_alarm_within_the_math_limit() -> None:
    functions = set(of_type("AWS::Serverless::Function"))
    for metric in ("Errors", "Throttles"):
        covered = [
            logical(dims["FunctionName"])
            for props in alarms().values()
            for ns, name, dims in watched(props)
            if ns == "AWS/Lambda" and name == metric
        ]
        assert sorted(covered) == sorted(functions), metric  # each function exactly once
    for name, props in alarms().items():
        assert len([m for m in props.get("Metrics", []) if "MetricStat" in m]) <= MATH_ALARM_METRICS, name


def test_every_dead_letter_queue_has_a_depth_alarm_and_every_consumed_queue_an_age_alarm() -> None:
    resources = raw()["Resources"]
    dead_letters = {logical(r["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])
                    for r in resources.values() if "RedrivePolicy" in r.get("Properties", {})}  # fmt: skip
    dead_letters |= {"AsyncFailureQueue", "BatchTriggerDeadLetterQueue"}
    by_queue: dict[str, set[str]] = {}
    for props in alarms().values():
        for ns, metric, dims in watched(props):
            if ns == "AWS/SQS":
                by_queue.setdefault(logical(dims["QueueName"]), set()).add(metric)
    for queue in dead_letters:
        assert "ApproximateNumberOfMessagesVisible" in by_queue.get(queue, set()), queue
    consumed = {
        logical(e["Properties"]["Queue"])
        for r in resources.values()
        if r["Type"] == "AWS::Serverless::Function"
        for e in r["Properties"].get("Events", {}).values()
        if e["Type"] == "SQS"
    }
    assert consumed == {"IngestQueue"}
    for queue in consumed:
        assert "ApproximateAgeOfOldestMessage" in by_queue.get(queue, set()), queue


def test_every_state_machine_alarms_on_failed_executions() -> None:
    failing = {
        logical(dims["StateMachineArn"])
        for props in alarms().values()
        for ns, metric, dims in watched(props)
        if ns == "AWS/States" and metric == "ExecutionsFailed"
    }
    assert failing == set(of_type("AWS::Serverless::StateMachine"))


def test_api_p99_latency_and_waf_blocks_are_watched_on_the_right_dimensions() -> None:
    resources = raw()["Resources"]
    latency = alarms()["ApiLatencyAlarm"]
    assert latency["Namespace"] == "AWS/ApiGateway" and latency["ExtendedStatistic"] == "p99"
    assert latency["Dimensions"][0]["Value"] == resources["Api"]["Properties"]["Name"]  # the ApiName dimension
    waf = alarms()["WafBlockedRequestsAlarm"]
    dims = {d["Name"]: d["Value"] for d in waf["Dimensions"]}
    # WebACL is the web ACL's VisibilityConfig MetricName, not its Name (AWS WAF metrics and dimensions)
    assert dims["WebACL"] == resources["WebAcl"]["Properties"]["VisibilityConfig"]["MetricName"]
    assert dims["Rule"] == "ALL" and dims["Region"] == {"Ref": "AWS::Region"}
    assert waf["MetricName"] == "BlockedRequests" and waf["Namespace"] == "AWS/WAFV2"


def test_the_dashboard_shows_every_alarm() -> None:
    body = raw()["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))["widgets"]
    assert [w for w in widgets if w["type"] == "alarm"], "no alarm widget"
    shown = set(re.findall(r"\$\{(\w+)\.Arn\}", body))
    assert shown == set(alarms())
