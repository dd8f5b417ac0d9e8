"""The embedder Lambda replayed with the SQS fixtures in events/, against moto S3/SQS and a real Qdrant client
(embedded, in memory): partial batch failures, poison messages in the DLQ with their reason, bad rows reported
without their values, redelivery without duplicate points, and the chunked backfill."""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from botocore.config import Config
from moto import mock_aws

from chalicelib.embedding import LocalEmbedder
from chalicelib.ingest import Chunk, Ingestor, PoisonMessage, parse_message
from chalicelib.ingest_handler import make_handler
from chalicelib.qdrant_store import QdrantStore, qdrant_client
from chalicelib.schema import EXCLUDED_DISPOSITIONS

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
BUCKET = "readmit-data-fixture"
BATCH_1, BATCH_2, BATCH_3 = (f"encounters/2026/11/batch-00{i}.csv" for i in (1, 2, 3))
BATCH_2 = BATCH_2.replace(".csv", ".jsonl")
TRAINING = "training/diabetic_data.csv"
BAD_ROW = 5  # in batch-001: its age is made invalid


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


class Context:
    function_name = "readmit-embedder"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:readmit-embedder"
    aws_request_id = "fixture-embedder"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 600_000


def in_cohort(frame: pd.DataFrame) -> int:
    return int((~frame["discharge_disposition_id"].astype(int).isin(EXCLUDED_DISPOSITIONS)).sum())


@dataclass
class World:
    ingestor: Ingestor
    handler: Any
    sqs: Any
    store: QdrantStore
    dlq_url: str
    queue_url: str
    files: dict[str, pd.DataFrame]

    def expected(self, *keys: str) -> int:
        return sum(in_cohort(self.files[k].drop(index=BAD_ROW) if k == BATCH_1 else self.files[k]) for k in keys)

    def dead_letters(self) -> list[dict[str, Any]]:
        got = self.sqs.receive_message(QueueUrl=self.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
        return got.get("Messages", [])


@pytest.fixture
def world(raw_frame: pd.DataFrame) -> Iterator[World]:
    sample = raw_frame.sample(n=400, random_state=3).reset_index(drop=True)
    files = {BATCH_1: sample[:40].copy(), BATCH_2: sample[40:70], BATCH_3: sample[70:100], TRAINING: sample[100:350]}
    files[BATCH_1].loc[BAD_ROW, "age"] = "[200-210)"
    with mock_aws():
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        s3.create_bucket(Bucket=BUCKET)
        for key, frame in files.items():
            if key.endswith(".jsonl"):
                body = "\n".join(json.dumps(r) for r in frame.to_dict(orient="records"))
            else:
                buf = io.StringIO()
                frame.to_csv(buf, index=False)
                body = buf.getvalue()
            s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
        dlq_url = sqs.create_queue(QueueName="readmit-ingest-dlq")["QueueUrl"]
        queue_url = sqs.create_queue(QueueName="readmit-ingest")["QueueUrl"]
        store = QdrantStore(qdrant_client(path=":memory:"), "encounters")
        ingestor = Ingestor(s3, sqs, LocalEmbedder(), store, queue_url=queue_url, dlq_url=dlq_url, chunk_rows=100)
        yield World(ingestor, make_handler(lambda: ingestor), sqs, store, dlq_url, queue_url, files)
        store.client.close()


def test_a_batch_of_upload_notifications_indexes_every_valid_in_cohort_row(world: World) -> None:
    response = world.handler(event("embedder_sqs_batch.json"), Context())
    assert response == {"batchItemFailures": []}
    assert world.store.count() == world.expected(BATCH_1, BATCH_2)
    [report] = world.dead_letters()
    assert report["MessageAttributes"]["reason"]["StringValue"] == "invalid rows"
    body = json.loads(report["Body"])
    assert body["invalid_rows"] == 1
    assert body["rows"] == [{"bucket": BUCKET, "key": BATCH_1, "line": BAD_ROW + 2, "fields": ["age"]}]
    assert "[200-210)" not in report["Body"]  # the reason names the field, never the value


def test_a_redelivered_message_creates_no_duplicate_points(world: World) -> None:
    world.handler(event("embedder_sqs_batch.json"), Context())
    before = world.store.count()
    response = world.handler(event("embedder_sqs_redelivered.json"), Context())
    assert response == {"batchItemFailures": []} and world.store.count() == before


def test_poison_messages_go_to_the_dlq_with_their_reason_and_do_not_block_the_batch(world: World) -> None:
    fixture = event("embedder_sqs_poison.json")
    response = world.handler(fixture, Context())
    assert response == {"batchItemFailures": []}  # parked, so SQS does not retry them
    assert world.store.count() == world.expected(BATCH_3)
    parked = {m["MessageAttributes"]["source"]["StringValue"]: m for m in world.dead_letters()}
    _good, not_json, pdf = fixture["Records"]
    assert set(parked) == {not_json["messageId"], pdf["messageId"]}
    assert parked[not_json["messageId"]]["Body"] == not_json["body"]  # the message itself is never lost
    assert parked[not_json["messageId"]]["MessageAttributes"]["reason"]["StringValue"] == "the message body is not JSON"
    assert "unsupported file type" in parked[pdf["messageId"]]["MessageAttributes"]["reason"]["StringValue"]


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


def test_a_transient_failure_fails_only_its_message_and_the_redelivery_recovers(world: World) -> None:
    world.ingestor.store = FlakyStore(world.store, outages=1)  # type: ignore[assignment]
    fixture = event("embedder_sqs_batch.json")
    response = world.handler(fixture, Context())
    assert response == {"batchItemFailures": [{"itemIdentifier": fixture["Records"][0]["messageId"]}]}
    assert world.store.count() == world.expected(BATCH_2)
    assert world.handler(event("embedder_sqs_redelivered.json"), Context()) == {"batchItemFailures": []}
    assert world.store.count() == world.expected(BATCH_1, BATCH_2)


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


def test_indexed_points_are_found_by_their_own_encounter_and_carry_no_identifier(world: World) -> None:
    world.handler(event("embedder_sqs_batch.json"), Context())
    frame = world.files[BATCH_2]
    from chalicelib.schema import columns_from_records, parse_encounter

    record, _ = parse_encounter(frame.iloc[0].to_dict(), require_target=True, require_ids=True)
    vector = LocalEmbedder().embed(columns_from_records([record]))[0]
    [hit] = world.store.search(vector, 1)
    assert hit.similarity == pytest.approx(1.0, abs=1e-5) and hit.payload["outcome"] == record["readmitted"]
    assert set(hit.payload) == {"outcome", "age", "features"}
    ids = {str(v) for v in (*frame["encounter_id"], *frame["patient_nbr"])}
    assert not ids & set(json.dumps(hit.payload).replace(",", " ").replace(":", " ").split())


def test_the_function_module_exposes_a_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("fn_embedder", ROOT / "functions" / "embedder" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.handler)


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


def test_a_deleted_object_is_poison_but_an_unreachable_bucket_is_retried(world: World) -> None:
    with pytest.raises(PoisonMessage, match="no longer exists"):
        world.ingestor.handle(json.dumps({"chunk": {"bucket": BUCKET, "key": "encounters/gone.csv"}}))
    no_retry = Config(retries={"total_max_attempts": 1})
    world.ingestor.s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9", config=no_retry)  # nothing listens
    with pytest.raises(Exception) as caught:
        world.ingestor.handle(json.dumps({"chunk": {"bucket": BUCKET, "key": BATCH_3}}))
    assert not isinstance(caught.value, PoisonMessage)
