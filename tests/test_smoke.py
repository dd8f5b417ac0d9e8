"""`readmit smoke --stack NAME` against a stack created in moto (CloudFormation outputs naming a moto S3 bucket, KMS
key, state machine and API key) and the real local API server over HTTP (`readmit serve`, a trained test model)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from chalicelib import batch_job, smoke
from chalicelib.audit import open_prediction_log
from chalicelib.batch_rows import RowValidator, from_items, prepare
from chalicelib.cli import main as cli_main
from chalicelib.registry import Registry
from tests.test_server_e2e import Server, example, free_port, start_server

REGION = "us-east-1"
STACK = "readmit-dev"
KEY_VALUE = "SmokeKeyValue-must-never-be-printed-0123456789"  # API Gateway key values are at least 20 characters
ROLE = "arn:aws:iam::123456789012:role/readmit-retrain"
MOTO_RUNS = {"stepfunctions": {"execute_state_machine": True}}  # moto's interpreter runs the executions
STILL_RUNNING = {  # never run: without execute_state_machine, moto leaves every execution RUNNING
    "StartAt": "Train",
    "States": {"Train": {"Type": "Wait", "Seconds": 3600, "End": True}},
}
PROMOTED = {  # ends as the retraining ends: Done (Succeed) with $.decision from Evaluate
    "StartAt": "Decide",
    "States": {
        "Decide": {
            "Type": "Pass",
            "Result": {"promote": True, "challenger_version": "20270101T000000Z-abc"},
            "ResultPath": "$.decision",
            "Next": "Done",
        },
        "Done": {"Type": "Succeed"},
    },
}
FAILED = {"StartAt": "Failed", "States": {"Failed": {"Type": "Fail", "Error": "RetrainingFailed", "Cause": "x"}}}


# ---- the stack -----------------------------------------------------------------------------------------------------
def stack_template(api_url: str, api_key_id: str, state_machine_arn: str) -> str:
    """The real template's Outputs the smoke test reads, over real (moto) resources. The API key and the state
    machine are made through their own APIs (moto's CloudFormation has no API key, and its state machines are not
    the ones moto's interpreter runs)."""
    return json.dumps(
        {
            "Resources": {
                "DataKey": {"Type": "AWS::KMS::Key", "Properties": {"KeyPolicy": {"Version": "2012-10-17"}}},
                "DataBucket": {"Type": "AWS::S3::Bucket"},
                "ModelBucket": {"Type": "AWS::S3::Bucket"},
            },
            "Outputs": {
                "ApiUrl": {"Value": api_url},
                "ApiKeyId": {"Value": api_key_id},
                "RetrainStateMachineArn": {"Value": state_machine_arn},
                "DataBucketName": {"Value": {"Ref": "DataBucket"}},
                "ModelBucketName": {"Value": {"Ref": "ModelBucket"}},
                "DataKeyArn": {"Value": {"Fn::GetAtt": ["DataKey", "Arn"]}},
                "BatchIncomingUri": {"Value": {"Fn::Sub": "s3://${DataBucket}/incoming/"}},
                "NotificationTopicArn": {"Value": "arn:aws:sns:us-east-1:123456789012:unused"},  # extra: ignored
            },
        }
    )


@dataclass
class Stack:
    aws: smoke.AwsClients
    outputs: dict[str, str]

    @property
    def data_bucket(self) -> str:
        return self.outputs["DataBucketName"]

    def executions(self) -> list[dict[str, Any]]:
        arn = self.outputs["RetrainStateMachineArn"]
        found = self.aws.stepfunctions.list_executions(stateMachineArn=arn)["executions"]
        return [self.aws.stepfunctions.describe_execution(executionArn=e["executionArn"]) for e in found]

    def keys(self, prefix: str) -> list[str]:
        listed = self.aws.s3.list_objects_v2(Bucket=self.data_bucket, Prefix=prefix).get("Contents", [])
        return [o["Key"] for o in listed]


def deploy(api_url: str, definition: dict[str, Any] = STILL_RUNNING, training_data: bool = True) -> Stack:
    """Inside mock_aws: the API key, then the stack; the training data uploaded as the README says."""
    session = boto3.Session(region_name=REGION)
    key = session.client("apigateway").create_api_key(name="readmit-dev", enabled=True, value=KEY_VALUE)
    machine = session.client("stepfunctions").create_state_machine(
        name="readmit-retrain-dev", definition=json.dumps(definition), roleArn=ROLE
    )
    cfn = session.client("cloudformation")
    cfn.create_stack(StackName=STACK, TemplateBody=stack_template(api_url, key["id"], machine["stateMachineArn"]))
    described = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}
    aws = smoke.AwsClients.create(REGION)
    if training_data:
        aws.s3.put_object(Bucket=outputs["DataBucketName"], Key=smoke.TRAINING_DATA_KEY, Body=b"encounter_id\n")
    return Stack(aws, outputs)


# ---- HTTP ----------------------------------------------------------------------------------------------------------
@dataclass
class Sent:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


class Recording:
    """The real urllib client, recording what was sent (to check where the key goes)."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    def __call__(self, method: str, url: str, *, headers: dict[str, str], body: bytes | None, timeout: float):
        self.sent.append(Sent(method, url, dict(headers), body))
        return smoke.urllib_http(method, url, headers=headers, body=body, timeout=timeout)


@pytest.fixture(scope="module")
def api(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`readmit serve` on a free port with the small real model as the registry's champion."""
    tmp = tmp_path_factory.mktemp("smoke-api")
    registry = Registry.open(tmp / "registry")
    registry.promote(registry.register(small_bundle), "smoke test")
    server = start_server(tmp, tmp / "registry")
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.fixture(scope="module")
def api_without_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A first deploy: the API runs, the registry has no champion yet."""
    tmp = tmp_path_factory.mktemp("smoke-empty")
    server = start_server(tmp, tmp / "registry")
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


def by_name(report: smoke.SmokeReport) -> dict[str, smoke.Check]:
    return {c.name: c for c in report.checks}


def statuses(report: smoke.SmokeReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def printed(stack: Stack, as_json: bool) -> str:
    """What the command prints for the stack (another run, starting nothing)."""
    out, err = io.StringIO(), io.StringIO()
    options = smoke.SmokeOptions(stack=STACK, retrain=False, batch=False)
    smoke.main(options, REGION, as_json, out=out, err=err, aws=stack.aws)
    return out.getvalue() + err.getvalue()


# ---- the all-pass path ---------------------------------------------------------------------------------------------
def test_a_working_stack_passes_every_check_and_the_key_goes_only_to_predict(api: Server) -> None:
    with mock_aws():
        stack = deploy(api.url)
        http = Recording()

        report = smoke.run(smoke.SmokeOptions(stack=STACK), stack.aws, http=http)

        # THEN every service answered; with no --wait, the two runs are started and left to run
        assert statuses(report) == {
            "stack": "PASS",
            "api-key": "PASS",
            "health": "PASS",
            "predict": "PASS",
            "retrain-start": "PASS",
            "retrain-result": "SKIP",
            "batch-upload": "PASS",
            "batch-result": "SKIP",
        }
        assert report.exit_code == 0
        checks = by_name(report)
        assert "tier " in checks["predict"].detail and "risk 0." in checks["predict"].detail

        # /health went without the key, /predict with it (X-API-Key) and the API's example encounter
        health, predict = http.sent
        assert (health.method, health.url) == ("GET", f"{api.url}/health")
        assert "x-api-key" not in {h.lower() for h in health.headers}
        assert (predict.method, predict.url, predict.headers["x-api-key"]) == ("POST", f"{api.url}/predict", KEY_VALUE)
        assert json.loads(predict.body or b"") == example()

        # one retraining started, with exactly the input `readmit retrain --remote` sends (no gate: the stack's)
        (execution,) = stack.executions()
        assert execution["executionArn"] in checks["retrain-start"].detail
        assert json.loads(execution["input"]) == {
            "trigger": "manual",
            "data_uri": f"s3://{stack.data_bucket}/training/diabetic_data.csv",
            "registry_uri": f"s3://{stack.outputs['ModelBucketName']}/registry",
        }
        assert execution["name"].startswith("smoke-")

        # one list under incoming/, SSE-KMS with the stack's DataKey, whose rows the batch job accepts
        (key,) = stack.keys("incoming/")
        assert key == f"incoming/{execution['name']}.csv" and key in checks["batch-upload"].detail
        head = stack.aws.s3.head_object(Bucket=stack.data_bucket, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", stack.outputs["DataKeyArn"])
        body = stack.aws.s3.get_object(Bucket=stack.data_bucket, Key=key)["Body"].read().decode()
        columns, items = prepare(lambda: io.StringIO(body, newline=""))
        rows = from_items(RowValidator(columns), list(items))
        assert len(rows) == smoke.SMOKE_ROWS and all(r.reason is None for r in rows)
        assert f"scored/{execution['name']}.csv" in checks["batch-result"].detail

        # AND neither the table nor the JSON shows the key's value
        for as_json in (False, True):
            text = printed(stack, as_json)
            assert KEY_VALUE not in text and STACK in text
        assert KEY_VALUE not in report.model_dump_json()


def test_the_command_prints_a_table_and_json_with_the_same_checks(api: Server) -> None:
    with mock_aws():
        stack = deploy(api.url)
        out = io.StringIO()
        with redirect_stdout(out), pytest.MonkeyPatch.context() as mp:
            mp.setattr(smoke.AwsClients, "create", classmethod(lambda cls, region=None: stack.aws))
            code = cli_main(["smoke", "--stack", STACK, "--region", REGION, "--json", "--no-batch"])
        as_json = json.loads(out.getvalue())
        assert code == 0 and as_json["exit_code"] == 0
        assert [(c["name"], c["status"]) for c in as_json["checks"]][:4] == [
            ("stack", "PASS"),
            ("api-key", "PASS"),
            ("health", "PASS"),
            ("predict", "PASS"),
        ]
        assert {c["name"]: c["status"] for c in as_json["checks"]}["batch-upload"] == "SKIP"
        assert stack.keys("incoming/") == []  # --no-batch uploads nothing

        table = io.StringIO()
        with redirect_stdout(table), pytest.MonkeyPatch.context() as mp:
            mp.setattr(smoke.AwsClients, "create", classmethod(lambda cls, region=None: stack.aws))
            cli_main(["smoke", "--stack", STACK, "--no-retrain", "--no-batch"])
        lines = table.getvalue().splitlines()
        assert lines[0].split() == ["check", "result", "detail"]
        assert any(line.startswith("predict") and " PASS " in line for line in lines)
        assert lines[-1] == f"{STACK}: nothing failed, 4 skipped"
        assert KEY_VALUE not in out.getvalue() + table.getvalue()
        assert len(stack.executions()) == 1  # the second run had --no-retrain


# ---- waiting -------------------------------------------------------------------------------------------------------
class Clock:
    """A fake clock whose sleep first runs what the cloud would have done meanwhile."""

    def __init__(self, meanwhile: Any = None) -> None:
        self.now, self.slept, self.meanwhile = 0.0, [], meanwhile

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if self.meanwhile and not self.slept:
            self.meanwhile()
        self.slept.append(seconds)
        self.now += seconds


def score_like_the_state_machine(stack: Stack, small_bundle: Path, log_dir: Path) -> None:
    """What BatchScoreFunction does for a small upload (batch_job.score on the job), on the uploaded list, with the
    small real model as the champion of the stack's registry."""
    registry_uri = f"s3://{stack.outputs['ModelBucketName']}/registry"
    registry = Registry.open(registry_uri, s3_client=stack.aws.s3)
    registry.promote(registry.register(small_bundle), "first model")
    settings = batch_job.BatchSettings(registry_uri=registry_uri, kms_key_id=stack.outputs["DataKeyArn"])
    jobs = batch_job.BatchJobs(settings, s3_client=stack.aws.s3, log=open_prediction_log(str(log_dir)))
    (key,) = stack.keys("incoming/")
    batch_job.score({"bucket": stack.data_bucket, "key": key, "run_id": "smoke-run"}, jobs)


def test_with_wait_the_scored_list_is_read_back_and_a_running_retraining_is_reported_as_still_running(
    api: Server, small_bundle: Path, tmp_path: Path
) -> None:
    with mock_aws():  # executions stay RUNNING (moto does not run them without execute_state_machine)
        stack = deploy(api.url)
        clock = Clock(lambda: score_like_the_state_machine(stack, small_bundle, tmp_path / "log"))
        options = smoke.SmokeOptions(stack=STACK, wait_seconds=120, poll_seconds=10)

        report = smoke.run(options, stack.aws, clock=clock, sleep=clock.sleep)

        checks = by_name(report)
        assert checks["batch-result"].status == "PASS", checks["batch-result"].detail
        assert f"{smoke.SMOKE_ROWS} of {smoke.SMOKE_ROWS} rows scored" in checks["batch-result"].detail
        assert checks["retrain-result"].status == "SKIP"
        assert checks["retrain-result"].detail.startswith("still RUNNING after 120 s")
        assert "aws stepfunctions describe-execution --execution-arn arn:aws:states:" in checks["retrain-result"].detail
        assert sum(clock.slept) == pytest.approx(120) and max(clock.slept) <= 10
        assert report.exit_code == 0


@pytest.mark.parametrize(
    ("definition", "status", "detail"),
    [
        (PROMOTED, "PASS", "SUCCEEDED: challenger 20270101T000000Z-abc promoted"),
        (
            FAILED,
            "FAIL",
            "FAILED (RetrainingFailed): see the failure notice or `aws stepfunctions get-execution-history`",
        ),
    ],
)
def test_with_wait_an_ended_retraining_says_how_it_ended(
    api: Server, definition: dict[str, Any], status: str, detail: str
) -> None:
    with mock_aws(config=MOTO_RUNS):
        stack = deploy(api.url, definition)
        options = smoke.SmokeOptions(stack=STACK, batch=False, wait_seconds=30, poll_seconds=0.05)

        report = smoke.run(options, stack.aws)  # the real clock: moto runs the execution in a thread

        check = by_name(report)["retrain-result"]
        assert (check.status, check.detail) == (status, detail)  # the error's name, never its cause
        assert report.exit_code == (0 if status == "PASS" else 1)


def test_a_list_that_is_never_scored_fails_after_the_wait(api: Server) -> None:
    with mock_aws():
        stack = deploy(api.url)
        clock = Clock()

        options = smoke.SmokeOptions(stack=STACK, retrain=False, wait_seconds=60)
        report = smoke.run(options, stack.aws, clock=clock, sleep=clock.sleep)

        check = by_name(report)["batch-result"]
        assert check.status == "FAIL" and "after 60 s" in check.detail
        assert report.exit_code == 1


def test_a_scored_list_with_missing_rows_fails(api: Server) -> None:
    with mock_aws():
        stack = deploy(api.url)

        def short_result() -> None:  # the batch job wrote a list and summary with one row fewer than uploaded
            (key,) = stack.keys("incoming/")
            scored, summary = smoke.scored_keys(key)
            s3, rows = stack.aws.s3, smoke.SMOKE_ROWS - 1
            s3.put_object(Bucket=stack.data_bucket, Key=scored, Body=("h\n" + "r\n" * rows).encode())
            body = json.dumps({"rows": rows, "scored": rows, "excluded": 0, "invalid": 0, "tiers": {}})
            s3.put_object(Bucket=stack.data_bucket, Key=summary, Body=body.encode())

        clock = Clock(short_result)
        options = smoke.SmokeOptions(stack=STACK, retrain=False, wait_seconds=60)
        report = smoke.run(options, stack.aws, clock=clock, sleep=clock.sleep)

        check = by_name(report)["batch-result"]
        assert check.status == "FAIL" and f"{smoke.SMOKE_ROWS} uploaded" in check.detail
        assert report.exit_code == 1


# ---- failures --------------------------------------------------------------------------------------------------------
def test_an_api_that_is_down_fails_health_and_predict() -> None:
    with mock_aws():
        stack = deploy(f"http://127.0.0.1:{free_port()}")  # nothing listens there

        report = smoke.run(smoke.SmokeOptions(stack=STACK, retrain=False, batch=False), stack.aws)

        checks = by_name(report)
        assert (checks["health"].status, checks["predict"].status) == ("FAIL", "FAIL")
        assert checks["predict"].detail.startswith("cannot reach http://127.0.0.1:")
        assert report.exit_code == 1


def test_a_first_deploy_without_a_champion_fails_health_and_predict_but_starts_the_retraining(
    api_without_model: Server,
) -> None:
    with mock_aws():
        stack = deploy(api_without_model.url)

        report = smoke.run(smoke.SmokeOptions(stack=STACK, batch=False), stack.aws)

        checks = by_name(report)
        assert checks["health"].status == "FAIL" and "no model loaded" in checks["health"].detail
        assert checks["predict"].status == "FAIL" and checks["predict"].detail.startswith("HTTP 503")
        assert checks["retrain-start"].status == "PASS" and len(stack.executions()) == 1
        assert report.exit_code == 1


def test_a_predict_answer_of_the_wrong_shape_fails() -> None:
    def http(method: str, url: str, *, headers: dict[str, str], body: bytes | None, timeout: float):
        answer: dict[str, Any] = {"risk": 1.4, "risk_tier": "very high", "threshold": 0.2, "model_version": "v"}
        answer |= {"history_encounters": 0, "request_id": "r"}
        if url.endswith("/health"):
            answer = {"status": "ok", "ready": True, "model_version": "v"}
        return smoke.HttpResponse(status=200, body=json.dumps(answer).encode(), content_type="application/json")

    with mock_aws():
        stack = deploy("https://abc123.execute-api.us-east-1.amazonaws.com/dev")
        report = smoke.run(smoke.SmokeOptions(stack=STACK, retrain=False, batch=False), stack.aws, http=http)

    check = by_name(report)["predict"]
    assert check.status == "FAIL" and "not a prediction" in check.detail
    assert "risk:" in check.detail and "risk_tier:" in check.detail


def test_a_gateway_refusal_names_the_status_and_never_echoes_the_key() -> None:
    def http(method: str, url: str, *, headers: dict[str, str], body: bytes | None, timeout: float):
        if url.endswith("/health"):
            return smoke.HttpResponse(status=200, body=b'{"status": "ok", "ready": true, "model_version": "v"}')
        echo = {"message": f"Forbidden for key {headers['x-api-key']}"}  # a hostile echo: still masked
        return smoke.HttpResponse(status=403, body=json.dumps(echo).encode(), content_type="application/json")

    with mock_aws():
        stack = deploy("https://abc123.execute-api.us-east-1.amazonaws.com/dev")
        report = smoke.run(smoke.SmokeOptions(stack=STACK, retrain=False, batch=False), stack.aws, http=http)

    check = by_name(report)["predict"]
    assert check.status == "FAIL" and check.detail.startswith("HTTP 403: Forbidden for key ***")
    assert KEY_VALUE not in report.model_dump_json()


def test_no_training_data_means_no_retraining_is_started() -> None:
    with mock_aws():
        stack = deploy(f"http://127.0.0.1:{free_port()}", training_data=False)

        report = smoke.run(smoke.SmokeOptions(stack=STACK, batch=False), stack.aws)

        check = by_name(report)["retrain-start"]
        assert check.status == "FAIL"
        assert check.detail == f"not started: upload s3://{stack.data_bucket}/training/diabetic_data.csv first"
        assert stack.executions() == []


def test_a_missing_stack_is_one_clear_line_and_exit_code_2() -> None:
    with mock_aws():
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli_main(["smoke", "--stack", "readmit-nope", "--region", REGION])

    assert code == 2
    assert out.getvalue().splitlines()[1:] == [
        f"stack  FAIL    no stack readmit-nope in {REGION}",
        "readmit-nope: 1 failed, 0 skipped",
    ]
    assert "Traceback" not in out.getvalue() + err.getvalue()


def test_access_denied_on_the_stack_is_a_fail_line_and_exit_code_2() -> None:
    aws = smoke.AwsClients.create(REGION)
    with Stubber(aws.cloudformation) as stub:  # the error as CloudFormation's query protocol returns it
        stub.add_client_error(
            "describe_stacks",
            service_error_code="AccessDenied",
            service_message="User: arn:aws:iam::123456789012:user/dev is not authorized to perform: "
            "cloudformation:DescribeStacks",
            http_status_code=403,
            expected_params={"StackName": STACK},
        )
        report = smoke.run(smoke.SmokeOptions(stack=STACK), aws)

    check = report.checks[0]
    assert (check.name, check.status) == ("stack", "FAIL")
    assert check.detail.startswith(f"cannot read stack {STACK}: AccessDenied: User: arn:aws:iam::")
    assert report.exit_code == 2


def test_no_credentials_and_no_region_are_one_line_each(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup either
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli_main(["smoke", "--stack", STACK, "--region", REGION])
    assert code == 2
    assert out.getvalue().splitlines()[1].split(None, 2)[:2] == ["stack", "FAIL"]
    assert "no AWS credentials found" in out.getvalue() and "Traceback" not in out.getvalue() + err.getvalue()

    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli_main(["smoke", "--stack", STACK])
    assert code == 2 and out.getvalue() == ""
    assert err.getvalue().count("\n") == 1 and "--region" in err.getvalue()


def test_the_stack_outputs_refuse_plain_http_to_another_host() -> None:
    base = {"ApiKeyId": "k", "RetrainStateMachineArn": "a", "DataBucketName": "d", "ModelBucketName": "m"}
    base |= {"DataKeyArn": "arn:aws:kms:us-east-1:123456789012:key/x", "BatchIncomingUri": "s3://d/incoming/"}
    assert (
        smoke.StackOutputs.model_validate(base | {"ApiUrl": "https://a.example/dev/"}).api_url
        == "https://a.example/dev"
    )
    assert smoke.StackOutputs.model_validate(base | {"ApiUrl": "http://127.0.0.1:8000"}).api_url
    with pytest.raises(ValueError, match="https"):
        smoke.StackOutputs.model_validate(base | {"ApiUrl": "http://a.example/dev"})
