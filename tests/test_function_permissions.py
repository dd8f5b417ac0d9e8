"""Each function's execution role grants exactly the AWS actions its code calls (issue #14).

The code side is tests/iam_actions.code_calls (static, over every reachable branch); the role side is the role SAM
generates from template.yaml. A missing action is an AccessDenied waiting on a real account; a surplus one is
privilege the function does not need (tests/iam_actions.ALLOWED_SURPLUS lists the few excused, with reasons)."""

from __future__ import annotations

import pytest

from tests import iam_actions
from tests.iam_actions import Grant, Need, compare, needs, role_grants, verdict
from tests.replay import template

FUNCTIONS = template().functions()


def _lines(table: dict[str, list[str]]) -> str:
    return "\n".join(f"  {action}: {'; '.join(why[:3])}" for action, why in table.items())


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_the_role_grants_every_action_the_code_calls(logical_id: str) -> None:
    missing = verdict(template(), logical_id).missing
    assert not missing, f"{logical_id}'s role lacks (action: why it is needed):\n{_lines(missing)}"


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_the_role_grants_nothing_the_code_does_not_use(logical_id: str) -> None:
    surplus = verdict(template(), logical_id).surplus
    assert not surplus, f"{logical_id}'s role grants unused (action: granted by):\n{_lines(surplus)}"


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_every_needed_and_granted_action_exists_in_the_service_authorization_reference(logical_id: str) -> None:
    actions = {a for n in needs(template(), logical_id) for a in n.actions()} | {
        g.action for g in role_grants(logical_id)
    }
    unknown = sorted(a for a in actions if not iam_actions.known_action(a))
    assert not unknown, f"{logical_id}: not IAM actions (a typo or a wrong mapping): {unknown}"


def test_every_documented_exception_maps_a_real_operation_to_real_actions() -> None:
    for (service, operation), actions in iam_actions.ACTION_EXCEPTIONS.items():
        assert operation in iam_actions._snake_operations(service).values(), (service, operation)
        assert all(iam_actions.known_action(a) for a in actions), actions


def test_the_collector_finds_the_calls_each_kind_of_function_makes() -> None:
    """Anchors that must hold whatever the template says: if the collector lost a branch, these would go."""
    calls = {fn: iam_actions.code_calls(template(), fn).operations() for fn in FUNCTIONS}
    assert ("sagemaker", "CreateTrainingJob") in calls["StartTrainingFunction"]
    assert ("sagemaker", "DescribeTrainingJob") in calls["CheckTrainingFunction"]
    assert ("sagemaker", "CreateTrainingJob") not in calls["CheckTrainingFunction"]  # reachability, not imports
    assert {("bedrock-runtime", "Converse"), ("dynamodb", "Query"), ("dynamodb", "PutItem")} <= calls["ApiFunction"]
    assert {("s3", "ListObjectsV2"), ("secretsmanager", "GetSecretValue")} <= calls["ApiFunction"]
    assert {("sqs", "SendMessageBatch"), ("bedrock-runtime", "InvokeModel")} <= calls["EmbedderFunction"]
    assert ("s3", "CreateMultipartUpload") in calls["BatchMergeFunction"]  # upload_fileobj of the scored file
    assert not any(service == "dynamodb" for service, _ in calls["BatchScoreFunction"])  # in-file history only
    assert iam_actions.code_calls(template(), "EmbedderFunction").opensearch  # opensearch-py's signed requests


def test_the_operation_map_follows_the_documented_exceptions() -> None:
    assert iam_actions.iam_actions("s3", "ListObjectsV2") == ("s3:ListBucket",)
    assert iam_actions.iam_actions("s3", "HeadObject") == ("s3:GetObject",)
    assert iam_actions.iam_actions("bedrock-runtime", "Converse") == ("bedrock:InvokeModel",)
    assert iam_actions.iam_actions("bedrock-runtime", "InvokeModel") == ("bedrock:InvokeModel",)
    assert iam_actions.iam_actions("sqs", "SendMessageBatch") == ("sqs:SendMessage",)
    assert iam_actions.iam_actions("dynamodb", "Query") == ("dynamodb:Query",)
    assert iam_actions.expand("sqs:SendMessage*") == {"sqs:SendMessage"}  # SendMessageBatch is no IAM action


def test_the_comparison_reports_a_missing_and_a_surplus_action_and_excuses_only_listed_sources() -> None:
    wanted = [Need.of("s3 GetObject (x.py:1)", "s3:GetObject"), Need.of("logs", "logs:PutLogEvents")]
    grants = {Grant("logs:PutLogEvents", "AWSLambdaBasicExecutionRole"), Grant("s3:DeleteObject", "Statement")}
    grants |= {Grant("logs:CreateLogGroup", "AWSLambdaBasicExecutionRole")}
    result = compare(wanted, grants)
    assert result.missing == {"s3:GetObject": ["s3 GetObject (x.py:1)"]}
    assert result.surplus == {"s3:DeleteObject": ["Statement"]}  # an inline statement is never excused
    assert set(result.excused) == {"logs:CreateLogGroup"}
    either = Need((frozenset({"es:ESHttpGet"}), frozenset({"aoss:APIAccessAll"})), "opensearch")
    assert not compare([either], {Grant("aoss:APIAccessAll", "Statement")}).missing


def test_a_statement_removed_from_a_real_role_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check could fail: take the embedder's real role, drop SQS sends, and it must say so."""
    real = role_grants("EmbedderFunction")
    monkeypatch.setattr(iam_actions, "role_grants", lambda _: {g for g in real if g.action != "sqs:SendMessage"})
    assert "sqs:SendMessage" in iam_actions.verdict(template(), "EmbedderFunction").missing
