"""The retraining workflow (statemachines/retrain.asl.json): valid ASL, sound structure, and real executions.

Validation uses the npm package asl-validator, installed locally by ``make tools`` into .tools/. Executions run
in moto's Step Functions interpreter with Lambda functions that do not run code: each invocation returns the
next result queued through moto's lambda-simple API, in invocation order, whichever function is invoked.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from moto import mock_aws

ROOT = Path(__file__).resolve().parent.parent
MACHINES = sorted((ROOT / "statemachines").glob("*.asl.json"))
RETRAIN = ROOT / "statemachines" / "retrain.asl.json"
VALIDATOR = ROOT / ".tools" / "node_modules" / ".bin" / "asl-validator"

REGION = "us-east-1"
ACCOUNT = "123456789012"
PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
# The SAM DefinitionSubstitutions; the five functions in workflow order, with their state names.
FUNCTIONS = {
    "StartTrainingFunctionArn": "StartTraining",
    "CheckTrainingFunctionArn": "CheckTraining",
    "EvaluateFunctionArn": "Evaluate",
    "PromoteFunctionArn": "Promote",
    "RejectFunctionArn": "Reject",
}
PLACEHOLDERS = {*FUNCTIONS, "NotificationTopicArn"}
REALISTIC_ARNS = {
    **{
        key: f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:readmit-{re.sub(r'(?<!^)(?=[A-Z])', '-', state).lower()}"
        for key, state in FUNCTIONS.items()
    },
    "NotificationTopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:readmit-retraining",
}
# statemachines/batch_score.asl.json's substitutions (its own tests: tests/test_batch_statemachine.py).
BATCH_SUBSTITUTIONS = {
    **{
        f"Batch{step}FunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:readmit-batch-{step.lower()}"
        for step in ("Score", "ScoreMap", "Prepare", "Merge")
    },
    "BatchNotificationTopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:readmit-batch",
    "DataBucketName": "readmit-data-dev",
    "BatchSmallFileMaxBytes": "5000000",
    "BatchMaxConcurrency": "100",
}
REALISTIC_ARNS |= BATCH_SUBSTITUTIONS
LAMBDA_TRANSIENT = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}
LAMBDA_SIMPLE_URL = "http://motoapi.amazonaws.com/moto-api/static/lambda-simple/response"
MOTO_CONFIG: Any = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}


def substitute(text: str, values: dict[str, str]) -> str:
    """What SAM's DefinitionSubstitutions does; an unknown placeholder is an error, as it is for SAM."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def load(path: Path = RETRAIN) -> dict[str, Any]:
    return json.loads(substitute(path.read_text(), REALISTIC_ARNS))


def transitions(state: dict[str, Any]) -> list[str]:
    targets = [state[key] for key in ("Next", "Default") if key in state]
    targets += [choice["Next"] for choice in state.get("Choices", [])]
    targets += [catcher["Next"] for catcher in state.get("Catch", [])]
    return targets


def reachable(states: dict[str, Any], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += transitions(states[name])
    return seen


def is_lambda_task(state: dict[str, Any]) -> bool:
    resource = state["Resource"]
    return resource.startswith("arn:aws:states:::lambda:invoke") or ":lambda:" in resource


# --- asl-validator ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asl_validator() -> Path:
    if not (VALIDATOR.exists() and VALIDATOR.stat().st_mode & 0o111):
        pytest.fail(f"asl-validator is not installed at {VALIDATOR.relative_to(ROOT)}: run `make tools`")
    return VALIDATOR


def validate(validator: Path, definition: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "definition.asl.json"
    path.write_text(json.dumps(definition, indent=2))
    return subprocess.run(
        [str(validator), "--json-path", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_retraining_workflow_is_among_the_state_machines() -> None:
    assert RETRAIN in MACHINES


@pytest.mark.parametrize("machine", MACHINES, ids=[m.name for m in MACHINES])
@pytest.mark.slow
def test_asl_validator_accepts_every_state_machine_with_its_placeholders_substituted(
    machine: Path, asl_validator: Path, tmp_path: Path
) -> None:
    result = validate(asl_validator, load(machine), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _next_to_a_missing_state(d: dict[str, Any]) -> None:
    d["States"]["Decide"]["Default"] = "NoSuchState"


def _task_without_resource(d: dict[str, Any]) -> None:
    del d["States"]["Evaluate"]["Resource"]


def _resource_that_is_not_an_arn(d: dict[str, Any]) -> None:
    d["States"]["Promote"]["Resource"] = "promote-function"


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (_next_to_a_missing_state, "NoSuchState"),
        (_task_without_resource, "Evaluate"),
        (_resource_that_is_not_an_arn, "Promote"),
    ],
    ids=["next-to-missing-state", "task-without-resource", "resource-not-an-arn"],
)
@pytest.mark.slow
def test_asl_validator_rejects_a_deliberately_broken_copy(
    breakage: Any, expected: str, asl_validator: Path, tmp_path: Path
) -> None:
    definition = load()
    breakage(definition)
    result = validate(asl_validator, definition, tmp_path)
    assert result.returncode != 0, result.stdout
    assert expected in result.stdout + result.stderr


# --- structure ---------------------------------------------------------------------------------------------------


def test_every_placeholder_is_one_of_the_six_sam_substitutions_and_all_six_are_used() -> None:
    assert set(PLACEHOLDER.findall(RETRAIN.read_text())) == PLACEHOLDERS


def test_states_follow_the_documented_workflow() -> None:
    states = load()["States"]
    assert list(states) == [
        *("Defaults", "ApplyDefaults", "StartTraining", "WaitForTraining", "CheckTraining", "TrainingStatus"),
        *("TrainingFailed", "Evaluate", "Decide", "Promote", "Reject", "AwaitApproval", "NotifyResult", "Done"),
        *("NotifyFailure", "Failed"),
    ]
    assert states["StartTraining"]["Resource"] == "arn:aws:states:::lambda:invoke"
    assert states["StartTraining"]["ResultSelector"] == {"job_name.$": "$.Payload.job_name"}
    assert ".sync" in states["StartTraining"]["Comment"] and "moto" in states["StartTraining"]["Comment"]
    assert states["WaitForTraining"]["SecondsPath"] == "$.poll_seconds"
    assert states["Defaults"]["Parameters"]["defaults"]["poll_seconds"] == 60
    assert states["Failed"] == {"Type": "Fail", "Error": "RetrainingFailed", "Cause": states["Failed"]["Cause"]}
    assert not any(s.get("Resource", "").endswith(".sync") for s in states.values())


def test_every_task_retries_transient_errors_and_catches_everything_into_notify_failure() -> None:
    states = load()["States"]
    tasks = {name: s for name, s in states.items() if s["Type"] == "Task"}
    assert set(tasks) == {*FUNCTIONS.values(), "NotifyResult", "NotifyFailure"}
    for name, task in tasks.items():
        retriers = task.get("Retry", [])
        timeout = [r for r in retriers if r["ErrorEquals"] == ["States.Timeout"]]
        assert timeout and timeout[0]["MaxAttempts"] == 1, name
        assert "TimeoutSeconds" in task, f"{name}: States.Timeout can only happen with a TimeoutSeconds"
        if is_lambda_task(task):
            transient = [r for r in retriers if set(r["ErrorEquals"]) >= LAMBDA_TRANSIENT]
            assert transient, name
            assert (transient[0]["IntervalSeconds"], transient[0]["BackoffRate"], transient[0]["MaxAttempts"]) == (
                2,
                2,
                3,
            ), name
        else:  # SNS: retried on any task failure
            assert any(r["ErrorEquals"] == ["States.TaskFailed"] for r in retriers), name
        catchers = task.get("Catch", [])
        assert catchers[-1]["ErrorEquals"] == ["States.ALL"], name  # the step's permanent errors by name before it
        if name == "NotifyFailure":
            assert catchers[0]["Next"] == "Failed"
            assert catchers[0]["ResultPath"] != "$.error", "the original error must survive a failed notification"
        else:
            assert {(c["Next"], c["ResultPath"]) for c in catchers} == {("NotifyFailure", "$.error")}, name


def test_every_state_is_reachable_and_every_transition_targets_a_state() -> None:
    definition = load()
    states = definition["States"]
    for name, state in states.items():
        assert set(transitions(state)) <= set(states), name
    assert reachable(states, definition["StartAt"]) == set(states)


def training_job_statuses() -> set[str]:
    """DescribeTrainingJob's TrainingJobStatus values, from botocore's model (data/sagemaker/*/service-2.json)."""
    import botocore.session

    return set(botocore.session.get_session().get_service_model("sagemaker").shape_for("TrainingJobStatus").enum)


def string_rules(rule: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The comparisons of a Choice rule, through And, Or and Not."""
    for key in ("And", "Or"):
        for inner in rule.get(key, []):
            yield from string_rules(inner)
    if "Not" in rule:
        yield from string_rules(rule["Not"])
    if "Variable" in rule:
        yield rule


def test_the_training_loop_compares_only_statuses_that_describe_training_job_returns() -> None:
    statuses = training_job_statuses()
    assert {"InProgress", "Completed", "Failed", "Stopping", "Stopped"} <= statuses  # the model was read
    choice = load()["States"]["TrainingStatus"]
    routes: dict[str, str] = {}
    for rule in choice["Choices"]:
        for comparison in string_rules(rule):
            assert set(comparison) - {"Next"} == {"Variable", "StringEquals"}, comparison  # exact values only
            assert comparison["Variable"] == "$.training.status", comparison
            routes[comparison["StringEquals"]] = rule["Next"]
    assert set(routes) <= statuses, f"not a TrainingJobStatus: {set(routes) - statuses}"
    assert routes == {"Completed": "Evaluate", "InProgress": "WaitForTraining", "Stopping": "WaitForTraining"}
    # every other status (Failed, Stopped, Deleting, or one AWS adds later) fails the run
    assert choice["Default"] == "TrainingFailed"
    assert statuses - set(routes) >= {"Failed", "Stopped"}


def test_a_candidate_pending_approval_never_reaches_promote_or_reject() -> None:
    states = load()["States"]
    assert reachable(states, "AwaitApproval") == {"AwaitApproval", "NotifyResult", "Done", "NotifyFailure", "Failed"}
    [pending, passed] = states["Decide"]["Choices"]
    assert pending["Next"] == "AwaitApproval" and passed["Next"] == "Promote"  # pending is tested first
    assert {"Variable": "$.decision.approval", "StringEquals": "PendingManualApproval"} in pending["And"]


def test_failure_paths_never_reach_the_only_state_that_changes_the_champion() -> None:
    states = load()["States"]
    users = {name for name, s in states.items() if REALISTIC_ARNS["PromoteFunctionArn"] in json.dumps(s)}
    assert users == {"Promote"}
    assert "Promote" not in reachable(states, "TrainingFailed") | reachable(states, "NotifyFailure")
    assert reachable(states, "Promote") == {"Promote", "NotifyResult", "Done", "NotifyFailure", "Failed"}


# --- executions in moto ------------------------------------------------------------------------------------------


@dataclass
class Stack:
    sfn: Any
    sqs: Any
    lambdas: Any
    queue_url: str
    machine_arn: str
    arns: dict[str, str]


@dataclass
class Run:
    arn: str
    status: str
    error: str | None
    output: dict[str, Any] | None
    events: list[dict[str, Any]]
    messages: list[dict[str, Any]]

    @property
    def entered(self) -> list[str]:
        return [e["stateEnteredEventDetails"]["name"] for e in self.events if "stateEnteredEventDetails" in e]

    def lambda_inputs(self, function_arn: str) -> list[dict[str, Any]]:
        """The payload of every invocation of one function, whichever way the Task invokes it."""
        found = []
        for event in self.events:
            if event["type"] == "TaskScheduled" and event["taskScheduledEventDetails"]["resourceType"] == "lambda":
                params = json.loads(event["taskScheduledEventDetails"]["parameters"])
                if params["FunctionName"] == function_arn:
                    found.append(params["Payload"])
            elif event["type"] == "LambdaFunctionScheduled":
                details = event["lambdaFunctionScheduledEventDetails"]
                if details["resource"] == function_arn:
                    found.append(json.loads(details["input"]))
        return found


def echo_functions(role_name: str, arns: dict[str, str]) -> tuple[str, dict[str, str]]:
    """An IAM role and one Lambda per ARN (named as the ARN names it) that moto's lambda-simple backend answers
    with queue_lambda_results; returns the role and the created ARNs (equal to the given ones)."""
    role = boto3.client("iam", region_name=REGION).create_role(RoleName=role_name, AssumeRolePolicyDocument="{}")
    lambdas = boto3.client("lambda", region_name=REGION)
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as zf:
        zf.writestr("app.py", "def handler(event, context):\n    return event\n")
    created = {
        key: lambdas.create_function(
            FunctionName=arn.rsplit(":", 1)[1],
            Runtime="python3.12",
            Role=role["Role"]["Arn"],
            Handler="app.handler",
            Code={"ZipFile": code.getvalue()},
        )["FunctionArn"]
        for key, arn in arns.items()
    }
    return role["Role"]["Arn"], created


def topic_inbox(sqs: Any, name: str) -> tuple[str, str]:
    """An SNS topic with an SQS queue subscribed to it, to read what a workflow announced: (topic ARN, queue URL)."""
    sns = boto3.client("sns", region_name=REGION)
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"{name}-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    return topic, queue_url


def finished(sfn: Any, execution_arn: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The execution once it has stopped running (at most 30 s), and its event history."""
    deadline = time.monotonic() + 30
    while (described := sfn.describe_execution(executionArn=execution_arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, "the execution did not finish within 30 s"
        time.sleep(0.05)
    return described, sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]


def announced(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in received]


@pytest.fixture
def stack() -> Iterator[Stack]:
    with mock_aws(config=MOTO_CONFIG):
        role, arns = echo_functions("readmit-retraining", {key: REALISTIC_ARNS[key] for key in FUNCTIONS})
        sqs = boto3.client("sqs", region_name=REGION)
        arns["NotificationTopicArn"], queue_url = topic_inbox(sqs, "readmit-retraining")
        sfn = boto3.client("stepfunctions", region_name=REGION)
        machine_arn = sfn.create_state_machine(
            name="readmit-retraining", definition=substitute(RETRAIN.read_text(), arns), roleArn=role
        )["stateMachineArn"]
        yield Stack(sfn, sqs, boto3.client("lambda", region_name=REGION), queue_url, machine_arn, arns)


def queue_lambda_results(*results: dict[str, Any] | str) -> None:
    """Whatever function is invoked next returns the next of these (moto's lambda-simple backend); a str is sent
    as it is, anything else as JSON."""
    replies = [r if isinstance(r, str) else json.dumps(r) for r in results]
    response = requests.post(LAMBDA_SIMPLE_URL, json={"results": replies, "region": REGION}, timeout=10)
    assert response.status_code == 201


def execute(stack: Stack, name: str, **overrides: Any) -> Run:
    run_input = {
        "trigger": "manual",
        "data_uri": "s3://readmit-data/diabetic_data.csv",
        "registry_uri": "s3://readmit-models/registry",
        "poll_seconds": 0,
        **overrides,
    }
    arn = stack.sfn.start_execution(stateMachineArn=stack.machine_arn, name=name, input=json.dumps(run_input))[
        "executionArn"
    ]
    described, events = finished(stack.sfn, arn)
    return Run(
        arn=arn,
        status=described["status"],
        error=described.get("error"),
        output=json.loads(described["output"]) if "output" in described else None,
        events=events,
        messages=announced(stack.sqs, stack.queue_url),
    )


JOB = "readmit-manual-run-1"
STARTED = {"job_name": JOB}
IN_PROGRESS = {"job_name": JOB, "status": "InProgress", "model_artifact": None, "failure_reason": ""}
COMPLETED = {
    "job_name": JOB,
    "status": "Completed",
    "model_artifact": f"s3://readmit-models/training/{JOB}/output/model.tar.gz",
    "failure_reason": "",
}
CHALLENGER, CHAMPION = "20250101T020000Z-c0ffee00", "20241201T020000Z-5eed5eed"


def decision(promote: bool, reasons: list[str]) -> dict[str, Any]:
    # Beyond the documented keys, what chalicelib.lifecycle.gate adds (challenger/champion summaries, churn, config):
    # the workflow must hand all of it to Promote/Reject and to the notification unchanged.
    return {
        "promote": promote,
        "challenger_version": CHALLENGER,
        "champion_version": CHAMPION,
        "reasons": reasons,
        "metrics": {"challenger": {"roc_auc": 0.672}, "champion": {"roc_auc": 0.664}},
        "challenger": {"roc_auc": 0.672, "brier": 0.095},
        "champion": {"roc_auc": 0.664, "brier": 0.096},
        "churn": 0.031,
        "config": {"max_auc_drop": 0.005},
    }


@pytest.mark.slow
def test_completed_training_that_passes_the_gate_is_promoted_and_announced(stack: Stack) -> None:
    promoted = decision(True, ["ROC AUC 0.672 vs champion 0.664"])
    queue_lambda_results(STARTED, IN_PROGRESS, COMPLETED, promoted, {"champion": CHALLENGER, "promoted": CHALLENGER})

    run = execute(stack, "run-1")

    assert run.status == "SUCCEEDED", run.events[-1]
    assert run.entered == [
        *("Defaults", "ApplyDefaults", "StartTraining"),
        *("WaitForTraining", "CheckTraining", "TrainingStatus") * 2,
        *("Evaluate", "Decide", "Promote", "NotifyResult", "Done"),
    ]
    # Inputs each function saw: the job named by StartTraining is the one checked; Promote gets the decision.
    started = run.lambda_inputs(stack.arns["StartTrainingFunctionArn"])
    assert started == [{**started[0], "execution_name": "run-1", "poll_seconds": 0, "trigger": "manual"}]
    assert [p["job_name"] for p in run.lambda_inputs(stack.arns["CheckTrainingFunctionArn"])] == [JOB, JOB]
    [evaluated] = run.lambda_inputs(stack.arns["EvaluateFunctionArn"])
    assert evaluated["training"] == COMPLETED
    [promote_input] = run.lambda_inputs(stack.arns["PromoteFunctionArn"])
    assert promote_input["decision"] == promoted and promote_input["registry_uri"] == "s3://readmit-models/registry"
    assert run.lambda_inputs(stack.arns["RejectFunctionArn"]) == []
    assert run.output is not None and run.output["outcome"] == {"champion": CHALLENGER, "promoted": CHALLENGER}

    [message] = run.messages
    assert json.loads(message["Message"]) == promoted
    assert message["Subject"] == f"readmit retraining (manual): challenger {CHALLENGER} promote=true"
    assert message["MessageAttributes"]["execution"]["Value"] == run.arn


@pytest.mark.slow
def test_a_challenger_that_fails_the_gate_is_rejected_and_the_reasons_are_announced(stack: Stack) -> None:
    reasons = ["ROC AUC 0.655 is below the champion's 0.664 minus 0.005", "race=AfricanAmerican: AUC 0.590 < 0.600"]
    rejected = decision(False, reasons)
    queue_lambda_results(STARTED, COMPLETED, rejected, {"champion": CHAMPION, "rejected": CHALLENGER})

    run = execute(stack, "run-2", trigger="drift")

    assert run.status == "SUCCEEDED", run.events[-1]
    assert run.entered[-4:] == ["Decide", "Reject", "NotifyResult", "Done"]
    assert "Promote" not in run.entered
    assert run.lambda_inputs(stack.arns["PromoteFunctionArn"]) == []
    [reject_input] = run.lambda_inputs(stack.arns["RejectFunctionArn"])
    assert reject_input["decision"] == rejected
    assert run.output is not None and run.output["outcome"] == {"champion": CHAMPION, "rejected": CHALLENGER}

    [message] = run.messages
    body = json.loads(message["Message"])
    assert body["promote"] is False
    assert body["reasons"] == reasons
    assert message["Subject"] == f"readmit retraining (drift): challenger {CHALLENGER} promote=false"


@pytest.mark.slow
def test_manual_policy_a_passing_candidate_waits_for_approval_and_nothing_promotes_or_rejects(stack: Stack) -> None:
    pending = {**decision(True, ["ROC AUC 0.672 vs champion 0.664"]), "approval": "PendingManualApproval"}
    queue_lambda_results(STARTED, COMPLETED, pending)

    run = execute(stack, "run-manual")

    assert run.status == "SUCCEEDED", run.events[-1]
    assert run.entered[-4:] == ["Decide", "AwaitApproval", "NotifyResult", "Done"]
    assert run.lambda_inputs(stack.arns["PromoteFunctionArn"]) == []
    assert run.lambda_inputs(stack.arns["RejectFunctionArn"]) == []
    assert run.output is not None and run.output["outcome"] == {"pending": CHALLENGER}
    [message] = run.messages
    assert json.loads(message["Message"])["approval"] == "PendingManualApproval"


@pytest.mark.slow
def test_auto_policy_an_approved_candidate_is_promoted_as_before(stack: Stack) -> None:
    approved = {**decision(True, ["ROC AUC 0.672 vs champion 0.664"]), "approval": "Approved"}
    queue_lambda_results(STARTED, COMPLETED, approved, {"champion": CHALLENGER, "promoted": CHALLENGER})

    run = execute(stack, "run-auto")

    assert run.status == "SUCCEEDED", run.events[-1]
    assert run.entered[-4:] == ["Decide", "Promote", "NotifyResult", "Done"]


@pytest.mark.slow
def test_failed_training_is_announced_fails_the_execution_and_never_promotes_or_rejects(stack: Stack) -> None:
    failed = {**IN_PROGRESS, "status": "Failed", "failure_reason": "AlgorithmError: out of memory"}
    queue_lambda_results(STARTED, failed)

    run = execute(stack, "run-3", trigger="schedule")

    assert (run.status, run.error) == ("FAILED", "RetrainingFailed")
    assert run.entered[-5:] == ["CheckTraining", "TrainingStatus", "TrainingFailed", "NotifyFailure", "Failed"]
    assert not {"Evaluate", "Decide", "Promote", "Reject"} & set(run.entered)
    for key in ("EvaluateFunctionArn", "PromoteFunctionArn", "RejectFunctionArn"):
        assert run.lambda_inputs(stack.arns[key]) == [], key
    scheduled = [e for e in run.events if e["type"] in {"TaskScheduled", "LambdaFunctionScheduled"}]
    assert len(scheduled) == 3  # StartTraining, CheckTraining and the SNS publish: nothing else ran

    [message] = run.messages
    assert message["Subject"] == "readmit retraining failed"
    assert json.loads(message["Message"]) == {"Error": "TrainingFailed", "Cause": "AlgorithmError: out of memory"}
    assert message["MessageAttributes"]["execution"]["Value"] == run.arn


@pytest.mark.slow
def test_a_failing_evaluation_is_caught_announced_and_fails_the_execution_before_any_decision(stack: Stack) -> None:
    # moto's lambda-simple functions cannot raise, but a reply over Lambda's 6 MB limit is a function error there
    # as it is in AWS (Function.ResponseSizeTooLarge), and it is not one of the transient errors that are retried.
    queue_lambda_results(STARTED, COMPLETED, {"scores": "0" * 6_000_000})

    run = execute(stack, "run-4")

    assert (run.status, run.error) == ("FAILED", "RetrainingFailed")
    assert run.entered[-3:] == ["Evaluate", "NotifyFailure", "Failed"]
    assert not {"Decide", "Promote", "Reject", "NotifyResult"} & set(run.entered)
    [message] = run.messages
    assert message["Subject"] == "readmit retraining failed"
    error = json.loads(message["Message"])
    assert error["Error"] == "Function.ResponseSizeTooLarge"
    assert "payload size" in json.loads(error["Cause"])["errorMessage"]


@pytest.mark.slow
def test_poll_seconds_defaults_to_a_minute_and_the_execution_name_names_the_job(stack: Stack) -> None:
    queue_lambda_results(STARTED)
    run_input = {"trigger": "schedule", "data_uri": "s3://readmit-data/d.csv", "registry_uri": "s3://readmit-models/r"}
    arn = stack.sfn.start_execution(stateMachineArn=stack.machine_arn, name="nightly-1", input=json.dumps(run_input))[
        "executionArn"
    ]
    try:
        deadline = time.monotonic() + 10
        waiting: list[dict[str, Any]] = []
        while not waiting:
            assert time.monotonic() < deadline, "the execution never reached WaitForTraining"
            events = stack.sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
            waiting = [e for e in events if e["type"] == "WaitStateEntered"]
            time.sleep(0.05)
        state = json.loads(waiting[0]["stateEnteredEventDetails"]["input"])
        assert state["poll_seconds"] == 60
        assert state["execution_name"] == "nightly-1"
        assert {k: state[k] for k in run_input} == run_input
    finally:
        stack.sfn.stop_execution(executionArn=arn)
    deadline = time.monotonic() + 10  # moto stops the execution's thread asynchronously
    while (status := stack.sfn.describe_execution(executionArn=arn)["status"]) == "RUNNING":
        assert time.monotonic() < deadline, "the execution was not stopped"
        time.sleep(0.05)
    assert status == "ABORTED"
