"""The embedder Lambda replayed with the SQS fixtures in events/, against moto S3/SQS/KMS and a real Qdrant client
(embedded, in memory): partial batch failures, poison messages failed until SQS's redrive moves them to the DLQ,
bad rows reported to S3 (one object per source version, without values), redelivery without duplicate points or
reports, and the chunked backfill."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from botocore.config import Config
from moto import mock_aws

from chalicelib.data.schema import EXCLUDED_DISPOSITIONS
from chalicelib.similar.embedding import LocalEmbedder
from chalicelib.similar.ingest import Chunk, Ingestor, PoisonMessage, parse_message, report_key
from chalicelib.similar.ingest_handler import make_handler
from chalicelib.similar.qdrant_store import QdrantStore, qdrant_client
from tests.helpers import FakeContext, load_event, load_function

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
BUCKET = "readmit-data-fixture"
BATCH_1, BATCH_2, BATCH_3 = (f"encounters/2026/11/batch-00{i}.csv" for i in (1, 2, 3))
BATCH_2 = BATCH_2.replace(".csv", ".jsonl")
TRAINING = "training/diabetic_data.csv"
BAD_ROW = 5  # in batch-001: its age is made invalid
REPORTS = "ingest-reports/"
MAX_RECEIVE_COUNT = 3  # template.yaml's IngestQueue RedrivePolicy


event = load_event
Context = partial(FakeContext, "readmit-embedder", aws_request_id="fixture-embedder")


def in_cohort(frame: pd.DataFrame) -> int:
    return int((~frame["discharge_disposition_id"].astype(int).isin(EXCLUDED_DISPOSITIONS)).sum())


@dataclass
class World:
    ingestor: Ingestor
    handler: Any
    s3: Any
    sqs: Any
    store: QdrantStore
    dlq_url: str
    queue_url: str
    kms_key: str
    files: dict[str, pd.DataFrame]

    def expected(self, *keys: str) -> int:
        return sum(in_cohort(self.files[k].drop(index=BAD_ROW) if k == BATCH_1 else self.files[k]) for k in keys)

    def dead_letters(self) -> list[dict[str, Any]]:
        got = self.sqs.receive_message(QueueUrl=self.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
        return got.get("Messages", [])

    def reports(self) -> dict[str, bytes]:
        listed = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=REPORTS).get("Contents", [])
        return {o["Key"]: self.s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


@pytest.fixture
def world(raw_frame: pd.DataFrame) -> Iterator[World]:
    sample = raw_frame.sample(n=400, random_state=3).reset_index(drop=True)
    files = {BATCH_1: sample[:40].copy(), BATCH_2: sample[40:70], BATCH_3: sample[70:100], TRAINING: sample[100:350]}
    files[BATCH_1].loc[BAD_ROW, "age"] = "[200-210)"
    with mock_aws():
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})  # as DataBucket
        kms_key = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
        for key, frame in files.items():
            if key.endswith(".jsonl"):
                body = "\n".join(json.dumps(r) for r in frame.to_dict(orient="records"))
            else:
                buf = io.StringIO()
                frame.to_csv(buf, index=False)
                body = buf.getvalue()
            s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
        dlq_url = sqs.create_queue(QueueName="readmit-ingest-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT})
        queue_url = sqs.create_queue(QueueName="readmit-ingest", Attributes={"RedrivePolicy": redrive})["QueueUrl"]
        store = QdrantStore(qdrant_client(path=":memory:"), "encounters")
        ingestor = Ingestor(
            s3,
            sqs,
            LocalEmbedder(),
            store,
            queue_url=queue_url,
            report_uri=f"s3://{BUCKET}/{REPORTS}",
            kms_key_id=kms_key,
            chunk_rows=100,
        )
        handler = make_handler(lambda: ingestor)
        yield World(ingestor, handler, s3, sqs, store, dlq_url, queue_url, kms_key, files)
        store.client.close()


@pytest.mark.slow
def test_a_batch_of_upload_notifications_indexes_every_valid_in_cohort_row_and_reports_bad_rows_to_s3(
    world: World,
) -> None:
    response = world.handler(event("embedder_sqs_batch.json"), Context())
    assert response == {"batchItemFailures": []}
    assert world.store.count() == world.expected(BATCH_1, BATCH_2)
    assert world.dead_letters() == []  # reports never go to the DLQ
    [(key, raw)] = world.reports().items()  # one report: batch-002 has no bad row
    source = world.s3.head_object(Bucket=BUCKET, Key=BATCH_1)
    assert key == f"{REPORTS}{BATCH_1}.{source['VersionId']}.json"
    body = json.loads(raw)
    assert body["source"] == f"s3://{BUCKET}/{BATCH_1}" and body["version_id"] == source["VersionId"]
    assert body["etag"] == source["ETag"].strip('"') and body["rows"] == len(world.files[BATCH_1])
    assert body["invalid_rows"] == 1 and body["bad_rows"] == [{"line": BAD_ROW + 2, "fields": ["age"]}]
    assert body["indexed"] == world.expected(BATCH_1)
    assert b"[200-210)" not in raw  # the report names the field, never the value
    written = world.s3.head_object(Bucket=BUCKET, Key=key)
    assert written["ServerSideEncryption"] == "aws:kms" and written["SSEKMSKeyId"] == world.kms_key


@pytest.mark.slow
def test_a_redelivered_message_creates_no_duplicate_points_reports_or_dead_letters(world: World) -> None:
    world.handler(event("embedder_sqs_batch.json"), Context())
    before, reports = world.store.count(), world.reports()
    response = world.handler(event("embedder_sqs_redelivered.json"), Context())
    assert response == {"batchItemFailures": []} and world.store.count() == before
    assert world.reports() == reports  # the same key, the same bytes
    assert world.dead_letters() == []


@pytest.mark.slow
def test_a_new_upload_of_the_same_key_gets_its_own_report(world: World) -> None:
    world.handler(event("embedder_sqs_batch.json"), Context())
    buf = io.StringIO()
    world.files[BATCH_1].to_csv(buf, index=False)
    world.s3.put_object(Bucket=BUCKET, Key=BATCH_1, Body=buf.getvalue().encode())  # uploaded again
    world.handler(event("embedder_sqs_redelivered.json"), Context())
    keys = sorted(world.reports())
    assert len(keys) == 2 and all(k.startswith(f"{REPORTS}{BATCH_1}.") for k in keys)


@pytest.mark.slow
def test_poison_messages_fail_only_themselves_and_never_write_to_the_dlq(world: World) -> None:
    fixture = event("embedder_sqs_poison.json")
    response = world.handler(fixture, Context())
    _good, not_json, pdf = fixture["Records"]
    failed = [{"itemIdentifier": r["messageId"]} for r in (not_json, pdf)]
    assert response == {"batchItemFailures": failed}  # SQS retries them, then moves them to the DLQ
    assert world.store.count() == world.expected(BATCH_3)  # the good message in the batch is indexed
    assert world.dead_letters() == [] and world.reports() == {}


@pytest.mark.slow
def test_a_batch_of_only_poison_is_answered_with_every_item_failed_not_an_exception(world: World) -> None:
    fixture = event("embedder_sqs_poison.json")
    fixture["Records"] = fixture["Records"][1:]
    response = world.handler(fixture, Context())
    assert response == {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in fixture["Records"]]}


def _deliver(world: World) -> bool:
    """One poll of the event source mapping: receive a batch, invoke, delete what succeeded, and make the failed
    items visible again (as their visibility timeout running out would); False when the queue gave nothing."""
    got = world.sqs.receive_message(QueueUrl=world.queue_url, MaxNumberOfMessages=10, AttributeNames=["All"])
    messages = got.get("Messages", [])
    if not messages:
        return False
    template = event("embedder_sqs_poison.json")["Records"][0]
    records = [
        {
            **template,
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": m["Attributes"],
        }
        for m in messages
    ]
    failed = {f["itemIdentifier"] for f in world.handler({"Records": records}, Context())["batchItemFailures"]}
    for m in messages:
        if m["MessageId"] in failed:
            world.sqs.change_message_visibility(
                QueueUrl=world.queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
            )
        else:
            world.sqs.delete_message(QueueUrl=world.queue_url, ReceiptHandle=m["ReceiptHandle"])
    return True


@pytest.mark.slow
def test_sqs_redrive_moves_a_poison_message_to_the_dlq_after_max_receive_count(world: World) -> None:
    poison = event("embedder_sqs_poison.json")["Records"][2]["body"]  # an upload of a PDF
    world.sqs.send_message(QueueUrl=world.queue_url, MessageBody=poison)
    deliveries = 0
    while _deliver(world):
        deliveries += 1
    assert deliveries == MAX_RECEIVE_COUNT
    [parked] = world.dead_letters()
    assert parked["Body"] == poison  # the message itself, as it was sent: a redrive re-sends the source event
    assert world.reports() == {} and world.store.count() == 0


class FlakyStore:
    """The real store, unavailable for the first ``outages`` upserts (as during a Qdrant rolling restart)."""

    def __init__(self, store: QdrantStore, outages: int) -> None:
        self.store, self.outages = store, outages

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def upsert(self, *args: Any) -> None:
        if self.outages:
            self.outages -= 1
            raise ConnectionError("vector store unavailable")
        self.store.upsert(*args)


@pytest.mark.slow
def test_a_transient_failure_fails_only_its_message_and_the_redelivery_recovers(world: World) -> None:
    world.ingestor.store = FlakyStore(world.store, outages=1)  # type: ignore[assignment]
    fixture = event("embedder_sqs_batch.json")
    response = world.handler(fixture, Context())
    assert response == {"batchItemFailures": [{"itemIdentifier": fixture["Records"][0]["messageId"]}]}
    assert world.store.count() == world.expected(BATCH_2)
    assert world.handler(event("embedder_sqs_redelivered.json"), Context()) == {"batchItemFailures": []}
    assert world.store.count() == world.expected(BATCH_1, BATCH_2)


@pytest.mark.slow
def test_a_backfill_fans_out_into_chunk_messages_that_index_the_whole_file(world: World) -> None:
    assert world.handler(event("embedder_sqs_backfill.json"), Context()) == {"batchItemFailures": []}
    assert world.store.count() == 0  # nothing indexed by the fan-out itself
    got = world.sqs.receive_message(QueueUrl=world.queue_url, MaxNumberOfMessages=10)["Messages"]
    chunks = sorted(json.loads(m["Body"])["chunk"]["start"] for m in got)
    assert chunks == [0, 100, 200]
    records = [
        {**event("embedder_sqs_backfill.json")["Records"][0], "messageId": m["MessageId"], "body": m["Body"]}
        for m in got
    ]
    assert world.handler({"Records": records}, Context()) == {"batchItemFailures": []}
    assert world.store.count() == world.expected(TRAINING)


@pytest.mark.slow
def test_indexed_points_are_found_by_their_own_encounter_and_carry_no_identifier(world: World) -> None:
    world.handler(event("embedder_sqs_batch.json"), Context())
    frame = world.files[BATCH_2]
    from chalicelib.data.schema import columns_from_records, parse_encounter

    record, _ = parse_encounter(frame.iloc[0].to_dict(), require_target=True, require_ids=True)
    vector = LocalEmbedder().embed(columns_from_records([record]))[0]
    [hit] = world.store.search(vector, 1)
    assert hit.similarity == pytest.approx(1.0, abs=1e-5) and hit.payload["outcome"] == record["readmitted"]
    assert set(hit.payload) == {"outcome", "age", "features"}
    ids = {str(v) for v in (*frame["encounter_id"], *frame["patient_nbr"])}
    assert not ids & set(json.dumps(hit.payload).replace(",", " ").replace(":", " ").split())


def test_the_function_module_exposes_a_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    assert callable(load_function("embedder").handler)


S3_RECORD = {
    "eventSource": "aws:s3",
    "eventName": "ObjectCreated:Put",
    "s3": {"bucket": {"name": "b"}, "object": {"key": "encounters/day+1%2B.csv"}},  # S3 URL-encodes keys
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}', None),
        (json.dumps({"Records": [S3_RECORD]}), [Chunk("b", "encounters/day 1+.csv")]),
        (json.dumps({"chunk": {"bucket": "b", "key": "k.csv", "start": 5, "stop": 9}}), [Chunk("b", "k.csv", 5, 9)]),
        (json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete"}]}), []),
    ],
)
def test_messages_are_read_as_s3_events_chunks_or_test_events(body: str, expected: Any) -> None:
    assert parse_message(body) == expected


@pytest.mark.parametrize(
    "body",
    ["[]", "{}", '{"Records": [{"eventSource": "aws:sns"}]}', '{"chunk": {"bucket": "b"}}', '{"chunk": {"key": 1}}'],
)
def test_messages_no_retry_can_fix_are_poison(body: str) -> None:
    with pytest.raises(PoisonMessage):
        parse_message(body)


@pytest.mark.slow
def test_a_deleted_object_is_poison_but_an_unreachable_bucket_is_retried(world: World) -> None:
    with pytest.raises(PoisonMessage, match="no longer exists"):
        world.ingestor.handle(json.dumps({"chunk": {"bucket": BUCKET, "key": "encounters/gone.csv"}}))
    no_retry = Config(retries={"total_max_attempts": 1})
    world.ingestor.s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9", config=no_retry)  # nothing listens
    with pytest.raises(Exception) as caught:
        world.ingestor.handle(json.dumps({"chunk": {"bucket": BUCKET, "key": BATCH_3}}))
    assert not isinstance(caught.value, PoisonMessage)


def test_report_keys_name_the_source_version_and_chunk_and_fit_s3s_key_limit() -> None:
    assert report_key("ingest-reports/", Chunk("b", "a/x.csv"), "v1") == "ingest-reports/a/x.csv.v1.json"
    assert (
        report_key("ingest-reports", Chunk("b", "a/x.csv", 100, 200), "v1")
        == "ingest-reports/a/x.csv.v1.rows-100-200.json"
    )
    long_key = "encounters/" + "x" * 1010 + ".csv"  # S3 allows 1,024 bytes; the report's prefix and suffix do not fit
    key = report_key("ingest-reports/", Chunk("b", long_key), "v1")
    assert len(key.encode()) <= 1024 and key.startswith("ingest-reports/sha256-") and key.endswith(".v1.json")


@pytest.mark.slow
def test_each_chunk_of_a_large_file_reports_its_own_bad_rows_under_its_own_key(world: World) -> None:
    frame = world.files[TRAINING].reset_index(drop=True).copy()
    frame.loc[150, "gender"] = "Zorblax"  # in the second chunk of 100 rows
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    world.s3.put_object(Bucket=BUCKET, Key="training/bad.csv", Body=buf.getvalue().encode())
    for start in (0, 100):
        world.ingestor.handle(
            json.dumps({"chunk": {"bucket": BUCKET, "key": "training/bad.csv", "start": start, "stop": start + 100}})
        )
    [(key, raw)] = world.reports().items()
    assert key.startswith(f"{REPORTS}training/bad.csv.") and key.endswith(".rows-100-200.json")
    assert json.loads(raw)["bad_rows"] == [{"line": 152, "fields": ["gender"]}] and b"Zorblax" not in raw


@pytest.mark.slow
def test_without_an_s3_uri_reports_go_to_a_local_folder(world: World, tmp_path: Path) -> None:
    world.ingestor.report_uri = str(tmp_path / "reports")
    world.handler(event("embedder_sqs_batch.json"), Context())
    world.handler(event("embedder_sqs_redelivered.json"), Context())
    [path] = (tmp_path / "reports").iterdir()
    assert json.loads(path.read_text())["bad_rows"] == [{"line": BAD_ROW + 2, "fields": ["age"]}]
    assert world.reports() == {} and world.dead_letters() == []
