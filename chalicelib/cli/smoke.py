"""`readmit smoke --stack NAME`: after a deploy, use what the stack offers once and say what works.

It reads the stack's outputs, gets an access token for the stack's machine client (Cognito client credentials),
calls ``GET /health`` (public) and ``POST /predict`` (with the token and the stack's API key) over HTTPS, starts one
retraining and drops one small synthetic list for batch scoring, then prints one line per check (PASS, FAIL or
SKIP). Retraining takes many minutes, so by default it only starts one; ``--wait`` polls both runs.

Nothing printed holds PHI (the encounter is the API's synthetic example), the API key's value, the app client's
secret or the access token. Every AWS call is botocore's (``botocore/data/<service>/<version>/service-2.json``), and
AWS errors become FAIL lines, never tracebacks.
The AWS clients, the HTTP call, the clock and ``sleep`` are injectable, so tests run it against moto and a real
local server.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TextIO
from urllib.parse import urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, field_validator

from chalicelib.batch.events import INCOMING, SCORED
from chalicelib.serving.auth import PREDICT, RESOURCE_SERVER

Status = Literal["PASS", "FAIL", "SKIP"]
STACK_READY = ("CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE")
TRAINING_DATA_KEY = "training/diabetic_data.csv"  # = the WeeklySchedule input's data_uri in template.yaml
HTTP_TIMEOUT = 30.0  # a REST API integration times out after 29 s by default
POLL_SECONDS = 10.0
SMOKE_ROWS = 3
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_STOPPED = ("FAILED", "TIMED_OUT", "ABORTED", "PENDING_REDRIVE")  # ExecutionStatus in stepfunctions' model
TOKEN_SCOPE = f"{RESOURCE_SERVER}/{PREDICT}"  # what /predict needs (template.yaml's CognitoAuthorizer scopes)
AUTH_OUTPUTS = ("UserPoolId", "TokenUrl", "ServiceClientId")  # the Cognito outputs the token check reads
# What the token endpoint's error codes (HTTP 400 {"error": ...}: RFC 6749 section 5.2, as the Amazon Cognito token
# endpoint answers, https://docs.aws.amazon.com/cognito/latest/developerguide/token-endpoint.html) mean for this client.
_TOKEN_HINTS = {
    "invalid_client": "the ServiceClient's id and secret were refused",
    "invalid_scope": f"the app client may not ask for {TOKEN_SCOPE} (its AllowedOAuthScopes)",
    "unauthorized_client": "the app client does not allow the client_credentials grant (its AllowedOAuthFlows)",
    "unsupported_grant_type": "the endpoint does not accept client_credentials",
    "invalid_request": "the endpoint found the request malformed",
}


# ---- models ------------------------------------------------------------------------------------------------------
class Check(BaseModel):
    name: str
    status: Status
    detail: str


class SmokeReport(BaseModel):
    stack: str
    region: str | None
    checks: list[Check]

    @computed_field  # type: ignore[prop-decorator]  # mypy refuses decorators over @property; pydantic's documented form
    @property
    def exit_code(self) -> int:
        """2 when the stack could not be used (so nothing else was tried), 1 when a check failed, else 0."""
        if self.checks and self.checks[0].name == "stack" and self.checks[0].status == "FAIL":
            return 2
        return 1 if any(c.status == "FAIL" for c in self.checks) else 0


class SmokeOptions(BaseModel):
    stack: str = Field(min_length=1)
    retrain: bool = True
    batch: bool = True
    wait_seconds: float = Field(default=0.0, ge=0)
    poll_seconds: float = Field(default=POLL_SECONDS, gt=0)


class StackOutputs(BaseModel):
    """The template.yaml Outputs the smoke test uses (DescribeStacks: Stacks[].Outputs[].OutputKey/OutputValue)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    api_url: str = Field(alias="ApiUrl")
    api_key_id: str = Field(alias="ApiKeyId")
    retrain_state_machine_arn: str = Field(alias="RetrainStateMachineArn")
    data_bucket: str = Field(alias="DataBucketName")
    model_bucket: str = Field(alias="ModelBucketName")
    batch_incoming_uri: str = Field(alias="BatchIncomingUri")
    data_key_arn: str = Field(alias="DataKeyArn")
    batch_state_machine_arn: str | None = Field(default=None, alias="BatchScoreStateMachineArn")
    # Cognito (issue #16): absent on a stack deployed before the API required tokens, so optional here
    user_pool_id: str | None = Field(default=None, alias="UserPoolId")
    token_url: str | None = Field(default=None, alias="TokenUrl")
    service_client_id: str | None = Field(default=None, alias="ServiceClientId")

    @field_validator("user_pool_id", "token_url", "service_client_id", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("api_url", "token_url")
    @classmethod
    def _https(cls, url: str | None) -> str | None:
        """The API key and the token go to the API URL, the app client's secret to the token URL: only over HTTPS,
        or plain HTTP to this machine (a local server)."""
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
            return url.rstrip("/")
        raise ValueError("must be an https:// URL")

    @property
    def missing_auth(self) -> list[str]:
        """The Cognito outputs this stack lacks (all three on a stack older than issue #16)."""
        values = (self.user_pool_id, self.token_url, self.service_client_id)
        return [name for name, value in zip(AUTH_OUTPUTS, values, strict=True) if value is None]

    @field_validator("batch_incoming_uri")
    @classmethod
    def _incoming(cls, uri: str) -> str:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not uri.startswith("s3://") or not bucket or prefix.rstrip("/") + "/" != INCOMING:
            raise ValueError(f"must be s3://<bucket>/{INCOMING}")
        return uri

    @property
    def batch_bucket(self) -> str:
        return self.batch_incoming_uri.removeprefix("s3://").partition("/")[0]


# ---- injectable edges --------------------------------------------------------------------------------------------
class HttpResponse(BaseModel):
    status: int
    body: bytes
    content_type: str = ""


class Unreachable(Exception):
    """No HTTP response at all (connection refused, DNS, TLS, timeout)."""


class Http(Protocol):
    def __call__(
        self, method: str, url: str, *, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> HttpResponse: ...


def urllib_http(
    method: str, url: str, *, headers: dict[str, str], body: bytes | None = None, timeout: float = HTTP_TIMEOUT
) -> HttpResponse:
    """One request with the standard library (no new dependency); an HTTP error status is a response, not an error."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return HttpResponse(status=resp.status, body=resp.read(), content_type=resp.headers.get_content_type())
    except urllib.error.HTTPError as err:
        return HttpResponse(status=err.code, body=err.read(), content_type=err.headers.get_content_type())
    except (urllib.error.URLError, OSError) as exc:
        raise Unreachable(str(getattr(exc, "reason", exc))) from None


@dataclass
class AwsClients:
    cloudformation: Any
    apigateway: Any
    stepfunctions: Any
    s3: Any
    cognito: Any  # cognito-idp
    region: str | None

    @classmethod
    def create(cls, region: str | None = None) -> AwsClients:
        """Clients of one session (raises botocore's NoRegionError when no region is configured or given)."""
        import boto3

        session = boto3.Session(region_name=region)
        make = session.client
        return cls(
            make("cloudformation"),
            make("apigateway"),
            make("stepfunctions"),
            make("s3"),
            make("cognito-idp"),
            session.region_name,
        )


def aws_error(exc: Exception) -> str:
    """One line for an AWS failure: the error code and message (ClientError), or botocore's own sentence."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code') or 'error'}: {error.get('Message') or 'no message'}"
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found (run `aws configure` or `aws sso login`, or set AWS_PROFILE)"
    return str(exc)


def _aws_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


# ---- the synthetic encounter -------------------------------------------------------------------------------------
def example_encounter() -> dict[str, Any]:
    """The API's documented example (also events/api_predict.json's body): synthetic ids, no PHI."""
    from chalicelib.serving.openapi import EXAMPLE

    return dict(EXAMPLE)


def smoke_csv(rows: int = SMOKE_ROWS) -> bytes:
    """A UCI-format list of ``rows`` copies of the example, with synthetic ids and a varied prior-stay count.

    Batch files need every UCI column but ``readmitted`` and ``patient_nbr`` (batch_rows.REQUIRED_COLUMNS); the
    example omits most drugs, which the API reads as "No", so they are written as "No" here too.
    """
    from chalicelib.data.schema import COLUMNS, MEDICATIONS, MISSING, TARGET

    example = example_encounter()
    columns = [c.name for c in COLUMNS if c.name != TARGET]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for i in range(rows):
        record = example | {
            "encounter_id": example["encounter_id"] + i,
            "patient_nbr": example["patient_nbr"] + i,
            "number_inpatient": i,
        }
        writer.writerow([record.get(c, "No" if c in MEDICATIONS else MISSING) for c in columns])
    return out.getvalue().encode()


# ---- checks ------------------------------------------------------------------------------------------------------
def read_stack(cloudformation: Any, stack: str, region: str | None) -> tuple[StackOutputs | None, Check]:
    """DescribeStacks: a missing stack is a ValidationError ("If the stack doesn't exist, a ValidationError is
    returned", https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_DescribeStacks.html)."""
    try:
        described = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except _aws_errors() as exc:
        if _error_code(exc) == "ValidationError" and "does not exist" in str(exc):
            return None, Check(name="stack", status="FAIL", detail=f"no stack {stack} in {region or 'this region'}")
        return None, Check(name="stack", status="FAIL", detail=f"cannot read stack {stack}: {aws_error(exc)}")
    status = described[0]["StackStatus"]
    if status not in STACK_READY:
        return None, Check(name="stack", status="FAIL", detail=f"{stack} is {status}: wait for it or read its events")
    values = {o["OutputKey"]: o.get("OutputValue", "") for o in described[0].get("Outputs", [])}
    try:
        outputs = StackOutputs.model_validate(values)
    except ValidationError as exc:
        where = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors(include_input=False, include_url=False))
        return None, Check(name="stack", status="FAIL", detail=f"{stack} ({status}) outputs unusable: {where}")
    return outputs, Check(name="stack", status="PASS", detail=f"{stack} {status} in {region or 'default region'}")


def read_api_key(apigateway: Any, key_id: str) -> tuple[str | None, Check]:
    """GetApiKey(apiKey, includeValue=True) returns the key's ``value`` and ``enabled`` (apigateway 2015-07-09)."""
    try:
        key = apigateway.get_api_key(apiKey=key_id, includeValue=True)
    except _aws_errors() as exc:
        return None, Check(name="api-key", status="FAIL", detail=f"GetApiKey {key_id}: {aws_error(exc)}")
    if not key.get("value"):
        return None, Check(name="api-key", status="FAIL", detail=f"key {key_id} came back without its value")
    if not key.get("enabled", False):
        return key["value"], Check(name="api-key", status="FAIL", detail=f"key {key_id} is disabled")
    return key["value"], Check(name="api-key", status="PASS", detail=f"key {key_id} enabled (value not shown)")


def _json_body(response: HttpResponse) -> Any:
    try:
        return json.loads(response.body)
    except ValueError:
        return None


def _auth_reason(body: Any) -> str | None:
    """Why a 401/403 was about the token, from the API's error format (chalicelib/serving/auth.py's errors, and the
    UNAUTHORIZED/ACCESS_DENIED gateway responses in template.yaml): the Authorization detail's message. None when
    the refusal is not about the token (API Gateway's own ``{"message": "Forbidden"}`` for a bad API key)."""
    if not isinstance(body, dict) or body.get("error") not in ("unauthenticated", "forbidden"):
        return None
    details = body.get("details")
    if not isinstance(details, list):
        details = []
    said = [d.get("message") for d in details if isinstance(d, dict) and d.get("field") == "Authorization"]
    return str(said[0] if said and said[0] else body["error"])[:160]


def _http_failure(response: HttpResponse, token_sent: bool | None = None) -> str:
    """The status and the API's own error sentence (ours: "error"; API Gateway's: "message"), never the body.

    ``token_sent`` says, for /predict, whether an access token went with the key: a refusal of the token (401, or
    a 403 in the API's "forbidden" format: a missing scope) gets a token hint instead of the API-key one."""
    body = _json_body(response)
    said = (body.get("error") or body.get("message")) if isinstance(body, dict) else None
    head = f"HTTP {response.status}" + (f": {str(said)[:160]}" if said else "")
    reason = _auth_reason(body) if response.status in (401, 403) and token_sent is not None else None
    if response.status == 401 and reason is None and token_sent is not None:
        reason = "no reason given"
    if reason is not None and token_sent:
        return f"{head} (the token was refused: {reason})"
    if reason is not None:
        outputs = ", ".join(AUTH_OUTPUTS)
        return f"{head} (the API wants an access token: {reason}; the stack has no {outputs} outputs to get one)"
    hint = " (API Gateway rejected the key: is it in the stack's usage plan?)" if response.status == 403 else ""
    return head + hint


def _answer(
    http: Http,
    name: str,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    model: type[BaseModel],
    what: str,
    failure: Callable[[HttpResponse], str] = _http_failure,
) -> tuple[Any, Check | None]:
    """Call the API and parse its 200 answer as ``model``: (the answer, None), or (None, the FAIL that says why)."""
    try:
        response = http(method, url, headers=headers, body=body, timeout=HTTP_TIMEOUT)
    except Unreachable as exc:
        return None, Check(name=name, status="FAIL", detail=f"cannot reach {url}: {exc}")
    if response.status != 200:
        return None, Check(name=name, status="FAIL", detail=failure(response))
    try:
        return model.model_validate(_json_body(response)), None
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False)[:3])
        return None, Check(name=name, status="FAIL", detail=f"HTTP 200 but not {what} ({where})")


def check_health(http: Http, api_url: str) -> Check:
    """GET /health needs no key (template.yaml: Auth ApiKeyRequired false); ``ready`` says a model is loaded."""
    from chalicelib.serving.api_models import Health

    health, failed = _answer(
        http,
        "health",
        "GET",
        f"{api_url}/health",
        {"Accept": "application/json"},
        None,
        Health,
        "a readmit health answer",
    )
    if failed:
        return failed
    if not health.ready:
        detail = "API answers but has no model loaded: no champion yet (a retraining promotes the first one)"
        return Check(name="health", status="FAIL", detail=detail)
    return Check(name="health", status="PASS", detail=f"HTTP 200, model {health.model_version} loaded")


class TokenAnswer(BaseModel):
    """The token endpoint's answer to a client-credentials grant: ``access_token``, ``expires_in`` (seconds) and
    ``token_type`` "Bearer" (https://docs.aws.amazon.com/cognito/latest/developerguide/token-endpoint.html)."""

    model_config = ConfigDict(extra="ignore")

    access_token: str = Field(min_length=1)
    expires_in: int = Field(gt=0)
    token_type: str

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, kind: str) -> str:
        if kind.lower() != "bearer":  # token types are case-insensitive (RFC 6749 section 5.1)
            raise ValueError("must be Bearer")
        return kind


def _token_failure(response: HttpResponse) -> str:
    """The status and the endpoint's ``error`` code (RFC 6749 section 5.2), with what it means for this client;
    never the body (``error_description`` is free text)."""
    body = _json_body(response)
    code = str(body.get("error") or "")[:64] if isinstance(body, dict) else ""
    hint = _TOKEN_HINTS.get(code)
    return f"HTTP {response.status}" + (f": {code}" if code else "") + (f" ({hint})" if hint else "")


def client_secret(cognito: Any, outputs: StackOutputs) -> str | Check:
    """The ServiceClient's secret: DescribeUserPoolClient(UserPoolId, ClientId) → UserPoolClient.ClientSecret
    (cognito-idp 2016-04-18 service-2.json, where it is a ``sensitive`` member), or the FAIL that says why not."""
    client_id = outputs.service_client_id
    try:
        described = cognito.describe_user_pool_client(UserPoolId=outputs.user_pool_id, ClientId=client_id)
    except _aws_errors() as exc:
        return Check(name="token", status="FAIL", detail=f"DescribeUserPoolClient {client_id}: {aws_error(exc)}")
    secret = described.get("UserPoolClient", {}).get("ClientSecret")
    if not secret:
        detail = f"app client {client_id} has no secret: client credentials need a confidential client"
        return Check(name="token", status="FAIL", detail=detail)
    return str(secret)


def basic_credentials(client_id: str, secret: str) -> str:
    """``Basic Base64Encode(client_id:client_secret)``, as the token endpoint page spells it (client_secret_basic)."""
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode("ascii")


def fetch_token(http: Http, outputs: StackOutputs, client_id: str, secret: str) -> tuple[str | None, Check]:
    """POST <TokenUrl> with ``grant_type=client_credentials&scope=readmit/predict``, form-encoded, the client
    authenticated with HTTP Basic (Amazon Cognito "Token endpoint",
    https://docs.aws.amazon.com/cognito/latest/developerguide/token-endpoint.html). (access token, PASS) or
    (None, the FAIL that says why)."""
    url = outputs.token_url or ""
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
        "Authorization": basic_credentials(client_id, secret),
    }
    body = urlencode({"grant_type": "client_credentials", "scope": TOKEN_SCOPE}).encode()
    answer, failed = _answer(
        http, "token", "POST", url, headers, body, TokenAnswer, "a token answer", failure=_token_failure
    )
    if failed:
        return None, failed
    detail = f"{TOKEN_SCOPE} for client {client_id}, expires in {answer.expires_in} s (token and secret not shown)"
    return answer.access_token, Check(name="token", status="PASS", detail=detail)


@dataclass
class Credentials:
    """What the token check found, for /predict and for masking: ``token`` None means none could be had."""

    check: Check
    token: str | None = None
    secrets: tuple[str, ...] = ()


def sign_in(cognito: Any, http: Http, outputs: StackOutputs) -> Credentials:
    """The ``token`` check: the ServiceClient's secret from Cognito, then an access token for it. SKIP on a stack
    without the Cognito outputs (deployed before the API required tokens: /predict is then tried with the key)."""
    missing = outputs.missing_auth
    if len(missing) == len(AUTH_OUTPUTS):
        detail = f"the stack has no {', '.join(AUTH_OUTPUTS)} outputs (deployed before the API required tokens)"
        return Credentials(_skip("token", detail))
    if missing:
        return Credentials(Check(name="token", status="FAIL", detail=f"the stack lacks {', '.join(missing)}"))
    client_id = outputs.service_client_id or ""
    secret = client_secret(cognito, outputs)
    if isinstance(secret, Check):
        return Credentials(secret)
    hidden = (secret, basic_credentials(client_id, secret).removeprefix("Basic "))
    token, check = fetch_token(http, outputs, client_id, secret)
    return Credentials(check, token, hidden + ((token,) if token else ()))


def check_predict(http: Http, api_url: str, api_key: str | None, credentials: Credentials | None = None) -> Check:
    """POST /predict with the key in X-API-Key, API Gateway's HEADER key source
    (https://docs.aws.amazon.com/apigateway/latest/developerguide/api-gateway-api-key-source.html), and the access
    token as ``Authorization: Bearer`` (RFC 6750 section 2.1), which the Cognito authorizer checks. Without the
    Cognito outputs (the token check SKIPped) only the key is sent; a token that could not be had skips it."""
    from chalicelib.serving.api_models import Prediction

    if api_key is None:
        return Check(name="predict", status="SKIP", detail="no API key to call it with")
    token = credentials.token if credentials is not None else None
    if credentials is not None and credentials.check.status != "SKIP" and token is None:
        return Check(name="predict", status="SKIP", detail="no access token to call it with (see token)")
    headers = {"Content-Type": "application/json", "Accept": "application/json", "x-api-key": api_key}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps(example_encounter()).encode()
    prediction, failed = _answer(
        http,
        "predict",
        "POST",
        f"{api_url}/predict",
        headers,
        body,
        Prediction,
        "a prediction",
        failure=lambda response: _http_failure(response, token_sent=token is not None),
    )
    if failed:
        return failed
    detail = f"HTTP 200: risk {prediction.risk:.3f}, tier {prediction.risk_tier}, model {prediction.model_version}"
    return Check(name="predict", status="PASS", detail=detail)


def _exists(s3: Any, bucket: str, key: str) -> bool:
    """HeadObject; 404 means absent (403 too without s3:ListBucket, so that one stays an error)."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except _aws_errors() as exc:
        if _error_code(exc) in _NOT_FOUND:
            return False
        raise


def retrain_input(outputs: StackOutputs) -> dict[str, str]:
    """What `readmit retrain --remote` sends, with the stack's locations (as the WeeklySchedule input, without the
    gate: the stack supplies its thresholds)."""
    return {
        "trigger": "manual",
        "data_uri": f"s3://{outputs.data_bucket}/{TRAINING_DATA_KEY}",
        "registry_uri": f"s3://{outputs.model_bucket}/registry",
    }


def start_retraining(sfn: Any, s3: Any, outputs: StackOutputs, name: str) -> tuple[str | None, Check]:
    """StartExecution(stateMachineArn, name, input) → executionArn, once the training data is in place (without it
    the run could only fail, minutes later, and page the team)."""
    data = f"s3://{outputs.data_bucket}/{TRAINING_DATA_KEY}"
    try:
        present = _exists(s3, outputs.data_bucket, TRAINING_DATA_KEY)
    except _aws_errors() as exc:
        return None, Check(name="retrain-start", status="FAIL", detail=f"cannot check {data}: {aws_error(exc)}")
    if not present:
        return None, Check(name="retrain-start", status="FAIL", detail=f"not started: upload {data} first")
    try:
        execution = sfn.start_execution(
            stateMachineArn=outputs.retrain_state_machine_arn, name=name, input=json.dumps(retrain_input(outputs))
        )
    except _aws_errors() as exc:
        return None, Check(name="retrain-start", status="FAIL", detail=f"StartExecution: {aws_error(exc)}")
    arn = execution["executionArn"]
    return arn, Check(name="retrain-start", status="PASS", detail=f"started {arn}")


def upload_list(s3: Any, outputs: StackOutputs, key: str, body: bytes) -> Check:
    """PutObject under incoming/ with SSE-KMS and the stack's DataKey: the bucket's default encryption, stated
    explicitly (the DataBucketPolicy denies anything less under scored/; incoming/ holds the same PHI).
    ServerSideEncryption "aws:kms" and SSEKMSKeyId are PutObjectRequest members in s3 2006-03-01."""
    rows = body.count(b"\n") - 1
    try:
        s3.put_object(
            Bucket=outputs.batch_bucket,
            Key=key,
            Body=body,
            ContentType="text/csv",
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=outputs.data_key_arn,
        )
    except _aws_errors() as exc:
        detail = f"PutObject s3://{outputs.batch_bucket}/{key}: {aws_error(exc)}"
        return Check(name="batch-upload", status="FAIL", detail=detail)
    detail = f"s3://{outputs.batch_bucket}/{key} ({rows} synthetic rows, SSE-KMS with the stack's DataKey)"
    return Check(name="batch-upload", status="PASS", detail=detail)


def scored_keys(key: str) -> tuple[str, str]:
    """incoming/<name>.csv → scored/<name>.csv and scored/<name>.summary.json (as batch_events.BatchJob names them)."""
    name = key.removeprefix(INCOMING).removesuffix(".csv")
    return f"{SCORED}{name}.csv", f"{SCORED}{name}.summary.json"


# ---- waiting -----------------------------------------------------------------------------------------------------
def probe_retraining(sfn: Any, arn: str) -> Check | None:
    """DescribeExecution: None while RUNNING; its end as a check. Only the error name is shown (the cause and the
    output can be long; the SNS notice and the execution history have them)."""
    try:
        execution = sfn.describe_execution(executionArn=arn)
    except _aws_errors() as exc:
        return Check(name="retrain-result", status="FAIL", detail=f"DescribeExecution: {aws_error(exc)}")
    status = execution["status"]
    if status == "RUNNING":
        return None
    if status in _STOPPED:
        error = execution.get("error") or "no error name"
        detail = f"{status} ({error}): see the failure notice or `aws stepfunctions get-execution-history`"
        return Check(name="retrain-result", status="FAIL", detail=detail)
    decision = _json_object(execution.get("output")).get("decision") or {}
    verdict = "promoted" if decision.get("promote") else "rejected (champion kept)"
    challenger = decision.get("challenger_version") or "unknown"
    return Check(name="retrain-result", status="PASS", detail=f"{status}: challenger {challenger} {verdict}")


def _json_object(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def probe_batch(s3: Any, bucket: str, key: str, rows: int) -> Check | None:
    """None until scored/<name>.summary.json exists (written after the scored list); then both are read and their
    row counts compared with what was uploaded. Only counts are shown, never rows."""
    scored, summary_key = scored_keys(key)
    try:
        if not _exists(s3, bucket, summary_key):
            return None
        summary = _json_object(s3.get_object(Bucket=bucket, Key=summary_key)["Body"].read().decode())
        text = s3.get_object(Bucket=bucket, Key=scored)["Body"].read().decode("utf-8-sig")
    except _aws_errors() as exc:
        return Check(name="batch-result", status="FAIL", detail=f"reading s3://{bucket}/{scored}: {aws_error(exc)}")
    data_rows = max(sum(1 for _ in csv.reader(io.StringIO(text))) - 1, 0)
    counts = {k: summary.get(k) for k in ("rows", "scored", "excluded", "invalid")}
    where = f"s3://{bucket}/{scored}"
    if data_rows != rows or counts["rows"] != rows or counts["scored"] != rows:
        detail = f"{where}: {data_rows} rows in the file, summary {counts}, {rows} uploaded"
        return Check(name="batch-result", status="FAIL", detail=detail)
    tiers = ", ".join(f"{t} {n}" for t, n in (summary.get("tiers") or {}).items())
    return Check(name="batch-result", status="PASS", detail=f"{where}: {rows} of {rows} rows scored ({tiers})")


@dataclass
class Pending:
    """A run to wait for: ``probe`` gives its end (None while it runs); the check to report if nobody waited, or if
    the wait ran out first. No probe: nothing was started, and ``not_waited`` says why."""

    probe: Callable[[], Check | None] | None
    not_waited: Check
    timed_out: Check


def settle(
    pending: list[Pending], wait_seconds: float, poll_seconds: float, clock: Callable[[], float], sleep: Callable
) -> list[Check]:
    """Probe each run until all ended or ``wait_seconds`` ran out; one check per run, in the order given."""
    if not wait_seconds:
        return [p.not_waited for p in pending]
    done: dict[int, Check] = {i: p.not_waited for i, p in enumerate(pending) if p.probe is None}
    deadline = clock() + wait_seconds
    while True:
        for i, item in enumerate(pending):
            if i not in done and item.probe is not None and (check := item.probe()) is not None:
                done[i] = check
        remaining = deadline - clock()
        if len(done) == len(pending) or remaining <= 0:
            return [done.get(i, p.timed_out) for i, p in enumerate(pending)]
        sleep(min(poll_seconds, remaining))


# ---- the run -----------------------------------------------------------------------------------------------------
def _skip(name: str, why: str) -> Check:
    return Check(name=name, status="SKIP", detail=why)


def _nothing(name: str, why: str) -> Pending:
    return Pending(None, _skip(name, why), _skip(name, why))


def retraining(aws: AwsClients, outputs: StackOutputs, name: str, options: SmokeOptions) -> tuple[Check, Pending]:
    if not options.retrain:
        return _skip("retrain-start", "--no-retrain"), _nothing("retrain-result", "--no-retrain")
    arn, started = start_retraining(aws.stepfunctions, aws.s3, outputs, name)
    if arn is None:
        return started, _nothing("retrain-result", "not started")
    follow = f"follow with `aws stepfunctions describe-execution --execution-arn {arn}`"
    return started, Pending(
        probe=lambda: probe_retraining(aws.stepfunctions, arn),
        not_waited=_skip("retrain-result", f"not waited (a retraining takes many minutes; --wait waits); {follow}"),
        timed_out=_skip("retrain-result", f"still RUNNING after {options.wait_seconds:g} s; {follow}"),
    )


def batch_scoring(aws: AwsClients, outputs: StackOutputs, name: str, options: SmokeOptions) -> tuple[Check, Pending]:
    if not options.batch:
        return _skip("batch-upload", "--no-batch"), _nothing("batch-result", "--no-batch")
    key = f"{INCOMING}{name}.csv"
    uploaded = upload_list(aws.s3, outputs, key, smoke_csv(SMOKE_ROWS))
    if uploaded.status != "PASS":
        return uploaded, _nothing("batch-result", "not uploaded")
    where = f"s3://{outputs.batch_bucket}/{scored_keys(key)[0]}"
    late = f"no {where} after {options.wait_seconds:g} s: see the batch state machine's executions"
    if outputs.batch_state_machine_arn:
        late += f" (aws stepfunctions list-executions --state-machine-arn {outputs.batch_state_machine_arn})"
    return uploaded, Pending(
        probe=lambda: probe_batch(aws.s3, outputs.batch_bucket, key, SMOKE_ROWS),
        not_waited=_skip("batch-result", f"not waited (--wait waits); the scored list will be {where}"),
        timed_out=Check(name="batch-result", status="FAIL", detail=late),
    )


def run_name(now: datetime) -> str:
    """Unique per run: the execution name (unique per state machine for 90 days; no spaces, brackets, wildcards,
    or special characters such as : / — stepfunctions' StartExecutionInput.name) and the uploaded file's name."""
    return f"smoke-{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def run(
    options: SmokeOptions,
    aws: AwsClients,
    http: Http = urllib_http,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> SmokeReport:
    outputs, stack_check = read_stack(aws.cloudformation, options.stack, aws.region)
    if outputs is None:  # nothing else can be tried: the one line says why
        return _report(options, aws, [stack_check])
    api_key, key_check = read_api_key(aws.apigateway, outputs.api_key_id)
    credentials = sign_in(aws.cognito, http, outputs)
    checks = [
        stack_check,
        key_check,
        credentials.check,
        check_health(http, outputs.api_url),
        check_predict(http, outputs.api_url, api_key, credentials),
    ]
    name = run_name(now())
    retrain_started, retrain_run = retraining(aws, outputs, name, options)
    batch_uploaded, batch_run = batch_scoring(aws, outputs, name, options)
    retrain_result, batch_result = settle(
        [retrain_run, batch_run], options.wait_seconds, options.poll_seconds, clock, sleep
    )
    checks += [retrain_started, retrain_result, batch_uploaded, batch_result]
    return _report(options, aws, checks, (api_key, *credentials.secrets))


def _report(
    options: SmokeOptions, aws: AwsClients, checks: list[Check], secrets: tuple[str | None, ...] = ()
) -> SmokeReport:
    """The report, with the API key's value, the app client's secret and the access token masked wherever they
    might have been echoed (belt and braces: no check prints them)."""
    for secret in sorted(filter(None, secrets), key=len, reverse=True):  # longest first: one may contain another
        checks = [c.model_copy(update={"detail": c.detail.replace(secret, "***")}) for c in checks]
    return SmokeReport(stack=options.stack, region=aws.region, checks=checks)


# ---- output ------------------------------------------------------------------------------------------------------
def table(report: SmokeReport) -> str:
    rows = [("check", "result", "detail"), *((c.name, c.status, c.detail) for c in report.checks)]
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {status:<6}  {detail}" for name, status, detail in rows]
    failed = sum(c.status == "FAIL" for c in report.checks)
    skipped = sum(c.status == "SKIP" for c in report.checks)
    lines.append(f"{report.stack}: {f'{failed} failed' if failed else 'nothing failed'}, {skipped} skipped")
    return "\n".join(lines)


def main(
    options: SmokeOptions,
    region: str | None,
    as_json: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
    aws: AwsClients | None = None,
    http: Http = urllib_http,
) -> int:
    """The command: build the clients (a missing region is a one-line error), run, print, return the exit code."""
    from botocore.exceptions import NoRegionError

    out, err = out or sys.stdout, err or sys.stderr

    try:
        aws = aws or AwsClients.create(region)
    except _aws_errors() as exc:  # NoRegionError, ProfileNotFound: before any call
        hint = " (pass --region or set AWS_REGION)" if isinstance(exc, NoRegionError) else ""
        print(f"readmit smoke: {aws_error(exc)}{hint}", file=err)
        return 2
    report = run(options, aws, http=http)
    print(report.model_dump_json(indent=2) if as_json else table(report), file=out)
    return report.exit_code
