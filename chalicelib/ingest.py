"""Event-driven indexing: an SQS message (an S3 upload notification, a chunk of a large file, or a backfill
request) → the file's labelled encounters embedded and upserted into the vector store.

Three kinds of failure, three outcomes:
- a message that can never succeed (not JSON, not an event we know, an unsupported file type, an object that no
  longer exists) is a ``PoisonMessage``: it goes to the dead-letter queue at once, with its reason as a message
  attribute, and is acknowledged so it does not block or repeat;
- rows of a file that fail validation are reported to the dead-letter queue too (line numbers and field names,
  never values), while the file's valid rows are indexed;
- anything else (S3, Bedrock or the store unavailable, throttling) propagates, so the batch reports that one
  message as failed and SQS redelivers it, up to the queue's maxReceiveCount, then moves it to the DLQ.
Writes are idempotent: a point's id is the salted hash of its encounter id, so redelivery overwrites.

A file with more rows than ``chunk_rows`` is not indexed in one invocation: it fans out into chunk messages on
the same queue (the backfill path for the whole training set is one such message).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from . import settings, telemetry
from .embedding import Embedder
from .indexing import OUTCOMES, index_rows
from .schema import COLUMN_NAMES, TARGET, columns_from_records, is_excluded, parse_encounter
from .vectors import VectorStore

CHUNK_ROWS = 2000  # rows per invocation: with Titan at ~20 calls/s per worker this stays well inside 15 minutes
FORMATS = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".ndjson")
MAX_REPORTED_ROWS = 1000  # keeps a dead-letter message well under SQS's 256 KB
NOT_AN_OBJECT = "__not_an_object__"


class PoisonMessage(Exception):
    """A message that no retry can fix; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Chunk:
    bucket: str
    key: str
    start: int = 0
    stop: int | None = None  # None: to the end of the file


@dataclass
class Report:
    indexed: int = 0
    excluded: int = 0
    unlabelled: int = 0
    invalid: int = 0
    chunks_sent: int = 0
    bad_rows: list[dict[str, Any]] = field(default_factory=list)


def parse_message(body: str) -> list[Chunk] | None:
    """The chunks a message asks for; None for S3's test event (nothing to do); PoisonMessage otherwise."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, TypeError):
        raise PoisonMessage("the message body is not JSON") from None
    if not isinstance(data, dict):
        raise PoisonMessage("the message body is not a JSON object")
    if data.get("Event") == "s3:TestEvent":
        return None
    if isinstance(data.get("chunk"), dict) or isinstance(data.get("backfill"), dict):
        spec = data.get("chunk") or data["backfill"]
        try:
            return [Chunk(str(spec["bucket"]), str(spec["key"]), int(spec.get("start", 0)), _opt_int(spec.get("stop")))]
        except (KeyError, TypeError, ValueError):
            raise PoisonMessage("a chunk or backfill message needs bucket, key and integer start/stop") from None
    records = data.get("Records")
    if not isinstance(records, list) or not records:
        raise PoisonMessage("not an S3 event notification, chunk or backfill message")
    chunks = []
    for r in records:
        if not isinstance(r, dict) or r.get("eventSource") != "aws:s3":
            raise PoisonMessage("a record is not an S3 event")
        if not str(r.get("eventName", "")).startswith("ObjectCreated:"):
            continue
        try:
            chunks.append(Chunk(r["s3"]["bucket"]["name"], unquote_plus(r["s3"]["object"]["key"])))
        except (KeyError, TypeError):
            raise PoisonMessage("an S3 event record without bucket name or object key") from None
    return chunks


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def check_format(key: str) -> None:
    if not key.endswith(FORMATS):
        raise PoisonMessage(f"unsupported file type (expected one of {', '.join(FORMATS)})")


def read_rows(raw: bytes, key: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(line number, raw row) of a CSV (header = line 1) or JSON Lines file, gzipped or not."""
    check_format(key)
    if key.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            raise PoisonMessage("the .gz file is not valid gzip") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PoisonMessage("the file is not UTF-8 text") from None
    if ".csv" in key:
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in COLUMN_NAMES if c not in (reader.fieldnames or [])]
        if missing:
            raise PoisonMessage(f"the CSV header lacks {', '.join(missing[:5])}")
        for i, row in enumerate(reader):
            yield i + 2, row
        return
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        yield i + 1, row if isinstance(row, dict) else {NOT_AN_OBJECT: True}


class Ingestor:
    """Turns one SQS message into indexed points; the boto3 clients, embedder and store are handed in."""

    def __init__(
        self,
        s3: Any,
        sqs: Any,
        embedder: Embedder,
        store: VectorStore,
        *,
        queue_url: str | None,
        dlq_url: str,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        self.s3, self.sqs, self.embedder, self.store = s3, sqs, embedder, store
        self.queue_url, self.dlq_url, self.chunk_rows = queue_url, dlq_url, chunk_rows

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Ingestor:
        import boto3

        from .embedding import open_embedder
        from .vectors import open_vector_store

        return cls(
            boto3.client("s3"),
            boto3.client("sqs"),
            open_embedder(env=env),
            open_vector_store(env=env),
            queue_url=env.get(settings.ENV_INGEST_QUEUE_URL),
            dlq_url=env[settings.ENV_INGEST_DLQ_URL],
            chunk_rows=int(env.get(settings.ENV_INGEST_CHUNK_ROWS) or CHUNK_ROWS),
        )

    # -- one message ----------------------------------------------------------------------------------------
    def handle(self, body: str) -> Report:
        report = Report()
        for chunk in parse_message(body) or []:
            self._chunk(chunk, report)
        if report.invalid:
            body = {"reason": "invalid rows", "invalid_rows": report.invalid, "rows": report.bad_rows}
            self._dead_letter(json.dumps(body), "invalid rows", "rows")
        return report

    def dead_letter(self, body: str, reason: str, message_id: str) -> None:
        """Park an unprocessable message in the DLQ with its reason (a failure here is retried by SQS)."""
        self._dead_letter(body, reason, message_id)

    def _dead_letter(self, body: str, reason: str, source: str) -> None:
        self.sqs.send_message(
            QueueUrl=self.dlq_url,
            MessageBody=body,
            MessageAttributes={
                "reason": {"DataType": "String", "StringValue": reason[:256]},
                "source": {"DataType": "String", "StringValue": source or "unknown"},
            },
        )

    def _chunk(self, chunk: Chunk, report: Report) -> None:
        check_format(chunk.key)  # before fetching: a PDF is poison whether or not it still exists
        rows = list(read_rows(self._get(chunk), chunk.key))
        if chunk.stop is None and chunk.start == 0 and len(rows) > self.chunk_rows:
            report.chunks_sent += self._fan_out(chunk, len(rows))
            return
        self._index(chunk, rows[chunk.start : chunk.stop], report)

    def _get(self, chunk: Chunk) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.s3.get_object(Bucket=chunk.bucket, Key=chunk.key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "NoSuchBucket"):
                raise PoisonMessage("the object no longer exists") from None
            raise

    def _fan_out(self, chunk: Chunk, n: int) -> int:
        if not self.queue_url:
            raise PoisonMessage(f"a file of {n} rows needs chunking, and no ingest queue is configured")
        bodies = [
            json.dumps({"chunk": {"bucket": chunk.bucket, "key": chunk.key, "start": s, "stop": s + self.chunk_rows}})
            for s in range(0, n, self.chunk_rows)
        ]
        for start in range(0, len(bodies), 10):
            entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start : start + 10])]
            failed = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries).get("Failed")
            if failed:
                raise RuntimeError(f"{len(failed)} chunk messages were not accepted")  # retried as a whole
        return len(bodies)

    def _index(self, chunk: Chunk, rows: list[tuple[int, Mapping[str, Any]]], report: Report) -> None:
        records, ids, outcomes = [], [], []
        for line, raw in rows:
            record, errors = parse_encounter(raw, require_target=True, require_ids=True)
            if errors:  # extra columns are ignored, as in batch scoring
                report.invalid += 1
                if len(report.bad_rows) < MAX_REPORTED_ROWS:
                    fields = ["(not a JSON object)"] if NOT_AN_OBJECT in raw else [e.field for e in errors]
                    report.bad_rows.append({"bucket": chunk.bucket, "key": chunk.key, "line": line, "fields": fields})
            elif is_excluded(record):
                report.excluded += 1
            elif record[TARGET] not in OUTCOMES:
                report.unlabelled += 1
            else:
                records.append(record)
                ids.append(record["encounter_id"])
                outcomes.append(record[TARGET])
        if records:
            report.indexed += index_rows(columns_from_records(records), ids, outcomes, self.embedder, self.store)
        telemetry.logger.info(
            "chunk indexed",
            extra={"indexed": report.indexed, "excluded": report.excluded, "invalid": report.invalid},
        )
