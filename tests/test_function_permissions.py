"""Each function's execution role grants exactly the AWS actions its code calls (issue #14).

The code side is tests/iam_actions.code_calls (static, over every reachable branch); the role side is the role SAM
generates from template.yaml. A missing action is an AccessDenied waiting on a real account; a surplus one is
privilege the function does not need (tests/iam_actions.ALLOWED_SURPLUS lists the few excused, with reasons)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import iam_actions
from tests.iam_actions import Grant, Need, compare, needs, role_grants, verdict
from tests.replay import template

pytestmark = pytest.mark.slow  # each function's code and role analysed (about a second a function, 40 s together)

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


def test_each_step_reaches_only_what_its_handler_calls() -> None:
    """Name-based resolution made ``jobs.start`` / ``jobs.status`` reach every live class's ``start`` / ``status``
    and ``records.append`` the prediction log's ``append``: the training steps "called" S3 through
    chalicelib/core/storage.py and the drift monitor wrote to S3. Receivers typed by annotation or constructor resolve
    to their class only."""
    calls = {fn: iam_actions.code_calls(template(), fn).operations() for fn in FUNCTIONS}
    assert calls["StartTrainingFunction"] == {("sagemaker", "CreateTrainingJob"), ("sagemaker", "DescribeTrainingJob")}
    assert calls["CheckTrainingFunction"] == {("sagemaker", "DescribeTrainingJob")}
    # The drift monitor reads the registry, the prediction log and the outcome uploads, and hashes the outcomes'
    # encounter ids with the salt (chalicelib/monitoring/outcomes.parse_outcomes → identifiers.secret_salt); it writes
    # nothing.
    assert calls["DriftMonitorFunction"] == {
        ("s3", "GetObject"),
        ("s3", "ListObjectsV2"),
        ("secretsmanager", "GetSecretValue"),
    }
    assert ("s3", "HeadObject") not in calls["BatchMergeFunction"]  # only the source file is HEADed (prepare, score)


PROJECT = {
    "pkg/__init__.py": "",
    "pkg/store.py": """
from typing import Any, Protocol

import boto3


class Store(Protocol):
    def read(self, key: str) -> bytes: ...


class S3Store:
    def __init__(self, client: Any = None) -> None:
        self.client = client or boto3.client("s3")

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket="b", Key=key)["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket="b", Key=key, Body=data)


class Jobs:
    def __init__(self, client: Any = None) -> None:
        self.client = client or boto3.client("sagemaker")

    def write(self, name: str) -> None:
        self.client.create_training_job(TrainingJobName=name)

    def status(self, name: str) -> str:
        return self.client.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]


class Queue:
    def append(self, body: str) -> None:
        boto3.client("sqs").send_message(QueueUrl="q", MessageBody=body)


class DeadLetters(Queue):
    def append(self, body: str) -> None:
        boto3.client("sqs").send_message_batch(QueueUrl="q", Entries=[])


def open_store() -> Store:
    return S3Store()


def dead_letters() -> Queue:
    return DeadLetters()


def remember(items, value) -> None:
    items.append(value)
""",
    "typed.py": """
from pkg.store import Jobs, open_store, remember


def handler(event, context, jobs: Jobs | None = None):
    jobs = jobs or Jobs()
    store = open_store()
    remember([], store.read("k"))
    return jobs.status(event["name"])
""",
    "untyped.py": """
from pkg import store


def handler(event, context, queue: store.Queue | None = None):
    store.remember(queue or store.DeadLetters(), "x")
""",
    "override.py": """
from pkg.store import dead_letters


def handler(event, context):
    dead_letters().append("x")
""",
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small project of its own (package ``pkg``), read by the collector in place of chalicelib."""
    for name, text in PROJECT.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(iam_actions, "ROOT", tmp_path)
    monkeypatch.setattr(iam_actions, "PACKAGES", ("pkg",))
    return tmp_path


def _operations(project: Path, module: str) -> set[tuple[str, str]]:
    return iam_actions.collect_calls(module, project / f"{module}.py", "handler").operations()


def test_typed_receivers_reach_their_own_class_only(project: Path) -> None:
    """``jobs.status`` (``jobs = jobs or Jobs()``) is Jobs.status; ``store.read`` on the Store protocol reaches the
    live classes that implement it; ``items.append`` on an untyped parameter reaches no ``append`` of a class the
    code never creates. Name-based matching would add Jobs.write's CreateTrainingJob via S3Store.write's name,
    and Queue.append's SendMessage."""
    assert _operations(project, "typed") == {("sagemaker", "DescribeTrainingJob"), ("s3", "GetObject")}


def test_an_untyped_receiver_reaches_the_methods_of_every_class_the_code_creates(project: Path) -> None:
    """Sound where the type is unknown: ``items.append`` reaches DeadLetters.append (created here) and, through its
    base, Queue.append (the annotation names Queue: a caller may pass one)."""
    operations = _operations(project, "untyped")
    assert ("sqs", "SendMessageBatch") in operations  # the class created
    assert ("sqs", "SendMessage") in operations  # its base: DeadLetters is a Queue
    assert not any(service in ("s3", "sagemaker") for service, _ in operations)  # never created, never named


def test_a_method_overridden_in_a_live_subclass_is_reached_through_the_base_type(project: Path) -> None:
    """``dead_letters() -> Queue`` returns a DeadLetters: ``.append`` on a Queue must reach the override."""
    assert ("sqs", "SendMessageBatch") in _operations(project, "override")


def test_the_operation_map_follows_the_documented_exceptions() -> None:
    assert iam_actions.iam_actions("s3", "ListObjectsV2") == ("s3:ListBucket",)
    assert iam_actions.iam_actions("s3", "HeadObject") == ("s3:GetObject",)
    assert iam_actions.iam_actions("bedrock-runtime", "Converse") == ("bedrock:InvokeModel", "bedrock:ApplyGuardrail")
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


@pytest.mark.parametrize("variant", iam_actions.SECRET_VARIANTS)
@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_each_secret_the_code_reads_is_one_the_role_may_read_and_decrypt(variant: str, logical_id: str) -> None:
    """Per secret, not per action: the salt and the Qdrant key are both GetSecretValue."""
    result = iam_actions.secret_verdict(variant, template(), logical_id)
    assert not result.missing, f"{logical_id} ({variant}) lacks:\n{_lines({k: [v] for k, v in result.missing.items()})}"
    assert not result.surplus, f"{logical_id} ({variant}) may read secrets it is never told about: {result.surplus}"


def test_a_grant_on_the_wrong_secret_or_without_its_key_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check could fail: the API's Qdrant key statement pointed at the salt instead, and its KMS grants
    dropped; and the batch scorer given the Qdrant key it never reads."""
    stack = iam_actions.stack("remote-qdrant")
    salt, qdrant = stack.arn("IdSaltSecret"), stack.arn("QdrantApiKeySecret")
    real = iam_actions.role_statements

    def wrong(variant: str, logical_id: str) -> list[dict[str, Any]]:
        statements = [dict(s) for s in real(variant, logical_id)]
        if logical_id == "BatchScoreFunction":
            return [*statements, {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": qdrant}]
        for statement in statements:
            if statement.get("Resource") == qdrant:
                statement["Resource"] = salt
        return [s for s in statements if "kms:Decrypt" not in iam_actions._as_list(s.get("Action"))]

    monkeypatch.setattr(iam_actions, "role_statements", wrong)
    api = iam_actions.secret_verdict("remote-qdrant", template(), "ApiFunction")
    assert set(api.missing) == {"secretsmanager:GetSecretValue on QdrantApiKeySecret", "kms:Decrypt on DataKey"}
    assert iam_actions.secret_verdict("remote-qdrant", template(), "BatchScoreFunction").surplus == [
        "QdrantApiKeySecret"
    ]
