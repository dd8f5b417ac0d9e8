"""`readmit smoke --stack NAME` against a stack created in moto (CloudFormation outputs naming a moto S3 bucket, KMS
key, state machine, API key, and Cognito user pool and app clients) and the real local API server over HTTP
(`readmit serve --auth dev`, a trained test model), with a local OAuth 2.0 token endpoint that answers as Cognito's
does for the moto app client."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from chalicelib.batch import job as batch_job
from chalicelib.batch.rows import RowValidator, from_items, prepare
from chalicelib.cli import smoke
from chalicelib.cli.main import main as cli_main
from chalicelib.core.audit import open_prediction_log
from chalicelib.registry.registry import Registry
from chalicelib.serving import auth
from tests.test_server_e2e import Server, example, free_port, start_server

pytestmark = pytest.mark.slow  # starts API servers over a trained model (about 40 s of fixtures)

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
DEV_SECRET = "smoke-dev-auth-secret-long-enough-for-hs256"  # `readmit serve --auth dev`'s signing key (>= 32 chars)
# where a stack's TokenUrl points when the test's http is a fake that never reaches it (a Cognito prefix domain)
COGNITO_TOKEN_URL = "https://readmit-dev-123456789012.auth.us-east-1.amazoncognito.com/oauth2/token"


# ---- the token endpoint --------------------------------------------------------------------------------------------
class TokenEndpoint:
    """Cognito's /oauth2/token for client credentials, as documented
    (https://docs.aws.amazon.com/cognito/latest/developerguide/token-endpoint.html): a form-encoded POST, the client
    authenticated by ``Authorization: Basic Base64Encode(client_id:client_secret)``, ``grant_type=client_credentials``
    and scopes the app client allows; the answer is JSON ``access_token``, ``expires_in``, ``token_type`` "Bearer",
    and a refusal is HTTP 400 with ``{"error": "invalid_client" | "invalid_scope" | ...}``. The access token is a
    dev token (`readmit serve --auth dev` verifies it) with the granted scopes and the client id as its subject, as
    Cognito's client-credentials tokens have."""

    def __init__(self) -> None:
        self.clients: dict[str, tuple[str, frozenset[str]]] = {}  # client id -> (secret, allowed scopes)
        self.issued: list[str] = []
        self.mint: Callable[[str, tuple[str, ...]], str] = self.dev_token
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                status, answer = endpoint.answer(self.path, dict(self.headers), self.rfile.read(length))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.clients, self.issued, self.mint = {}, [], self.dev_token

    @staticmethod
    def dev_token(client_id: str, scopes: tuple[str, ...]) -> str:
        return auth.DevAuth(DEV_SECRET).issue(client_id, scopes)

    def register(self, client_id: str, secret: str, scopes: list[str]) -> None:
        self.clients[client_id] = (secret, frozenset(scopes))

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        headers = {k.lower(): v for k, v in headers.items()}
        if path != "/oauth2/token" or headers.get("content-type") != "application/x-www-form-urlencoded":
            return 400, {"error": "invalid_request"}
        scheme, _, encoded = headers.get("authorization", "").partition(" ")
        try:
            client_id, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            return 400, {"error": "invalid_client"}
        known = self.clients.get(client_id)
        if scheme != "Basic" or known is None or known[0] != secret:
            return 400, {"error": "invalid_client"}
        form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        requested = (form.get("scope") or " ".join(known[1])).split()
        if not requested or not set(requested) <= known[1]:
            return 400, {"error": "invalid_scope"}
        prefix = f"{auth.RESOURCE_SERVER}/"
        token = self.mint(client_id, tuple(s.removeprefix(prefix) for s in requested))
        self.issued.append(token)
        return 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def token_server() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    yield endpoint
    endpoint.close()


@pytest.fixture
def tokens(token_server: TokenEndpoint) -> TokenEndpoint:
    """The token endpoint, knowing no client yet and minting tokens the dev server accepts."""
    token_server.reset()
    return token_server


# ---- the stack -----------------------------------------------------------------------------------------------------
def stack_template(api_url: str, api_key_id: str, state_machine_arn: str, cognito: dict[str, str]) -> str:
    """The real template's Outputs the smoke test reads, over real (moto) resources. The API key, the state
    machine and the Cognito user pool are made through their own APIs (moto's CloudFormation has no API key, and
    its state machines are not the ones moto's interpreter runs); ``cognito`` holds the user pool's outputs."""
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
                **{name: {"Value": value} for name, value in cognito.items()},
            },
        }
    )


def user_pool(token_url: str) -> tuple[dict[str, str], str]:
    """Inside mock_aws: template.yaml's Cognito block (UserPool, ApiResourceServer, ClinicianClient, ServiceClient)
    through cognito-idp's own API; its five outputs, and the ServiceClient's secret as Cognito generated it."""
    cognito = boto3.client("cognito-idp", region_name=REGION)
    pool = cognito.create_user_pool(PoolName="readmit-dev")["UserPool"]["Id"]
    scopes = [{"ScopeName": s, "ScopeDescription": s} for s in auth.SCOPES]
    cognito.create_resource_server(UserPoolId=pool, Identifier=auth.RESOURCE_SERVER, Name="readmit API", Scopes=scopes)
    page = cognito.create_user_pool_client(
        UserPoolId=pool,
        ClientName="readmit-clinician-page",
        GenerateSecret=False,
        AllowedOAuthFlowsUserPoolClient=True,
        AllowedOAuthFlows=["code"],
        AllowedOAuthScopes=["openid", "readmit/predict"],
        CallbackURLs=["https://abc123.execute-api.us-east-1.amazonaws.com/dev/"],
    )["UserPoolClient"]
    service = cognito.create_user_pool_client(
        UserPoolId=pool,
        ClientName="readmit-service",
        GenerateSecret=True,
        AllowedOAuthFlowsUserPoolClient=True,
        AllowedOAuthFlows=["client_credentials"],
        AllowedOAuthScopes=["readmit/predict", "readmit/admin"],
    )["UserPoolClient"]
    domain = token_url.removesuffix("/oauth2/token")
    outputs = {
        "UserPoolId": pool,
        "AuthDomain": domain,
        "TokenUrl": token_url,
        "ClinicianClientId": page["ClientId"],
        "ServiceClientId": service["ClientId"],
    }
    return outputs, service["ClientSecret"]


@dataclass
class Stack:
    aws: smoke.AwsClients
    outputs: dict[str, str]
    client_secret: str | None = None

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


def deploy(
    api_url: str,
    definition: dict[str, Any] = STILL_RUNNING,
    training_data: bool = True,
    *,
    tokens: TokenEndpoint | None = None,
    cognito: bool = True,
    without: tuple[str, ...] = (),
) -> Stack:
    """Inside mock_aws: the API key, the user pool (unless ``cognito`` is False: a stack from before issue #16),
    then the stack; the training data uploaded as the README says. With ``tokens``, the stack's TokenUrl is that
    endpoint and it knows the ServiceClient's id and secret; without, TokenUrl is a Cognito domain nobody calls.
    ``without`` leaves those Cognito outputs out (a template that lost one)."""
    session = boto3.Session(region_name=REGION)
    key = session.client("apigateway").create_api_key(name="readmit-dev", enabled=True, value=KEY_VALUE)
    machine = session.client("stepfunctions").create_state_machine(
        name="readmit-retrain-dev", definition=json.dumps(definition), roleArn=ROLE
    )
    pool, secret = user_pool(tokens.url if tokens else COGNITO_TOKEN_URL) if cognito else ({}, None)
    if tokens and secret:
        tokens.register(pool["ServiceClientId"], secret, ["readmit/predict", "readmit/admin"])
    cfn = session.client("cloudformation")
    pool = {name: value for name, value in pool.items() if name not in without}
    template = stack_template(api_url, key["id"], machine["stateMachineArn"], pool)
    cfn.create_stack(StackName=STACK, TemplateBody=template)
    described = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}
    aws = smoke.AwsClients.create(REGION)
    if training_data:
        aws.s3.put_object(Bucket=outputs["DataBucketName"], Key=smoke.TRAINING_DATA_KEY, Body=b"encounter_id\n")
    return Stack(aws, outputs, secret)


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


def serve_with_dev_auth(tmp: Path) -> Server:
    """`readmit serve --auth dev` verifying tokens signed with DEV_SECRET (the token endpoint's): /predict answers
    only with a token, as behind the stack's Cognito authorizer."""
    with pytest.MonkeyPatch.context() as mp:  # start_server passes os.environ to the server
        mp.setenv(auth.ENV_DEV_SECRET, DEV_SECRET)
        return start_server(tmp, tmp / "registry", 0.2, "--auth", "dev")


@pytest.fixture(scope="module")
def api(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`readmit serve --auth dev` on a free port with the small real model as the registry's champion."""
    tmp = tmp_path_factory.mktemp("smoke-api")
    registry = Registry.open(tmp / "registry")
    registry.promote(registry.register(small_bundle), "smoke test")
    server = serve_with_dev_auth(tmp)
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)


@pytest.fixture(scope="module")
def api_without_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A first deploy: the API runs, the registry has no champion yet."""
    tmp = tmp_path_factory.mktemp("smoke-empty")
    server = serve_with_dev_auth(tmp)
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


def assert_nothing_secret(text: str, stack: Stack, tokens: TokenEndpoint | None = None) -> None:
    """Neither the API key's value, the app client's secret (raw or in its Basic form) nor any access token."""
    assert KEY_VALUE not in text
    if stack.client_secret:
        assert stack.client_secret not in text
        basic = base64.b64encode(f"{stack.outputs['ServiceClientId']}:{stack.client_secret}".encode()).decode()
        assert basic not in text
    for token in tokens.issued if tokens else []:
        assert token not in text and token.split(".")[2] not in text  # nor its signature alone


# ---- the all-pass path ---------------------------------------------------------------------------------------------
def test_a_working_stack_passes_every_check_and_the_key_goes_only_to_predict(
    api: Server, tokens: TokenEndpoint
) -> None:
    with mock_aws():
        stack = deploy(api.url, tokens=tokens)
        http = Recording()

        report = smoke.run(smoke.SmokeOptions(stack=STACK), stack.aws, http=http)

        # THEN every service answered; with no --wait, the two runs are started and left to run
        assert statuses(report) == {
            "stack": "PASS",
            "api-key": "PASS",
            "token": "PASS",
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
        client_id = stack.outputs["ServiceClientId"]
        assert checks["token"].detail == (
            f"readmit/predict for client {client_id}, expires in 3600 s (token and secret not shown)"
        )

        # the token request: the ServiceClient's id and the secret Cognito holds for it, in the documented form
        token_request, health, predict = http.sent
        assert (token_request.method, token_request.url) == ("POST", tokens.url)
        assert token_request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        basic = base64.b64encode(f"{client_id}:{stack.client_secret}".encode()).decode()
        assert token_request.headers["Authorization"] == f"Basic {basic}"
        assert parse_qs((token_request.body or b"").decode()) == {
            "grant_type": ["client_credentials"],
            "scope": ["readmit/predict"],
        }
        assert "x-api-key" not in {h.lower() for h in token_request.headers}  # the key never goes to Cognito

        # /health went without the key or token, /predict with both (X-API-Key, Bearer) and the API's example
        assert (health.method, health.url) == ("GET", f"{api.url}/health")
        assert not {"x-api-key", "authorization"} & {h.lower() for h in health.headers}
        assert (predict.method, predict.url, predict.headers["x-api-key"]) == ("POST", f"{api.url}/predict", KEY_VALUE)
        assert predict.headers["Authorization"] == f"Bearer {tokens.issued[-1]}"
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

        # AND neither the table nor the JSON shows the key's value, the client's secret or a token
        for as_json in (False, True):
            text = printed(stack, as_json)
            assert STACK in text and "PASS" in text
            assert_nothing_secret(text, stack, tokens)
        assert_nothing_secret(report.model_dump_json(), stack, tokens)


def test_the_command_prints_a_table_and_json_with_the_same_checks(api: Server, tokens: TokenEndpoint) -> None:
    with mock_aws():
        stack = deploy(api.url, tokens=tokens)
        out = io.StringIO()
        with redirect_stdout(out), pytest.MonkeyPatch.context() as mp:
            mp.setattr(smoke.AwsClients, "create", classmethod(lambda cls, region=None: stack.aws))
            code = cli_main(["smoke", "--stack", STACK, "--region", REGION, "--json", "--no-batch"])
        as_json = json.loads(out.getvalue())
        assert code == 0 and as_json["exit_code"] == 0
        assert [(c["name"], c["status"]) for c in as_json["checks"]][:5] == [
            ("stack", "PASS"),
            ("api-key", "PASS"),
            ("token", "PASS"),
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
        assert any(line.startswith("token") and " PASS " in line for line in lines)
        assert lines[-1] == f"{STACK}: nothing failed, 4 skipped"
        assert_nothing_secret(out.getvalue() + table.getvalue(), stack, tokens)
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
    api: Server, tokens: TokenEndpoint, small_bundle: Path, tmp_path: Path
) -> None:
    with mock_aws():  # executions stay RUNNING (moto does not run them without execute_state_machine)
        stack = deploy(api.url, tokens=tokens)
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
    api: Server, tokens: TokenEndpoint, definition: dict[str, Any], status: str, detail: str
) -> None:
    with mock_aws(config=MOTO_RUNS):
        stack = deploy(api.url, definition, tokens=tokens)
        options = smoke.SmokeOptions(stack=STACK, batch=False, wait_seconds=30, poll_seconds=0.05)

        report = smoke.run(options, stack.aws)  # the real clock: moto runs the execution in a thread

        check = by_name(report)["retrain-result"]
        assert (check.status, check.detail) == (status, detail)  # the error's name, never its cause
        assert report.exit_code == (0 if status == "PASS" else 1)


def test_a_list_that_is_never_scored_fails_after_the_wait(api: Server, tokens: TokenEndpoint) -> None:
    with mock_aws():
        stack = deploy(api.url, tokens=tokens)
        clock = Clock()

        options = smoke.SmokeOptions(stack=STACK, retrain=False, wait_seconds=60)
        report = smoke.run(options, stack.aws, clock=clock, sleep=clock.sleep)

        check = by_name(report)["batch-result"]
        assert check.status == "FAIL" and "after 60 s" in check.detail
        assert report.exit_code == 1


def test_a_scored_list_with_missing_rows_fails(api: Server, tokens: TokenEndpoint) -> None:
    with mock_aws():
        stack = deploy(api.url, tokens=tokens)

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


# ---- signing in -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("allowed", "endpoint_secret", "detail"),
    [
        (  # the endpoint no longer accepts the secret Cognito gave (say, rotated in between)
            ["readmit/predict"],
            "a-secret-the-endpoint-holds-instead-0123456789",
            "HTTP 400: invalid_client (the ServiceClient's id and secret were refused)",
        ),
        (  # the app client may not ask for readmit/predict
            ["readmit/admin"],
            None,
            "HTTP 400: invalid_scope (the app client may not ask for readmit/predict (its AllowedOAuthScopes))",
        ),
    ],
)
def test_a_refused_token_request_fails_token_and_skips_predict(
    api: Server, tokens: TokenEndpoint, allowed: list[str], endpoint_secret: str | None, detail: str
) -> None:
    with mock_aws():
        stack = deploy(api.url, tokens=tokens)
        client_id = stack.outputs["ServiceClientId"]
        tokens.register(client_id, endpoint_secret or stack.client_secret or "", allowed)
        http = Recording()

        report = smoke.run(smoke.SmokeOptions(stack=STACK, retrain=False, batch=False), stack.aws, http=http)

        checks = by_name(report)
        assert (checks["token"].status, checks["token"].detail) == ("FAIL", detail)
        assert (checks["predict"].status, checks["predict"].detail) == (
            "SKIP",
            "no access token to call it with (see token)",
        )
        assert [sent.url for sent in http.sent] == [tokens.url, f"{api.url}/health"]  # /predict was not called
        assert report.exit_code == 1 and tokens.issued == []
        for as_json in (False, True):
            assert_nothing_secret(printed(stack, as_json), stack, tokens)


def test_a_service_client_cognito_does_not_know_fails_token_with_its_error(api: Server, tokens: TokenEndpoint) -> None:
    with mock_aws():
        stack = deploy(api.url, tokens=tokens)
        client_id, pool = stack.outputs["ServiceClientId"], stack.outputs["UserPoolId"]
        stack.aws.cognito.delete_user_pool_client(UserPoolId=pool, ClientId=client_id)  # deleted by hand

        report = smoke.run(smoke.SmokeOptions(stack=STACK, retrain=False, batch=False), stack.aws)

        checks = by_name(report)
        assert checks["token"].status == "FAIL"
        assert checks["token"].detail.startswith(f"DescribeUserPoolClient {client_id}: ResourceNotFoundException: ")
        assert checks["predict"].status == "SKIP" and report.exit_code == 1


def test_a_stack_from_before_tokens_skips_token_and_predict_gets_the_token_hint(api: Server) -> None:
    with mock_aws():
        stack = deploy(api.url, cognito=False)
        http = Recording()

        report = smoke.run(smoke.SmokeOptions(stack=STACK, retrain=False, batch=False), stack.aws, http=http)

        checks = by_name(report)
        assert (checks["token"].status, checks["token"].detail) == (
            "SKIP",
            "the stack has no UserPoolId, TokenUrl, ServiceClientId outputs (deployed before the API required tokens)",
        )
        # /predict was still tried, with the key only; the dev-auth server wants a token
        (predict,) = [sent for sent in http.sent if sent.url.endswith("/predict")]
        assert predict.headers["x-api-key"] == KEY_VALUE and "Authorization" not in predict.headers
        assert (checks["predict"].status, checks["predict"].detail) == (
            "FAIL",
            "HTTP 401: unauthenticated (the API wants an access token: a bearer access token is required; the stack "
            "has no UserPoolId, TokenUrl, ServiceClientId outputs to get one)",
        )
        assert report.exit_code == 1


def test_a_stack_missing_one_cognito_output_fails_token(api: Server, tokens: TokenEndpoint) -> None:
    with mock_aws():
        stack = deploy(api.url, tokens=tokens, without=("TokenUrl",))

        report = smoke.run(smoke.SmokeOptions(stack=STACK, retrain=False, batch=False), stack.aws)

        checks = by_name(report)
        assert (checks["token"].status, checks["token"].detail) == ("FAIL", "the stack lacks TokenUrl")
        assert checks["predict"].status == "SKIP" and report.exit_code == 1


@pytest.mark.parametrize(
    ("mint", "detail"),
    [
        (  # signed with another key: the API cannot verify it
            lambda client_id, scopes: auth.DevAuth("another-secret-that-is-also-long-enough").issue(client_id, scopes),
            "HTTP 401: unauthenticated (the token was refused: the token is not valid (InvalidSignatureError))",
        ),
        (  # a valid token without readmit/predict
            lambda client_id, scopes: auth.DevAuth(DEV_SECRET).issue(client_id, (auth.ADMIN,)),
            "HTTP 403: forbidden (the token was refused: the token lacks the scope readmit/predict)",
        ),
    ],
)
def test_a_token_the_api_refuses_gets_the_token_hint_not_the_key_hint(
    api: Server, tokens: TokenEndpoint, mint: Callable[[str, tuple[str, ...]], str], detail: str
) -> None:
    with mock_aws():
        stack = deploy(api.url, tokens=tokens)
        tokens.mint = mint

        report = smoke.run(smoke.SmokeOptions(stack=STACK, retrain=False, batch=False), stack.aws)

        checks = by_name(report)
        assert checks["token"].status == "PASS"
        assert (checks["predict"].status, checks["predict"].detail) == ("FAIL", detail)
        assert_nothing_secret(report.model_dump_json(), stack, tokens)


def test_a_token_or_secret_echoed_back_is_masked() -> None:
    """Hostile echoes: the API's 401 quotes the token, and the token endpoint's answer carries no token_type but
    the secret in free text; neither reaches the report."""

    def http(method: str, url: str, *, headers: dict[str, str], body: bytes | None, timeout: float):
        if token := token_answer(url):
            return token
        if url.endswith("/health"):
            return smoke.HttpResponse(status=200, body=b'{"status": "ok", "ready": true, "model_version": "v"}')
        said = {"field": "Authorization", "message": f"refused {headers['Authorization']}, {headers['x-api-key']}"}
        echo = {"error": "unauthenticated", "details": [said]}
        return smoke.HttpResponse(status=401, body=json.dumps(echo).encode(), content_type="application/json")

    with mock_aws():
        stack = deploy("https://abc123.execute-api.us-east-1.amazonaws.com/dev")
        report = smoke.run(smoke.SmokeOptions(stack=STACK, retrain=False, batch=False), stack.aws, http=http)

    check = by_name(report)["predict"]
    assert check.detail == "HTTP 401: unauthenticated (the token was refused: refused Bearer ***, ***)"
    assert FAKE_TOKEN not in report.model_dump_json() and KEY_VALUE not in report.model_dump_json()

    def leaky(method: str, url: str, *, headers: dict[str, str], body: bytes | None, timeout: float):
        if url == COGNITO_TOKEN_URL:  # a 200 that is not the documented answer, quoting the credentials
            answer = {"access_token": FAKE_TOKEN, "error_description": headers["Authorization"]}
            return smoke.HttpResponse(status=200, body=json.dumps(answer).encode(), content_type="application/json")
        return http(method, url, headers=headers, body=body, timeout=timeout)

    with mock_aws():
        stack = deploy("https://abc123.execute-api.us-east-1.amazonaws.com/dev")
        report = smoke.run(smoke.SmokeOptions(stack=STACK, retrain=False, batch=False), stack.aws, http=leaky)

    checks = by_name(report)
    assert checks["token"].status == "FAIL" and checks["token"].detail.startswith("HTTP 200 but not a token answer (")
    assert "expires_in" in checks["token"].detail and "token_type" in checks["token"].detail
    assert checks["predict"].status == "SKIP"
    assert_nothing_secret(report.model_dump_json(), stack)
    assert FAKE_TOKEN not in report.model_dump_json()


# ---- failures --------------------------------------------------------------------------------------------------------
def test_an_api_that_is_down_fails_health_and_predict(tokens: TokenEndpoint) -> None:
    with mock_aws():
        stack = deploy(f"http://127.0.0.1:{free_port()}", tokens=tokens)  # nothing listens there

        report = smoke.run(smoke.SmokeOptions(stack=STACK, retrain=False, batch=False), stack.aws)

        checks = by_name(report)
        assert (checks["health"].status, checks["predict"].status) == ("FAIL", "FAIL")
        assert checks["predict"].detail.startswith("cannot reach http://127.0.0.1:")
        assert report.exit_code == 1


def test_a_first_deploy_without_a_champion_fails_health_and_predict_but_starts_the_retraining(
    api_without_model: Server, tokens: TokenEndpoint
) -> None:
    with mock_aws():
        stack = deploy(api_without_model.url, tokens=tokens)

        report = smoke.run(smoke.SmokeOptions(stack=STACK, batch=False), stack.aws)

        checks = by_name(report)
        assert checks["health"].status == "FAIL" and "no model loaded" in checks["health"].detail
        assert checks["predict"].status == "FAIL" and checks["predict"].detail.startswith("HTTP 503")
        assert checks["retrain-start"].status == "PASS" and len(stack.executions()) == 1
        assert report.exit_code == 1


FAKE_TOKEN = "header.payload.signature-of-a-fake-access-token"


def token_answer(url: str) -> smoke.HttpResponse | None:
    """A fake http's answer at the stack's (Cognito) TokenUrl: the documented success JSON."""
    if url != COGNITO_TOKEN_URL:
        return None
    answer = {"access_token": FAKE_TOKEN, "expires_in": 3600, "token_type": "Bearer"}
    return smoke.HttpResponse(status=200, body=json.dumps(answer).encode(), content_type="application/json")


def test_a_predict_answer_of_the_wrong_shape_fails() -> None:
    def http(method: str, url: str, *, headers: dict[str, str], body: bytes | None, timeout: float):
        if token := token_answer(url):
            return token
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
        if token := token_answer(url):
            return token
        if url.endswith("/health"):
            return smoke.HttpResponse(status=200, body=b'{"status": "ok", "ready": true, "model_version": "v"}')
        echo = {"message": f"Forbidden for key {headers['x-api-key']}"}  # a hostile echo: still masked
        return smoke.HttpResponse(status=403, body=json.dumps(echo).encode(), content_type="application/json")

    with mock_aws():
        stack = deploy("https://abc123.execute-api.us-east-1.amazonaws.com/dev")
        report = smoke.run(smoke.SmokeOptions(stack=STACK, retrain=False, batch=False), stack.aws, http=http)

    check = by_name(report)["predict"]
    assert check.status == "FAIL" and check.detail.startswith("HTTP 403: Forbidden for key ***")
    assert check.detail.endswith("(API Gateway rejected the key: is it in the stack's usage plan?)")
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
    # the app client's secret goes to TokenUrl: the same rule; absent (an older stack) is allowed
    base |= {"ApiUrl": "https://a.example/dev"}
    assert smoke.StackOutputs.model_validate(base | {"TokenUrl": COGNITO_TOKEN_URL}).token_url == COGNITO_TOKEN_URL
    assert smoke.StackOutputs.model_validate(base).missing_auth == ["UserPoolId", "TokenUrl", "ServiceClientId"]
    with pytest.raises(ValueError, match=r"(?s)TokenUrl.*https"):
        smoke.StackOutputs.model_validate(base | {"TokenUrl": "http://readmit.auth.example/oauth2/token"})
