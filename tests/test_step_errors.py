"""The state machines name the errors their steps raise (issue #18, item 3): Lambda reports an unhandled exception's
class name as errorType and Step Functions matches Retry and Catch ErrorEquals against that name
(https://docs.aws.amazon.com/lambda/latest/dg/python-exceptions.html,
https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html). So every name in a definition
must be a class a step can raise (or a Lambda./States. name), a transient one is retried, a permanent one never is,
and a handler made to fail raises the name its state handles."""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

import chalicelib.batch.errors
import chalicelib.lifecycle.errors  # defines the lifecycle leaves leaf_errors lists
from chalicelib.cli.local_invoke import module_file
from chalicelib.cli.sam_template import Template
from chalicelib.core.errors import (
    AwsThrottled,
    AwsUnavailable,
    InvalidEvent,
    PermanentError,
    StepError,
    TransientError,
    leaf_errors,
    step_error,
)
from chalicelib.core.lambda_step import step
from tests.test_statemachine_budgets import function_of, machine_tasks, machines

ROOT = Path(__file__).resolve().parent.parent
# The Lambda service errors Step Functions reports for an invoke that failed in Lambda, not in the function, which
# AWS recommends retrying: https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html
LAMBDA_SERVICE = {
    "Lambda.ClientExecutionTimeoutException",
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}
TRANSLATED = {"InvalidEvent", "AwsThrottled", "AwsUnavailable"}  # what lambda_step.step raises from library errors
ERRORS = leaf_errors()


@pytest.fixture(scope="module")
def template() -> Template:
    return Template(ROOT / "template.yaml", region="us-east-1")


def lambda_tasks(template: Template) -> list[tuple[str, str, dict[str, Any]]]:
    """(path, function logical id, state) of every Lambda task of every state machine."""
    return [
        (t.path, fn, t.state)
        for m in machines(template)
        for t in machine_tasks(template, m)
        if (fn := function_of(template, t)) is not None
    ]


def names(rules: list[dict[str, Any]]) -> list[str]:
    return [name for rule in rules for name in rule["ErrorEquals"]]


# --- what a step's code can raise -------------------------------------------------------------------------------------
def chalicelib_imports(source: str) -> set[str]:
    """The chalicelib modules a source imports, lazily (inside functions) too."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("chalicelib"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from chalicelib.batch import job`
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("chalicelib")}
    return {m for m in found if module_path(m) is not None}


def module_path(module: str) -> Path | None:
    path = ROOT / Path(*module.split("."))
    return next((p for p in (path.with_suffix(".py"), path / "__init__.py") if p.is_file()), None)


@cache
def raised_by(handler: Path) -> frozenset[str]:
    """The exception class names raised (``raise Name(...)``) anywhere in the handler's file and the chalicelib modules
    it imports, transitively; plus what lambda_step.step translates, when the handler is a step."""
    seen: set[Path] = set()
    todo = [handler]
    raised: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        source = path.read_text()
        raised |= set(re.findall(r"\braise (\w+)\(", source))
        todo += [p for m in chalicelib_imports(source) if (p := module_path(m)) is not None]
    if "lambda_step import step" in handler.read_text():
        raised |= TRANSLATED
    return frozenset(raised)


# --- the definitions --------------------------------------------------------------------------------------------------
def test_the_errors_modules_define_the_permanent_and_transient_leaves_the_definitions_name() -> None:
    assert {"AwsThrottled", "AwsUnavailable"} <= {n for n, c in ERRORS.items() if issubclass(c, TransientError)}
    permanent = {n for n, c in ERRORS.items() if issubclass(c, PermanentError)}
    assert {"InvalidEvent", "ModelRefused", "GateNotPassed", "IncompleteRun", "MissingColumns"} <= permanent
    assert not permanent & {n for n, c in ERRORS.items() if issubclass(c, TransientError)}
    assert len({c.__name__ for c in ERRORS.values()}) == len(ERRORS)  # Step Functions sees names: no two alike


def name_problems(template: Template, path: str, function: str, state: dict[str, Any]) -> list[str]:
    """Names in the state's Retry and Catch that are neither a StepError its function's code raises nor a Lambda
    service error or a States. name."""
    handler = module_file(template.function(function))
    assert handler is not None, function
    can_raise = raised_by(handler)
    problems = []
    for name in names(state.get("Retry", [])) + names(state.get("Catch", [])):
        if name.startswith("States.") or name in LAMBDA_SERVICE:
            continue
        if name not in ERRORS:
            problems.append(f"{path}: {name} is not a StepError defined in an errors module")
        elif name not in can_raise:
            problems.append(f"{path}: {name} is never raised by {function}'s code")
    return problems


def retry_problems(path: str, state: dict[str, Any]) -> list[str]:
    """A Lambda task must retry Lambda's service errors and every transient error by name, never a permanent one
    (nor everything), catch its permanent errors by name, and catch everything only last, into the failure notice,
    saying why in its Comment."""
    transient = {n for n, c in ERRORS.items() if issubclass(c, TransientError)}
    retried = set(names(state.get("Retry", [])))
    problems = [f"{path}: {n} is not retried" for n in sorted((LAMBDA_SERVICE | transient) - retried)]
    problems += [f"{path}: retries the permanent {n}" for n in sorted(retried) if n in ERRORS and n not in transient]
    problems += [f"{path}: retries {n}: everything" for n in sorted(retried & {"States.ALL", "States.TaskFailed"})]
    caught = [rule["ErrorEquals"] for rule in state.get("Catch", [])]
    named = [n for rule in caught for n in rule if n != "States.ALL"]
    if not named:
        problems.append(f"{path}: catches no permanent error by name")
    problems += [f"{path}: catches {n}, not a permanent error" for n in named if n not in ERRORS or n in transient]
    if ["States.ALL"] in caught and (
        caught[-1] != ["States.ALL"]
        or state["Catch"][-1]["Next"] != "NotifyFailure"
        or "States.ALL" not in state.get("Comment", "")
    ):
        problems.append(f"{path}: States.ALL only last, into NotifyFailure, with the reason in the Comment")
    return problems


@pytest.mark.slow
def test_every_error_a_definition_names_is_one_its_step_can_raise_or_a_lambda_or_states_error(
    template: Template,
) -> None:
    assert [p for path, fn, state in lambda_tasks(template) for p in name_problems(template, path, fn, state)] == []


def test_transient_errors_are_retried_by_name_and_permanent_ones_never_are(template: Template) -> None:
    assert [p for path, _, state in lambda_tasks(template) for p in retry_problems(path, state)] == []


def test_the_checks_fail_on_the_definitions_before_and_on_a_retried_permanent_error_or_a_typo(
    template: Template,
) -> None:
    [(path, function, state)] = [t for t in lambda_tasks(template) if t[0] == "Promote"]
    retried = json.loads(json.dumps(state))
    retried["Retry"][0]["ErrorEquals"].append("GateNotPassed")
    assert retry_problems(path, retried) == ["Promote: retries the permanent GateNotPassed"]
    typo = json.loads(json.dumps(state))
    typo["Catch"][0]["ErrorEquals"].append("GateNotPassd")
    assert name_problems(template, path, function, typo) == [
        "Promote: GateNotPassd is not a StepError defined in an errors module"
    ]
    foreign = json.loads(json.dumps(state))
    foreign["Catch"][0]["ErrorEquals"].append("IncompleteRun")  # a batch error: the promote function never raises it
    assert name_problems(template, path, function, foreign) == [
        "Promote: IncompleteRun is never raised by PromoteFunction's code"
    ]
    before = {  # everything caught as States.ALL, nothing named, nothing transient retried (issue #18)
        **state,
        "Retry": [{"ErrorEquals": sorted(LAMBDA_SERVICE - {"Lambda.ClientExecutionTimeoutException"})}],
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "NotifyFailure"}],
    }
    assert retry_problems(path, before) == [
        "Promote: AwsThrottled is not retried",
        "Promote: AwsUnavailable is not retried",
        "Promote: Lambda.ClientExecutionTimeoutException is not retried",
        "Promote: catches no permanent error by name",
    ]


# --- the handlers raise what their states name -----------------------------------------------------------------------
def handled_by(template: Template, path: str, error: BaseException) -> str:
    """How the state at ``path`` handles ``error``: retry, catch (by name) or catch-all."""
    [state] = [s for p, _, s in lambda_tasks(template) if p == path]
    name = type(error).__name__
    if name in names(state["Retry"]):
        return "retry"
    if name in [n for c in state.get("Catch", []) for n in c["ErrorEquals"]]:
        return "catch"
    return "catch-all" if any(c["ErrorEquals"] == ["States.ALL"] for c in state.get("Catch", [])) else "fails"


def failing(exc: BaseException) -> Any:
    def fn(event: dict[str, Any]) -> dict[str, Any]:
        raise exc

    return step(fn)


class Context:
    function_name = "readmit-step"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:readmit-step"
    aws_request_id = "step-errors"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # botocore's standard retry mode's throttling codes and transient status codes (botocore/retries/standard.py)
        (
            ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject"),
            AwsThrottled,
        ),
        (ClientError({"Error": {"Code": "ThrottlingException"}}, "DescribeTrainingJob"), AwsThrottled),
        (
            ClientError({"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}}, "GetObject"),
            AwsUnavailable,
        ),
        (EndpointConnectionError(endpoint_url="https://s3.amazonaws.com"), AwsUnavailable),
    ],
)
def test_throttling_and_5xx_reach_the_state_machine_as_retried_transient_errors(
    template: Template, error: BaseException, expected: type[StepError]
) -> None:
    with pytest.raises(expected) as raised:
        failing(error)({}, Context())
    assert raised.value.__cause__ is error  # the original stays in the log's traceback
    for path, _, _ in lambda_tasks(template):
        assert handled_by(template, path, raised.value) == "retry", path


def test_an_aws_refusal_that_no_retry_fixes_propagates_as_it_is() -> None:
    denied = ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    assert step_error(denied) is None
    with pytest.raises(ClientError) as raised:
        failing(denied)({}, Context())
    assert raised.value is denied


def test_an_invalid_event_names_fields_never_values_and_is_caught_not_retried(template: Template) -> None:
    from chalicelib.lifecycle.pipeline import RetrainInput, start_training

    event = json.loads((ROOT / "events" / "retrain_start_training.json").read_text()) | {"trigger": "patient-800001"}
    with pytest.raises(InvalidEvent) as raised:
        step(start_training)(event, Context())
    assert isinstance(raised.value, ValueError) and "trigger" in str(raised.value)
    assert "800001" not in str(raised.value) and raised.value.__cause__ is None
    assert handled_by(template, "StartTraining", raised.value) == "catch"
    with pytest.raises(InvalidEvent):
        step(lambda e: {"ok": RetrainInput.model_validate(e).trigger})({}, Context())


def test_retraining_steps_raise_the_permanent_errors_their_states_catch(
    template: Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chalicelib.lifecycle import pipeline

    decision = {"promote": False, "reasons": ["x"], "challenger": {}, "champion": None, "churn": None}
    event = {"registry_uri": "/nonexistent", "trigger": "manual", "decision": {**decision, "challenger_version": "v1"}}
    with pytest.raises(ValueError, match="did not pass") as raised:  # a ValueError, as callers caught before
        step(pipeline.promote)(event, Context())
    assert type(raised.value).__name__ == "GateNotPassed"
    assert handled_by(template, "Promote", raised.value) == "catch"

    pending = {**event, "decision": {**event["decision"], "promote": True, "approval": "PendingManualApproval"}}
    with pytest.raises(ValueError, match="pending manual approval") as raised:
        step(pipeline.promote)(pending, Context())
    assert type(raised.value).__name__ == "AwaitingApproval"
    assert handled_by(template, "Promote", raised.value) == "catch"

    with pytest.raises(InvalidEvent) as invalid:
        step(pipeline.check_training)({"training": {}}, Context())
    assert handled_by(template, "CheckTraining", invalid.value) == "catch"

    monkeypatch.setenv("READMIT_GATE_MIN_AUC", "high")
    with pytest.raises(ValueError, match="is not a number") as raised:
        pipeline.gate_config({})
    assert type(raised.value).__name__ == "InvalidGateSetting"
    assert handled_by(template, "Evaluate", raised.value) == "catch"


def test_a_step_without_training_settings_fails_fast_by_name(
    template: Template, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chalicelib.lifecycle import pipeline

    for name in ("READMIT_TRAINING_IMAGE", "READMIT_SAGEMAKER_ROLE_ARN", "READMIT_ARTIFACT_URI"):
        monkeypatch.delenv(name, raising=False)
    event = json.loads((ROOT / "events" / "retrain_start_training.json").read_text())
    with pytest.raises(KeyError) as raised:  # a KeyError, as callers caught before
        step(pipeline.start_training)(event, Context())
    assert type(raised.value).__name__ == "TrainingConfigMissing"
    assert handled_by(template, "StartTraining", raised.value) == "catch"


def test_batch_steps_raise_the_permanent_errors_their_states_catch(template: Template) -> None:
    from chalicelib.batch import job as batch_job

    class NoFiles:  # HeadObject of a missing key: 404 with no body, so the code is "404" (botocore's parser)
        def head_object(self, **_: Any) -> None:
            raise ClientError({"Error": {"Code": "404"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadObject")

        def download_file(self, *_: Any) -> None:
            raise AssertionError("nothing to download")

    class NoChampion(batch_job.ModelCache):
        def champion_version(self) -> str:
            raise chalicelib.batch.errors.NoChampionToScore("the registry has no champion")

    settings = batch_job.BatchSettings(registry_uri="/nonexistent")
    jobs = batch_job.BatchJobs(settings, s3_client=NoFiles(), models=NoChampion(settings))
    job = json.loads((ROOT / "events" / "batch_prepare_job.json").read_text())

    with pytest.raises(LookupError) as raised:  # NoChampion is a LookupError
        step(lambda e: batch_job.prepare_step(e, jobs))(job, Context())
    assert type(raised.value).__name__ == "NoChampionToScore"
    assert handled_by(template, "Prepare", raised.value) == handled_by(template, "ScoreWholeFile", raised.value)
    assert handled_by(template, "Prepare", raised.value) == "catch"

    jobs.models = batch_job.ModelCache(settings)
    jobs.models.champion_version = lambda: "v1"  # type: ignore[method-assign]
    with pytest.raises(FileNotFoundError) as raised:
        step(lambda e: batch_job.prepare_step(e, jobs))(job, Context())
    assert type(raised.value).__name__ == "SourceMissing"
    assert handled_by(template, "Prepare", raised.value) == "catch"

    batch = json.loads((ROOT / "events" / "batch_score_map_batch.json").read_text())
    with pytest.raises(InvalidEvent) as invalid:
        step(lambda e: batch_job.score_map_batch(e, jobs))({**batch, "Items": []}, Context())
    assert handled_by(template, "ScoreBatches/ScoreBatch", invalid.value) == "catch"
    with pytest.raises(InvalidEvent) as invalid:
        step(lambda e: batch_job.merge_step(e, jobs))({**job, "prepared": {}}, Context())
    assert handled_by(template, "Merge", invalid.value) == "catch"
