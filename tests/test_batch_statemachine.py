"""The batch scoring workflow (statemachines/batch_score.asl.json) and its template resources: valid ASL, sound
structure, executions in moto, and least-privilege wiring.

moto's Step Functions interpreter cannot load the definition as written: its ASL parser rejects ``ItemBatcher``
and Distributed Map children of ``ExecutionType: EXPRESS``. The executions below therefore run a copy with exactly
those two changes (no batcher, so the map hands one prepared row per invocation; STANDARD children). The batch
shape itself (``{"Items", "BatchInput"}``) is covered by the handler replays in tests/test_batch_job.py, which feed
the scoring function the prepared file batched as the definition's ItemBatcher says.

moto's Distributed Map also ignores child failures (it implements no failure tolerance), where AWS fails the map
run at the first failed batch (the default tolerance, 0, which the definition keeps). That path is checked by
structure here, and its second guard, Merge refusing a run with missing rows, by tests/test_batch_job.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from chalicelib.batch import job as batch_job
from chalicelib.batch.events import BatchInput
from tests.test_statemachine import (
    BATCH_SUBSTITUTIONS,
    LAMBDA_TRANSIENT,
    MOTO_CONFIG,
    PLACEHOLDER,
    REGION,
    VALIDATOR,
    announced,
    echo_functions,
    finished,
    queue_lambda_results,
    reachable,
    substitute,
    topic_inbox,
    transitions,
    validate,
)
from tests.test_template import CfnLoader

ROOT = Path(__file__).resolve().parent.parent
BATCH = ROOT / "statemachines" / "batch_score.asl.json"
EVENT = ROOT / "events" / "batch_score_s3_object_created.json"
DATA = BATCH_SUBSTITUTIONS["DataBucketName"]


def load() -> dict[str, Any]:
    return json.loads(substitute(BATCH.read_text(), BATCH_SUBSTITUTIONS))


def tasks(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every Task, including those inside the Distributed Map's item processor."""
    found = {}
    for name, state in definition["States"].items():
        if state["Type"] == "Task":
            found[name] = state
        if "ItemProcessor" in state:
            found |= tasks(state["ItemProcessor"])
    return found


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load((ROOT / "template.yaml").read_text(), Loader=CfnLoader)


# --- the definition ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_asl_validator_accepts_the_definition_as_written_and_as_deployed(tmp_path: Path) -> None:
    if not VALIDATOR.exists():
        pytest.fail(f"asl-validator is not installed at {VALIDATOR.relative_to(ROOT)}: run `make tools`")
    for definition in (json.loads(BATCH.read_text()), load()):
        result = validate(VALIDATOR, definition, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_placeholders_are_exactly_the_templates_definition_substitutions(template: dict[str, Any]) -> None:
    props = template["Resources"]["BatchScoreStateMachine"]["Properties"]
    assert props["DefinitionUri"] == "statemachines/batch_score.asl.json"
    assert (
        set(PLACEHOLDER.findall(BATCH.read_text())) == set(props["DefinitionSubstitutions"]) == set(BATCH_SUBSTITUTIONS)
    )


def test_small_files_take_one_lambda_and_large_ones_the_distributed_map() -> None:
    states = load()["States"]
    assert list(states) == [
        *("Job", "BySize", "ScoreWholeFile", "Prepare", "ScoreBatches", "Merge"),
        *("NotifyDone", "Done", "NotifyFailure", "Failed"),
    ]
    job = states["Job"]["Parameters"]
    assert job["run_id.$"] == "$$.Execution.Name"
    assert job["settings"]["small_max_bytes.$"] == "States.StringToJson('5000000')"
    [rule] = states["BySize"]["Choices"]
    assert rule["Next"] == "ScoreWholeFile" and states["BySize"]["Default"] == "Prepare"
    assert {"Variable": "$.size", "NumericLessThanPath": "$.settings.small_max_bytes"} in rule["And"]
    whole, batch = states["ScoreWholeFile"], states["ScoreBatches"]["ItemProcessor"]["States"]["ScoreBatch"]
    # the same code in two functions: a whole file may need minutes, a batch must fit an EXPRESS child's 5
    assert whole["Resource"] == BATCH_SUBSTITUTIONS["BatchScoreFunctionArn"]
    assert batch["Resource"] == BATCH_SUBSTITUTIONS["BatchScoreMapFunctionArn"]


def test_the_map_reads_the_prepared_csv_in_batches_that_fit_a_step_functions_payload() -> None:
    fanout = load()["States"]["ScoreBatches"]
    assert fanout["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "EXPRESS"}
    reader = fanout["ItemReader"]
    assert reader["Resource"] == "arn:aws:states:::s3:getObject"
    assert reader["ReaderConfig"] == {"InputType": "CSV", "CSVHeaderLocation": "FIRST_ROW"}
    assert reader["Parameters"] == {"Bucket.$": "$.bucket", "Key.$": "$.prepared.items_key"}
    batcher = fanout["ItemBatcher"]
    assert batcher["MaxItemsPerBatch"] == batch_job.BATCH_ROWS
    assert batcher["MaxInputBytesPerBatch"] == 262_144
    assert set(batcher["BatchInput"]) == {f"{field}.$" for field in BatchInput.model_fields}
    assert fanout["MaxConcurrencyPath"] == "$.settings.max_concurrency"
    assert "ToleratedFailurePercentage" not in fanout and "ToleratedFailureCount" not in fanout  # default: none
    writer = fanout["ResultWriter"]
    assert writer["Resource"] == "arn:aws:states:::s3:putObject"
    assert writer["Parameters"] == {"Bucket": DATA, "Prefix": "results/map-runs"}


def test_every_task_retries_transient_errors_and_catches_everything() -> None:
    definition = load()
    found = tasks(definition)
    assert set(found) == {"ScoreWholeFile", "Prepare", "ScoreBatch", "Merge", "NotifyDone", "NotifyFailure"}
    for name, task in found.items():
        retriers = task["Retry"]
        timeout = [r for r in retriers if r["ErrorEquals"] == ["States.Timeout"]]
        assert timeout and timeout[0]["MaxAttempts"] == 1 and "TimeoutSeconds" in task, name
        if task["Resource"].startswith("arn:aws:lambda:"):
            assert any(set(r["ErrorEquals"]) >= LAMBDA_TRANSIENT for r in retriers), name
        else:
            assert any(r["ErrorEquals"] == ["States.TaskFailed"] for r in retriers), name
        if name != "ScoreBatch":  # a batch fails its child execution with its own error, caught or not
            assert task["Catch"][-1]["ErrorEquals"] == ["States.ALL"], name  # the permanent errors by name before it
    states = definition["States"]
    for name in ("ScoreWholeFile", "Prepare", "Merge", "NotifyDone", "ScoreBatches"):
        last = states[name]["Catch"][-1]
        assert last == {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "NotifyFailure"}
        assert {(c["Next"], c["ResultPath"]) for c in states[name]["Catch"]} == {("NotifyFailure", "$.error")}, name
    assert states["NotifyFailure"]["Catch"][0]["Next"] == "Failed"
    assert states["NotifyFailure"]["Catch"][0]["ResultPath"] != "$.error"  # the original error survives
    # inside a batch: the function's own error fails the batch, and so the map
    processor = states["ScoreBatches"]["ItemProcessor"]["States"]
    assert processor["ScoreBatch"]["Catch"][0]["Next"] == "BatchFailed"
    assert processor["BatchFailed"] == {**processor["BatchFailed"], "Type": "Fail", "ErrorPath": "$.error.Error"}
    assert states["ScoreBatches"]["Retry"][0]["ErrorEquals"] == ["States.ItemReaderFailed", "States.ResultWriterFailed"]
    assert states["Failed"]["Error"] == "BatchScoringFailed"


def test_every_state_is_reachable_and_failures_never_reach_the_success_notice() -> None:
    definition = load()
    states = definition["States"]
    for name, state in states.items():
        assert set(transitions(state)) <= set(states), name
    assert reachable(states, definition["StartAt"]) == set(states)
    assert reachable(states, "NotifyFailure") == {"NotifyFailure", "Failed"}
    assert reachable(states, "ScoreWholeFile") == {"ScoreWholeFile", "NotifyDone", "Done", "NotifyFailure", "Failed"}


def test_the_sns_notice_carries_the_functions_counts_not_rows() -> None:
    done = load()["States"]["NotifyDone"]["Parameters"]
    assert done["Message.$"] == "States.JsonToString($.result)"
    assert done["TopicArn"] == BATCH_SUBSTITUTIONS["BatchNotificationTopicArn"]


# --- executions in moto --------------------------------------------------------------------------------------------
def moto_copy() -> dict[str, Any]:
    """The definition with the two changes moto needs (see the module docstring), and nothing else."""
    definition = copy.deepcopy(load())
    fanout = definition["States"]["ScoreBatches"]
    del fanout["ItemBatcher"]
    fanout["ItemProcessor"]["ProcessorConfig"]["ExecutionType"] = "STANDARD"
    return definition


@dataclass
class Stack:
    sfn: Any
    s3: Any
    sqs: Any
    queue_url: str
    machine_arn: str
    arns: dict[str, str]


@dataclass
class Run:
    status: str
    error: str | None
    output: dict[str, Any] | None
    entered: list[str]
    lambda_inputs: list[tuple[str, dict[str, Any]]]
    messages: list[dict[str, Any]]


@pytest.fixture
def stack() -> Iterator[Stack]:
    with mock_aws(config=MOTO_CONFIG):
        functions = {k: v for k, v in BATCH_SUBSTITUTIONS.items() if k.endswith("FunctionArn")}
        role, created = echo_functions("readmit-batch", functions)
        arns = {**BATCH_SUBSTITUTIONS, **created}
        sqs = boto3.client("sqs", region_name=REGION)
        arns["BatchNotificationTopicArn"], queue_url = topic_inbox(sqs, "readmit-batch")
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=DATA)
        assert arns == BATCH_SUBSTITUTIONS  # moto names them exactly as the realistic substitutions do
        sfn = boto3.client("stepfunctions", region_name=REGION)
        machine_arn = sfn.create_state_machine(
            name="readmit-batch-score-dev", definition=json.dumps(moto_copy()), roleArn=role
        )["stateMachineArn"]
        yield Stack(sfn, s3, sqs, queue_url, machine_arn, arns)


def execute(stack: Stack, name: str, size: int) -> Run:
    event = json.loads(EVENT.read_text())
    event["detail"]["object"]["size"] = size
    arn = stack.sfn.start_execution(stateMachineArn=stack.machine_arn, name=name, input=json.dumps(event))[
        "executionArn"
    ]
    described, events = finished(stack.sfn, arn)
    functions = {v: k for k, v in stack.arns.items() if k.endswith("FunctionArn")}
    inputs = [
        (
            functions[e["lambdaFunctionScheduledEventDetails"]["resource"]],
            json.loads(e["lambdaFunctionScheduledEventDetails"]["input"]),
        )
        for e in events
        if e["type"] == "LambdaFunctionScheduled"
    ]
    return Run(
        status=described["status"],
        error=described.get("error"),
        output=json.loads(described["output"]) if "output" in described else None,
        entered=[e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e],
        lambda_inputs=inputs,
        messages=announced(stack.sqs, stack.queue_url),
    )


NOTICE = {
    "scored_file": f"s3://{DATA}/scored/2026-11-27/discharges.csv",
    "summary_file": f"s3://{DATA}/scored/2026-11-27/discharges.summary.json",
    "run_id": "nightly-1",
    "rows": 3,
    "scored": 2,
    "excluded": 0,
    "invalid": 1,
}


@pytest.mark.slow
def test_a_small_upload_is_scored_by_one_lambda_call_and_announced(stack: Stack) -> None:
    queue_lambda_results(NOTICE)

    run = execute(stack, "nightly-1", size=1571)

    assert run.status == "SUCCEEDED"
    assert run.entered == ["Job", "BySize", "ScoreWholeFile", "NotifyDone", "Done"]
    [(function, payload)] = run.lambda_inputs
    assert function == "BatchScoreFunctionArn"
    assert batch_job.BatchJob.model_validate(payload).key == "incoming/2026-11-27/discharges.csv"
    assert payload["run_id"] == "nightly-1" and payload["settings"] == {
        "small_max_bytes": 5000000,
        "max_concurrency": 100,
    }
    [message] = run.messages
    assert message["Subject"] == "readmit batch scoring finished"
    assert json.loads(message["Message"]) == NOTICE


@pytest.mark.slow
def test_a_large_upload_is_prepared_fanned_out_over_the_prepared_rows_and_merged(stack: Stack) -> None:
    # GIVEN Prepare's result and the prepared file it names (three rows) in S3
    prepared = {"items_key": "work/nightly-2/items.csv", "rows": 3, "columns": ["encounter_id"], "model_version": "v1"}
    stack.s3.put_object(Bucket=DATA, Key=prepared["items_key"], Body=b"line,hist,row\n2,,900001\n3,,900002\n4,,x\n")
    part = {"part": "results/nightly-2/parts/0000000002.csv", "rows": 1, "scored": 1, "excluded": 0, "invalid": 0}
    # Prepare, one scoring call per prepared row (no ItemBatcher in moto), Merge: in that order
    queue_lambda_results(prepared, part, part, part, NOTICE | {"run_id": "nightly-2"})

    run = execute(stack, "nightly-2", size=50_000_000)

    assert run.status == "SUCCEEDED", run.entered
    assert run.entered == ["Job", "BySize", "Prepare", "ScoreBatches", "Merge", "NotifyDone", "Done"]
    [(prepare_fn, prepare_in), (merge_fn, merge_in)] = run.lambda_inputs  # the batches run as child executions
    assert (prepare_fn, merge_fn) == ("BatchPrepareFunctionArn", "BatchMergeFunctionArn")
    assert prepare_in["run_id"] == "nightly-2"
    # Merge got Prepare's result and the job, so exactly three batch calls consumed the three queued parts
    assert batch_job.MergeInput.model_validate(merge_in).prepared.rows == 3
    assert run.output is not None and run.output["result"]["run_id"] == "nightly-2"
    assert run.output["map"]["ResultWriterDetails"]["Key"].startswith("results/map-runs/")
    [message] = run.messages
    assert json.loads(message["Message"]) == NOTICE | {"run_id": "nightly-2"}


@pytest.mark.slow
def test_a_failed_prepare_step_is_announced_and_no_batch_or_merge_runs(stack: Stack) -> None:
    # A reply over Lambda's 6 MB limit is a function error in moto as in AWS, and not a retried transient one.
    queue_lambda_results({"items_key": "0" * 6_000_000})

    run = execute(stack, "nightly-3", size=50_000_000)

    assert (run.status, run.error) == ("FAILED", "BatchScoringFailed")
    assert run.entered == ["Job", "BySize", "Prepare", "NotifyFailure", "Failed"]
    [message] = run.messages
    assert message["Subject"] == "readmit batch scoring failed"
    assert json.loads(message["Message"])["Error"] == "Function.ResponseSizeTooLarge"


@pytest.mark.slow
def test_a_failed_whole_file_call_is_announced_with_its_error(stack: Stack) -> None:
    queue_lambda_results({"scored_file": "0" * 6_000_000})

    run = execute(stack, "nightly-4", size=10)

    assert (run.status, run.error) == ("FAILED", "BatchScoringFailed")
    assert run.entered == ["Job", "BySize", "ScoreWholeFile", "NotifyFailure", "Failed"]
    [message] = run.messages
    assert json.loads(message["Message"])["Error"] == "Function.ResponseSizeTooLarge"


# --- the template ----------------------------------------------------------------------------------------------------
def test_uploads_to_incoming_reach_the_state_machine_through_eventbridge_with_a_dead_letter_queue(
    template: dict[str, Any],
) -> None:
    resources = template["Resources"]
    bucket = resources["DataBucket"]["Properties"]
    assert bucket["NotificationConfiguration"]["EventBridgeConfiguration"] == {"EventBridgeEnabled": True}
    rule = resources["BatchScoreStateMachine"]["Properties"]["Events"]["IncomingFile"]
    assert rule["Type"] == "EventBridgeRule"
    pattern = rule["Properties"]["Pattern"]
    assert pattern["source"] == ["aws.s3"] and pattern["detail-type"] == ["Object Created"]
    assert pattern["detail"] == {
        "bucket": {"name": [{"Ref": "DataBucket"}]},
        "object": {"key": [{"prefix": "incoming/"}]},
    }
    assert rule["Properties"]["DeadLetterConfig"] == {"Arn": {"GetAtt": "BatchTriggerDeadLetterQueue.Arn"}}
    queue = resources["BatchTriggerDeadLetterQueue"]["Properties"]
    assert queue["KmsMasterKeyId"] == {"Ref": "BatchTriggerQueueKey"}
    key_policy = resources["BatchTriggerQueueKey"]["Properties"]["KeyPolicy"]["Statement"]
    assert [s["Principal"] for s in key_policy if s["Sid"] == "EventBridgeDeadLetters"] == [
        {"Service": "events.amazonaws.com"}
    ]
    # intermediate copies expire; scored files stay
    rules = {r["Prefix"]: r for r in bucket["LifecycleConfiguration"]["Rules"] if r["Prefix"] != "ingest-reports/"}
    assert set(rules) == {"work/", "results/"} and all(r["ExpirationInDays"] == 7 for r in rules.values())


def test_scored_files_can_only_be_written_with_the_data_key(template: dict[str, Any]) -> None:
    statements = template["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    scored = [s for s in statements if s.get("Resource") == {"Sub": "${DataBucket.Arn}/scored/*"}]
    assert {s["Effect"] for s in scored} == {"Deny"} and len(scored) == 2
    conditions = [s["Condition"]["StringNotEquals"] for s in scored]
    assert {"s3:x-amz-server-side-encryption": "aws:kms"} in conditions
    assert {"s3:x-amz-server-side-encryption-aws-kms-key-id": {"GetAtt": "DataKey.Arn"}} in conditions
    for name in ("BatchScoreFunction", "BatchMergeFunction"):
        env = template["Resources"][name]["Properties"]["Environment"]["Variables"]
        assert env[batch_job.ENV_KMS_KEY] == {"GetAtt": "DataKey.Arn"}, name


def _s3_statements(function: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        s
        for p in function["Properties"]["Policies"]
        if "Statement" in p
        for s in p["Statement"]
        if any(a.startswith("s3:") for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]))
    ]


@pytest.mark.parametrize(
    ("function", "reads", "writes"),
    [
        ("BatchScoreFunction", {"incoming/*"}, {"scored/*"}),
        ("BatchScoreMapFunction", set(), {"results/*"}),
        ("BatchPrepareFunction", {"incoming/*"}, {"work/*"}),
        ("BatchMergeFunction", {"results/*"}, {"scored/*"}),
    ],
)
def test_each_batch_function_reads_and_writes_only_its_prefixes_of_the_data_bucket(
    template: dict[str, Any], function: str, reads: set[str], writes: set[str]
) -> None:
    statements = _s3_statements(template["Resources"][function])

    def prefixes(action: str) -> set[str]:
        found = set()
        for s in statements:
            actions = [s["Action"]] if isinstance(s["Action"], str) else s["Action"]
            resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
            if action in actions:
                data = (r["Sub"] for r in resources if r["Sub"].startswith("${DataBucket.Arn}/"))
                found |= {sub.removeprefix("${DataBucket.Arn}/") for sub in data}
        return found

    assert prefixes("s3:GetObject") == reads
    assert prefixes("s3:PutObject") == writes
    listing = [s for s in statements if s["Action"] == "s3:ListBucket"]
    assert [s["Condition"]["StringLike"]["s3:prefix"] for s in listing] == sorted(reads)
    assert all(s["Effect"] == "Allow" for s in statements)


def test_failed_runs_and_lost_triggers_raise_alarms_and_scoring_concurrency_is_the_maps(
    template: dict[str, Any],
) -> None:
    resources = template["Resources"]
    failed = resources["BatchScoringFailedAlarm"]["Properties"]
    assert (failed["Namespace"], failed["MetricName"]) == ("AWS/States", "ExecutionsFailed")
    assert failed["Dimensions"] == [{"Name": "StateMachineArn", "Value": {"Ref": "BatchScoreStateMachine"}}]
    dlq = resources["BatchTriggerDeadLetterAlarm"]["Properties"]
    assert dlq["Dimensions"][0]["Value"] == {"GetAtt": "BatchTriggerDeadLetterQueue.QueueName"}
    score = resources["BatchScoreMapFunction"]["Properties"]
    assert score["ReservedConcurrentExecutions"] == {"Ref": "BatchMaxConcurrency"}
    substitutions = resources["BatchScoreStateMachine"]["Properties"]["DefinitionSubstitutions"]
    assert substitutions["BatchMaxConcurrency"] == {"Ref": "BatchMaxConcurrency"}


def test_both_scoring_functions_run_the_same_code_and_the_state_machine_may_invoke_every_function(
    template: dict[str, Any],
) -> None:
    resources = template["Resources"]
    whole, batch = (resources[n]["Properties"] for n in ("BatchScoreFunction", "BatchScoreMapFunction"))
    assert (whole["CodeUri"], whole["Handler"]) == (batch["CodeUri"], batch["Handler"])
    props = resources["BatchScoreStateMachine"]["Properties"]
    invokable = {p["LambdaInvokePolicy"]["FunctionName"]["Ref"] for p in props["Policies"] if "LambdaInvokePolicy" in p}
    substitutions = props["DefinitionSubstitutions"]
    # each through its canary-deployed alias (AutoPublishAlias), so Step Functions shifts with the API
    assert all(
        v == {"Ref": f"{v['Ref'].split('.')[0]}.Alias"} for k, v in substitutions.items() if k.endswith("FunctionArn")
    )
    called = {v["Ref"].split(".")[0] for k, v in substitutions.items() if k.endswith("FunctionArn")}
    assert called == invokable == {f"Batch{step}Function" for step in ("Score", "ScoreMap", "Prepare", "Merge")}
