"""The API's prediction log on Firehose (chalicelib/serving/prediction_stream.py), the post-invoke extension that
flushes it on Lambda (chalicelib/core/post_invoke.py), and S3PredictionLog reading what Firehose delivers.

Fakes follow the documentation, not the code: moto's Firehose writes to S3 under the literal prefix plus
YYYY/MM/DD/HH and never fails a record, so Firehose's documented S3 layout (custom prefix evaluated at the oldest
record's arrival, ``<stream>-<version>-<date-time>-<uuid><extension>`` names, GZIP) is the ``Delivery`` fake below,
partial failures use botocore's Stubber (which checks requests and responses against the service model), and the
Extensions API is a small HTTP server with the documented endpoints and headers."""

from __future__ import annotations

import gzip
import http.server
import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from chalicelib.core.audit import AuditLogError, AuditRecord, InvalidLogUri, S3PredictionLog, open_prediction_log
from chalicelib.core.post_invoke import PostInvoke
from chalicelib.serving.prediction_stream import (
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    MAX_RECORD_BYTES,
    FirehosePredictionLog,
    StreamSendFailed,
    WriteOnlyLog,
    encode,
    open_api_prediction_log,
)

NOON = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
STREAM = "readmit-predictions"


def audit(request_id: str = "req-1", at: datetime = NOON, width: int = 3) -> AuditRecord:
    return AuditRecord(
        request_id=request_id,
        at=at.isoformat(),
        model_version="v3",
        risk=0.25,
        risk_tier="medium",
        encounter_hash="ab" * 16,
        features=[float(i) for i in range(width)],
        source="api",
    )


def no_sleep(_: float) -> None:
    pass


class Recorder:
    """A Firehose client that accepts everything and keeps each PutRecordBatch call (checked against the
    documented limits: 500 records, 4 MB per call, 1,000 KiB per record)."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.calls: list[list[bytes]] = []
        self.events = events

    def put_record_batch(self, DeliveryStreamName: str, Records: list[dict[str, bytes]]) -> dict[str, Any]:
        data = [r["Data"] for r in Records]
        assert 1 <= len(data) <= 500 and sum(map(len, data)) <= 4_000_000
        assert all(len(d) <= 1_024_000 for d in data)
        self.calls.append(data)
        if self.events is not None:
            self.events.append("put")
        return {"FailedPutCount": 0, "Encrypted": True, "RequestResponses": [{"RecordId": "r"} for _ in data]}

    def records(self) -> list[AuditRecord]:
        return [AuditRecord.model_validate_json(d) for call in self.calls for d in call]


class Delivery:
    """Firehose's S3 delivery as documented: records are concatenated as sent; an object's key is the evaluated
    custom prefix, whose ``!{timestamp:...}`` is "the approximate arrival timestamp of the oldest record that's
    contained in the Amazon S3 object" in UTC (https://docs.aws.amazon.com/firehose/latest/dev/s3-prefixes.html),
    then ``<stream>-<version>-<yyyy>-<MM>-<dd>-<HH>-<mm>-<ss>-<uuid><file extension>``
    (https://docs.aws.amazon.com/firehose/latest/dev/s3-object-name.html); GZIP compresses the object."""

    def __init__(self, s3: Any, bucket: str, gzip_objects: bool = True, extension: str | None = None) -> None:
        self.s3, self.bucket, self.gzip, self.extension = s3, bucket, gzip_objects, extension
        self.prefix = "predictions/dt=!{timestamp:yyyy-MM-dd}/"
        self.now = NOON
        self.buffer: list[tuple[datetime, bytes]] = []

    def put_record_batch(self, DeliveryStreamName: str, Records: list[dict[str, bytes]]) -> dict[str, Any]:
        assert DeliveryStreamName == STREAM
        self.buffer += [(self.now, r["Data"]) for r in Records]
        return {"FailedPutCount": 0, "RequestResponses": [{"RecordId": uuid.uuid4().hex} for _ in Records]}

    def deliver(self) -> str:
        """Write the buffer as one object (what a buffering interval or size hint does); its key."""
        oldest = min(at for at, _ in self.buffer)
        body = b"".join(data for _, data in self.buffer)
        self.buffer = []
        extension = self.extension if self.extension is not None else (".gz" if self.gzip else "")
        key = self.prefix.replace("!{timestamp:yyyy-MM-dd}", oldest.strftime("%Y-%m-%d"))
        key += f"{STREAM}-1-{oldest:%Y-%m-%d-%H-%M-%S}-{uuid.uuid4()}{extension}"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=gzip.compress(body) if self.gzip else body)
        return key


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="audit")
        yield client


def stream_log(client: Any, **kw: Any) -> FirehosePredictionLog:
    return FirehosePredictionLog(
        STREAM, client, mode=kw.pop("mode", "deferred"), hooks=PostInvoke(), sleep=no_sleep, **kw
    )


# ---- writing ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_appended_records_reach_moto_firehose_as_json_lines() -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="audit")
        iam = boto3.client("iam", region_name="us-east-1")
        role = iam.create_role(RoleName="firehose", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        firehose = boto3.client("firehose", region_name="us-east-1")
        firehose.create_delivery_stream(
            DeliveryStreamName=STREAM,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={"BucketARN": "arn:aws:s3:::audit", "RoleARN": role},
        )
        log = stream_log(firehose)
        records = [audit(f"req-{i}", NOON + timedelta(seconds=i)) for i in range(3)]
        log.append(records)
        assert s3.list_objects_v2(Bucket="audit").get("KeyCount") == 0  # queued, not sent inside append
        assert log.flush() == 3 and len(log) == 0
        (obj,) = s3.list_objects_v2(Bucket="audit")["Contents"]
        body = s3.get_object(Bucket="audit", Key=obj["Key"])["Body"].read()
        lines = body.splitlines(keepends=True)
        assert len(lines) == 3 and all(line.endswith(b"\n") for line in lines)  # one JSON line per record
        assert [AuditRecord.model_validate_json(line).request_id for line in lines] == ["req-0", "req-1", "req-2"]


def test_batches_respect_500_records_and_4_mb_per_call() -> None:
    client = Recorder()
    log = stream_log(client)
    log.append([audit(f"small-{i}") for i in range(1234)])
    log.flush()
    assert [len(c) for c in client.calls] == [500, 500, 234]
    client.calls.clear()
    wide = audit("wide", width=110_000)  # ~0.88 MB of features: four fit in 4 MB, five do not
    size = len(encode(wide))
    assert 800_000 < size <= MAX_RECORD_BYTES and 4 * size <= MAX_BATCH_BYTES < 5 * size
    log.append([wide] * 10)
    log.flush()
    assert [len(c) for c in client.calls] == [4, 4, 2]
    assert max(sum(map(len, c)) for c in client.calls) <= MAX_BATCH_BYTES
    assert MAX_BATCH_RECORDS == 500


def test_a_record_over_firehoses_limit_is_refused_at_append_and_nothing_is_queued() -> None:
    log = stream_log(Recorder())
    with pytest.raises(AuditLogError, match="limit"):
        log.append([audit("ok"), audit("huge", width=140_000)])
    assert len(log) == 0


def test_only_the_records_firehose_reports_failed_are_resent() -> None:
    firehose = boto3.client("firehose", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    records = [audit(f"req-{i}") for i in range(3)]
    data = [encode(r) for r in records]
    log = stream_log(firehose)
    with Stubber(firehose) as stub:
        # the documented partial failure: FailedPutCount > 0, RequestResponses[i] matching Records[i]
        stub.add_response(
            "put_record_batch",
            {
                "FailedPutCount": 2,
                "RequestResponses": [
                    {"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "Slow down."},
                    {"RecordId": "id-1"},
                    {"ErrorCode": "InternalFailure", "ErrorMessage": "Internal failure."},
                ],
            },
            {"DeliveryStreamName": STREAM, "Records": [{"Data": d} for d in data]},
        )
        stub.add_response(
            "put_record_batch",
            {"FailedPutCount": 0, "RequestResponses": [{"RecordId": "id-0"}, {"RecordId": "id-2"}]},
            {"DeliveryStreamName": STREAM, "Records": [{"Data": data[0]}, {"Data": data[2]}]},  # only those two
        )
        log.append(records)
        assert log.flush() == 3
        stub.assert_no_pending_responses()
    assert len(log) == 0


def test_a_throttled_call_is_retried_with_backoff_and_nothing_is_lost() -> None:
    firehose = boto3.client("firehose", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    delays: list[float] = []
    log = FirehosePredictionLog(STREAM, firehose, mode="deferred", hooks=PostInvoke(), sleep=delays.append)
    with Stubber(firehose) as stub:
        stub.add_client_error("put_record_batch", "ServiceUnavailableException", http_status_code=503)
        stub.add_client_error("put_record_batch", "ServiceUnavailableException", http_status_code=503)
        stub.add_response("put_record_batch", {"FailedPutCount": 0, "RequestResponses": [{"RecordId": "a"}]})
        log.append([audit()])
        assert log.flush() == 1
    assert len(delays) == 2 and delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2  # exponential, jittered, bounded


def test_when_attempts_run_out_records_stay_queued_for_the_next_flush() -> None:
    firehose = boto3.client("firehose", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    log = stream_log(firehose, max_attempts=3)
    with Stubber(firehose) as stub:
        for _ in range(3):
            stub.add_response(
                "put_record_batch",
                {"FailedPutCount": 1, "RequestResponses": [{"ErrorCode": "InternalFailure", "ErrorMessage": "x"}]},
            )
        log.append([audit("kept")])
        assert log.flush() == 0  # deferred (post-invoke) flushes log and keep the records
        assert len(log) == 1 and log.failures == 1
        stub.add_client_error("put_record_batch", "ResourceNotFoundException", http_status_code=400)
        with pytest.raises(StreamSendFailed, match="ResourceNotFoundException"):
            log.flush(raise_errors=True)  # not retryable: one call, records still kept
        assert len(log) == 1
        stub.add_response("put_record_batch", {"FailedPutCount": 0, "RequestResponses": [{"RecordId": "a"}]})
        assert log.flush() == 1 and len(log) == 0


def test_a_full_queue_sends_synchronously_instead_of_dropping() -> None:
    client = Recorder()
    log = stream_log(client, capacity=5)
    log.append([audit(f"r{i}") for i in range(4)])
    assert client.calls == []
    log.append([audit("r4")])  # the fifth fills the queue: this append sends
    assert len(log) == 0 and [r.request_id for r in client.records()] == ["r0", "r1", "r2", "r3", "r4"]


def test_the_servers_background_sender_flushes_on_its_own_and_at_close() -> None:
    client = Recorder()
    log = FirehosePredictionLog(STREAM, client, mode="background", hooks=PostInvoke(), linger_s=0.01)
    log.append([audit("a"), audit("b")])
    for _ in range(200):
        if client.calls:
            break
        time.sleep(0.01)
    assert [r.request_id for r in client.records()] == ["a", "b"]
    log.append([audit("c")])
    log.close(timeout=2)  # what atexit runs
    assert [r.request_id for r in client.records()] == ["a", "b", "c"] and len(log) == 0


def test_the_api_opens_a_firehose_uri_which_is_write_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("READMIT_PREDICTION_LOG", "firehose://readmit-predictions")
    log = open_api_prediction_log(None)
    assert isinstance(log, FirehosePredictionLog) and log.stream == STREAM and log.uri == "firehose://" + STREAM
    assert log._client is None  # no client until the first send
    with pytest.raises(WriteOnlyLog):
        log.read()
    for bad in ("firehose://", "firehose://a/b"):
        with pytest.raises(InvalidLogUri):
            open_api_prediction_log(bad)
    assert isinstance(open_api_prediction_log("s3://audit/predictions"), S3PredictionLog)  # the rest as before
    with pytest.raises(InvalidLogUri, match="only the API"):
        open_prediction_log(None)  # the drift monitor and the batch scorer never open the stream


def test_on_lambda_without_the_post_invoke_hook_each_append_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
    client = Recorder()
    log = FirehosePredictionLog(STREAM, client, hooks=PostInvoke())
    assert log.mode == "inline"  # a thread of its own would be frozen after the response
    log.append([audit()])
    assert len(client.calls) == 1 and len(log) == 0


# ---- reading what Firehose delivered ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("gzip_objects", "extension"), [(True, None), (True, ".jsonl.gz"), (False, None)], ids=["gz", "jsonl.gz", "plain"]
)
@pytest.mark.slow
def test_s3_log_reads_firehose_objects(s3: Any, gzip_objects: bool, extension: str | None) -> None:
    delivery = Delivery(s3, "audit", gzip_objects, extension)
    log = stream_log(delivery)
    log.append([audit("f1", NOON), audit("f2", NOON + timedelta(minutes=1))])
    log.flush()
    key = delivery.deliver()
    assert key.startswith(f"predictions/dt=2024-03-10/{STREAM}-1-2024-03-10-12-00-00-")
    S3PredictionLog("audit", "predictions", s3).append([audit("own", NOON)])  # the batch scorer's objects too
    s3.put_object(Bucket="audit", Key="predictions/dt=2024-03-10/README.txt", Body=b"not a record\n")
    reader = S3PredictionLog("audit", "predictions", s3)
    assert sorted(r.request_id for r in reader.read(NOON, NOON + timedelta(hours=1))) == ["f1", "f2", "own"]


@pytest.mark.slow
def test_records_filed_under_a_neighbouring_days_partition_are_found(s3: Any) -> None:
    delivery = Delivery(s3, "audit")
    log = stream_log(delivery)
    midnight = datetime(2024, 3, 11, tzinfo=UTC)
    # A (23:59:58) and B (00:00:01, the next day) share a buffer: the object is filed under A's arrival day.
    delivery.now = midnight - timedelta(seconds=1)
    log.append([audit("A", midnight - timedelta(seconds=2))])
    log.flush()
    delivery.now = midnight + timedelta(seconds=2)
    log.append([audit("B", midnight + timedelta(seconds=1))])
    log.flush()
    assert delivery.deliver().startswith("predictions/dt=2024-03-10/")
    # C was scored at 23:59:59.9 but reached Firehose after midnight (queued, retried): filed under the next day.
    delivery.now = midnight + timedelta(seconds=5)
    log.append([audit("C", midnight - timedelta(milliseconds=100))])
    log.flush()
    assert delivery.deliver().startswith("predictions/dt=2024-03-11/")

    reader = S3PredictionLog("audit", "predictions", s3)
    assert [r.request_id for r in reader.read(midnight, midnight + timedelta(hours=1))] == ["B"]
    assert sorted(r.request_id for r in reader.read(midnight - timedelta(hours=1), midnight)) == ["A", "C"]
    assert sorted(r.request_id for r in reader.read()) == ["A", "B", "C"]


# ---- the post-invoke extension ----------------------------------------------------------------------------------
class ExtensionsApi:
    """The Extensions API's documented endpoints (https://docs.aws.amazon.com/lambda/latest/dg/
    runtimes-extensions-api.html): register (Lambda-Extension-Name; 200 with Lambda-Extension-Identifier),
    event/next (Lambda-Extension-Identifier; blocks until an event), exit/error. ``events`` logs the order."""

    def __init__(self, register_status: int = 200) -> None:
        self.identifier = str(uuid.uuid4())
        self.register_status = register_status
        self.events: list[str] = []
        self.pending: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.registrations: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.exit_errors: list[dict[str, str]] = []
        self.nexts = 0
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {**(headers or {}), "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path == "/2020-01-01/extension/register":
                    api.registrations.append((dict(self.headers), body))
                    api.events.append("register")
                    if api.register_status != 200:
                        return self._reply(api.register_status, {"errorMessage": "no", "errorType": "Forbidden"})
                    name_ok = bool(self.headers.get("Lambda-Extension-Name"))
                    return self._reply(
                        200 if name_ok else 400,
                        {"functionName": "readmit-api", "functionVersion": "$LATEST", "handler": "app.app"},
                        {"Lambda-Extension-Identifier": api.identifier},
                    )
                if self.path == "/2020-01-01/extension/exit/error":
                    api.exit_errors.append(dict(self.headers))
                    return self._reply(202, {"status": "OK"})
                self._reply(404, {})

            def do_GET(self) -> None:
                if self.path != "/2020-01-01/extension/event/next":
                    return self._reply(404, {})
                if self.headers.get("Lambda-Extension-Identifier") != api.identifier:
                    return self._reply(403, {"errorMessage": "unknown extension", "errorType": "Forbidden"})
                api.nexts += 1
                api.events.append(f"next#{api.nexts}")
                status, event = api.pending.get()
                self._reply(status, event, {"Lambda-Extension-Event-Identifier": str(uuid.uuid4())})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def invoke(self, deadline_s: float = 5.0) -> None:
        self.pending.put(
            (
                200,
                {
                    "eventType": "INVOKE",
                    "deadlineMs": int((time.time() + deadline_s) * 1000),
                    "requestId": str(uuid.uuid4()),
                    "invokedFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:readmit-api",
                    "tracing": {"type": "X-Amzn-Trace-Id", "value": "Root=1-5f35ae12-0c0fec141ab77a00bc047aa2"},
                },
            )
        )

    def wait_for(self, event: str, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while event not in self.events:
            assert time.monotonic() < end, f"{event} never happened: {self.events}"
            time.sleep(0.005)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def extensions_api() -> Iterator[ExtensionsApi]:
    api = ExtensionsApi()
    yield api
    api.close()


@pytest.mark.slow
def test_the_extension_flushes_after_the_handler_returns_and_before_asking_for_the_next_event(
    extensions_api: ExtensionsApi,
) -> None:
    hooks = PostInvoke(runtime_api=extensions_api.address)
    assert hooks.start(env={}) == "extension"
    ((headers, body),) = extensions_api.registrations
    assert headers["Lambda-Extension-Name"] == "readmit-post-invoke" and body == {"events": ["INVOKE"]}  # no SHUTDOWN
    extensions_api.wait_for("next#1")  # Init done: the extension waits for the first event
    client = Recorder(extensions_api.events)
    log = FirehosePredictionLog(STREAM, client, hooks=hooks)
    assert log.mode == "deferred"
    for n in (1, 2):
        before = len(extensions_api.events)
        extensions_api.invoke()
        time.sleep(0.2)  # the handler is still scoring: an extension that did not wait would flush and move on now
        assert len(extensions_api.events) == before
        log.append([audit(f"inv-{n}")])
        extensions_api.events.append(f"handler returned #{n}")
        hooks.invocation_done()
        extensions_api.wait_for(f"next#{n + 1}")
    assert extensions_api.events == [
        "register",
        "next#1",
        "handler returned #1",
        "put",
        "next#2",
        "handler returned #2",
        "put",
        "next#3",
    ]
    assert [r.request_id for r in client.records()] == ["inv-1", "inv-2"] and hooks.unsignalled == 0


@pytest.mark.slow
def test_an_invocation_that_never_signals_is_flushed_at_its_deadline(extensions_api: ExtensionsApi) -> None:
    hooks = PostInvoke(runtime_api=extensions_api.address)
    hooks.start(env={})
    client = Recorder(extensions_api.events)
    log = FirehosePredictionLog(STREAM, client, hooks=hooks)
    extensions_api.wait_for("next#1")
    log.append([audit("late")])
    extensions_api.invoke(deadline_s=0.3)
    extensions_api.wait_for("next#2", timeout=3)
    assert extensions_api.events[-2:] == ["put", "next#2"] and hooks.unsignalled == 1


@pytest.mark.slow
def test_when_registration_fails_the_flush_runs_before_the_response() -> None:
    api = ExtensionsApi(register_status=403)
    try:
        hooks = PostInvoke(runtime_api=api.address)
        assert hooks.start(env={}) == "sync" and "HTTP 403" in (hooks.fallback_reason or "")
        client = Recorder()
        log = FirehosePredictionLog(STREAM, client, hooks=hooks)
        log.append([audit("sync")])
        assert client.calls == []
        hooks.invocation_done()  # in the handler, before the response: correctness over latency
        assert [r.request_id for r in client.records()] == ["sync"] and api.nexts == 0
    finally:
        api.close()
    unreachable = PostInvoke(runtime_api="127.0.0.1:9")  # nothing listens on the discard port
    assert unreachable.start(env={}) == "sync"


@pytest.mark.slow
def test_when_the_api_stops_answering_the_extension_reports_and_falls_back(extensions_api: ExtensionsApi) -> None:
    hooks = PostInvoke(runtime_api=extensions_api.address)
    hooks.start(env={})
    client = Recorder()
    log = FirehosePredictionLog(STREAM, client, hooks=hooks)
    log.append([audit("queued")])
    for _ in range(3):  # documented: 500 is a container error, "Extension should exit promptly"
        extensions_api.pending.put((500, {"errorMessage": "boom", "errorType": "Container.Error"}))
    for _ in range(200):
        if hooks.mode == "sync":
            break
        time.sleep(0.01)
    assert hooks.mode == "sync"
    (headers,) = extensions_api.exit_errors
    assert headers["Lambda-Extension-Identifier"] == extensions_api.identifier
    assert headers["Lambda-Extension-Function-Error-Type"]
    for _ in range(200):
        if client.calls:
            break
        time.sleep(0.01)
    assert [r.request_id for r in client.records()] == ["queued"]  # what was queued went out on the way down


def test_outside_lambda_the_hook_is_off_and_costs_nothing() -> None:
    hooks = PostInvoke()
    assert hooks.start(env={}) == "off"
    hooks.invocation_done()
    log = FirehosePredictionLog(STREAM, Recorder(), hooks=hooks)
    assert log.mode == "background"
