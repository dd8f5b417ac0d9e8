"""Event-driven indexing: an SQS message (an S3 upload notification, a chunk of a large file, or a backfill
request) → the file's labelled encounters embedded and upserted into the vector store.

Three kinds of failure, three outcomes:
- a message that can never succeed (not JSON, not an event we know, an unsupported file type, an object that no
  longer exists) is a ``PoisonMessage``: the handler logs its reason with the message id and reports it as a
  failed batch item, so SQS moves it to the dead-letter queue after the queue's maxReceiveCount;
- rows of a file that fail validation are reported, line numbers and field names only (never values), as one S3
  object per source object version and chunk (``report_key``), while the file's valid rows are indexed. A
  redelivery writes the same key with the same content, so the dead-letter queue only ever holds messages SQS
  moved there, and a redrive of it sends back source events, never reports;
- anything else (S3, Bedrock or the store unavailable, throttling) propagates, so the batch reports that one
  message as failed and SQS redelivers it, up to the queue's maxReceiveCount, then moves it to the DLQ.
Writes are idempotent: a point's id is the salted hash of its encounter id, so redelivery overwrites.

A file with more rows than ``chunk_rows`` is not indexed in one invocation: it fans out into chunk messages on
the same queue (the backfill path for the whole training set is one such message).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote_plus

from aws_lambda_powertools.utilities.parser.models import S3Model, S3RecordModel
from aws_lambda_powertools.utilities.parser.models.s3 import (
    S3Bucket,
    S3Identity,
    S3Message,
    S3OwnerIdentify,
    S3RequestParameters,
    S3ResponseElements,
)
from pydantic import BaseModel, Field, ValidationError, model_validator

from chalicelib.core import settings, telemetry
from chalicelib.data.schema import COLUMN_NAMES, TARGET, columns_from_records, is_excluded, parse_encounter
from chalicelib.similar.embedding import Embedder
from chalicelib.similar.indexing import OUTCOMES, index_rows
from chalicelib.similar.vectors import VectorStore

# rows per invocation ($READMIT_INGEST_CHUNK_ROWS): with Titan at ~20 calls/s per worker this stays well inside 15 min
CHUNK_ROWS: int = settings.default("ingest_chunk_rows")
FORMATS = (".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".ndjson")
NOT_AN_OBJECT = "__not_an_object__"
ENV_INGEST_REPORT_URI = settings.ENV_INGEST_REPORT_URI  # invalid-row reports: s3://bucket/prefix or a folder
ENV_INGEST_KMS_KEY = settings.ENV_INGEST_KMS_KEY  # the KMS key reports are written with (else the bucket's default)
DEFAULT_REPORT_FOLDER = "ingest-reports"  # under $READMIT_HOME when no URI is set (local replays)
MAX_KEY_BYTES = 1024  # S3 object keys: https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html


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
    reports: list[str] = field(default_factory=list)  # where this message's invalid-row reports were written

    def add(self, other: Report) -> None:
        for name in ("indexed", "excluded", "unlabelled", "invalid", "chunks_sent"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reports += other.reports


@dataclass(frozen=True)
class Source:
    """The bytes of one S3 object as read, and which version of it they are (GetObject's ETag and VersionId)."""

    body: bytes
    etag: str
    version_id: str | None

    @property
    def version(self) -> str:
        """The object's version id in a versioned bucket, else its ETag: a new upload gets a new report key."""
        return self.version_id or self.etag


class BadRow(BaseModel):
    line: int
    fields: list[str]  # the names of the fields that failed, never their values


class InvalidRowsReport(BaseModel):
    """The report of one source object version (and chunk): a function of the rows read, so a redelivery writes
    the same bytes to the same key."""

    source: str
    version_id: str | None
    etag: str
    start: int
    stop: int | None
    rows: int
    indexed: int
    excluded: int
    unlabelled: int
    invalid_rows: int
    bad_rows: list[BadRow]


def report_key(prefix: str, chunk: Chunk, version: str) -> str:
    """``<prefix>/<source key>.<version>[.rows-<start>-<stop>].json``; a source key too long to fit in S3's 1,024
    bytes is replaced by its sha256."""
    rows = (
        ""
        if chunk.start == 0 and chunk.stop is None
        else f".rows-{chunk.start}-{'' if chunk.stop is None else chunk.stop}"
    )
    root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    key = f"{root}{chunk.key}.{version}{rows}.json"
    if len(key.encode()) > MAX_KEY_BYTES:
        key = f"{root}sha256-{hashlib.sha256(chunk.key.encode()).hexdigest()}.{version}{rows}.json"
    return key


class S3TestEvent(BaseModel):
    """The message S3 sends when a notification configuration is saved, which has no Records
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html): nothing to do.
    Powertools has no model for it."""

    Event: Literal["s3:TestEvent"]
    Service: str | None = None
    Bucket: str | None = None


# Each override loosens a field Powertools requires and this function never reads; mypy reports a field's type
# changed in a subclass as [assignment], which pydantic allows.
class NotifiedBucket(S3Bucket):
    ownerIdentity: S3OwnerIdentify | None = None  # type: ignore[assignment]  # read nowhere: optional here
    arn: str | None = None  # type: ignore[assignment]  # never read: optional here


class NotifiedMessage(S3Message):
    s3SchemaVersion: str | None = None  # type: ignore[assignment]  # never read: optional here
    configurationId: str | None = None  # type: ignore[assignment]  # never read: optional here
    bucket: NotifiedBucket


class NotifiedRecord(S3RecordModel):
    """Powertools' S3 notification record as this function reads it: a record must come from S3 (eventSource), and
    only an ObjectCreated event needs its bucket name and object key (``parse_message``); the fields it never reads,
    which Powertools requires, are optional here, so the same messages are accepted as before the models."""

    eventSource: Literal["aws:s3"]  # no default: a record that does not say it is S3's is poison
    eventVersion: str | None = None  # type: ignore[assignment]  # never read: optional here
    awsRegion: str | None = None  # type: ignore[assignment]  # never read: optional here
    eventTime: datetime | None = None  # type: ignore[assignment]  # never read: optional here
    eventName: str = ""
    userIdentity: S3Identity | None = None  # type: ignore[assignment]  # never read: optional here
    requestParameters: S3RequestParameters | None = None  # type: ignore[assignment]  # never read: optional here
    responseElements: S3ResponseElements | None = None  # type: ignore[assignment]  # never read: optional here
    s3: NotifiedMessage | None = None  # type: ignore[assignment]  # never read: optional here

    @model_validator(mode="before")
    @classmethod
    def validate_s3_object(cls, values: Any) -> Any:
        """Replaces Powertools' rule that a non-delete event carries the object's size and eTag (only the key is
        read here)."""
        return values


class S3Notification(S3Model):
    """S3 event notifications in an SQS message body: Powertools' S3Model with the records above."""

    Records: list[NotifiedRecord] = Field(min_length=1)  # type: ignore[assignment]  # our record model


def _notification_problem(exc: ValidationError) -> str:
    """Why a body is not an S3 notification this function can read, without any value from it."""
    locs = [e["loc"] for e in exc.errors(include_url=False, include_input=False)]
    if any(len(loc) < 2 for loc in locs):
        return "not an S3 event notification, chunk or backfill message"
    if any(len(loc) == 2 or loc[2] == "eventSource" for loc in locs):
        return "a record is not an S3 event"
    return "an S3 event record without bucket name or object key"


def parse_message(body: str) -> list[Chunk] | None:
    """The chunks a message asks for; None for S3's test event (nothing to do); PoisonMessage otherwise."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, TypeError):
        raise PoisonMessage("the message body is not JSON") from None
    if not isinstance(data, dict):
        raise PoisonMessage("the message body is not a JSON object")
    try:
        S3TestEvent.model_validate(data)
        return None
    except ValidationError:
        pass  # not S3's test message
    if isinstance(data.get("chunk"), dict) or isinstance(data.get("backfill"), dict):
        spec = data.get("chunk") or data["backfill"]
        try:
            return [Chunk(str(spec["bucket"]), str(spec["key"]), int(spec.get("start", 0)), _opt_int(spec.get("stop")))]
        except (KeyError, TypeError, ValueError):
            raise PoisonMessage("a chunk or backfill message needs bucket, key and integer start/stop") from None
    try:
        notification = S3Notification.model_validate(data)
    except ValidationError as exc:
        raise PoisonMessage(_notification_problem(exc)) from None
    chunks = []
    for r in notification.Records:
        if not r.eventName.startswith("ObjectCreated:"):
            continue
        if r.s3 is None or r.s3.object is None:
            raise PoisonMessage("an S3 event record without bucket name or object key")
        chunks.append(Chunk(r.s3.bucket.name, unquote_plus(r.s3.object.key)))  # S3 URL-encodes keys
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
            parsed = json.loads(line)
        except json.JSONDecodeError:
            parsed = None
        yield i + 1, parsed if isinstance(parsed, dict) else {NOT_AN_OBJECT: True}


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
        report_uri: str,
        kms_key_id: str | None = None,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        self.s3, self.sqs, self.embedder, self.store = s3, sqs, embedder, store
        self.queue_url, self.chunk_rows = queue_url, chunk_rows
        self.report_uri, self.kms_key_id = report_uri, kms_key_id

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Ingestor:
        import boto3

        from chalicelib.similar.embedding import open_embedder
        from chalicelib.similar.vectors import open_vector_store

        s = settings.Settings.from_env(env)
        return cls(
            boto3.client("s3"),
            boto3.client("sqs"),
            open_embedder(env=env),
            open_vector_store(env=env),
            queue_url=s.ingest_queue_url,
            report_uri=s.ingest_report_uri or str(settings.home() / DEFAULT_REPORT_FOLDER),
            kms_key_id=s.ingest_kms_key,
            chunk_rows=s.ingest_chunk_rows,
        )

    # -- one message ----------------------------------------------------------------------------------------
    def handle(self, body: str) -> Report:
        report = Report()
        for chunk in parse_message(body) or []:
            self._chunk(chunk, report)
        return report

    def _chunk(self, chunk: Chunk, report: Report) -> None:
        check_format(chunk.key)  # before fetching: a PDF is poison whether or not it still exists
        source = self._get(chunk)
        rows = list(read_rows(source.body, chunk.key))
        if chunk.stop is None and chunk.start == 0 and len(rows) > self.chunk_rows:
            report.chunks_sent += self._fan_out(chunk, len(rows))
            return
        part, bad_rows = self._index(rows[chunk.start : chunk.stop])
        if bad_rows:  # after indexing: a failure before this point is retried, and the retry writes the report
            document = InvalidRowsReport(
                source=f"s3://{chunk.bucket}/{chunk.key}",
                version_id=source.version_id,
                etag=source.etag,
                start=chunk.start,
                stop=chunk.stop,
                rows=len(rows[chunk.start : chunk.stop]),
                indexed=part.indexed,
                excluded=part.excluded,
                unlabelled=part.unlabelled,
                invalid_rows=part.invalid,
                bad_rows=bad_rows,
            )
            part.reports.append(self._write_report(chunk, source, document))
        report.add(part)

    def _get(self, chunk: Chunk) -> Source:
        from botocore.exceptions import ClientError

        try:
            got = self.s3.get_object(Bucket=chunk.bucket, Key=chunk.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "NoSuchBucket"):
                raise PoisonMessage("the object no longer exists") from None
            raise
        # GetObjectOutput: ETag (quoted) and, in a versioned bucket, VersionId ("null" for an object stored before
        # versioning was enabled): botocore/data/s3/2006-03-01/service-2.json
        version_id = got.get("VersionId")
        return Source(got["Body"].read(), got["ETag"].strip('"'), None if version_id in (None, "null") else version_id)

    def _write_report(self, chunk: Chunk, source: Source, document: InvalidRowsReport) -> str:
        """PutObject to the same key on every delivery: a redelivery overwrites, never adds a second report."""
        body = document.model_dump_json(indent=2).encode()
        if self.report_uri.startswith("s3://"):
            bucket, _, prefix = self.report_uri[len("s3://") :].partition("/")
            key = report_key(prefix, chunk, source.version)
            # SSE-KMS as batch scoring writes its outputs (PutObjectRequest: ServerSideEncryption, SSEKMSKeyId)
            extra = {"ServerSideEncryption": "aws:kms", "ContentType": "application/json"}
            if self.kms_key_id:
                extra["SSEKMSKeyId"] = self.kms_key_id
            self.s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
            return f"s3://{bucket}/{key}"
        name = quote(report_key("", chunk, source.version), safe="")  # one flat file name per report (local runs)
        if len(name) > 200:
            name = f"{hashlib.sha256(name.encode()).hexdigest()}.json"
        path = Path(self.report_uri) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(body)
        tmp.replace(path)
        return str(path)

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

    def _index(self, rows: list[tuple[int, Mapping[str, Any]]]) -> tuple[Report, list[BadRow]]:
        part, bad_rows = Report(), []
        records, ids, outcomes = [], [], []
        for line, raw in rows:
            record, errors = parse_encounter(raw, require_target=True, require_ids=True)
            if errors:  # extra columns are ignored, as in batch scoring
                part.invalid += 1
                fields = ["(not a JSON object)"] if NOT_AN_OBJECT in raw else [e.field for e in errors]
                bad_rows.append(BadRow(line=line, fields=fields))
            elif is_excluded(record):
                part.excluded += 1
            elif record[TARGET] not in OUTCOMES:
                part.unlabelled += 1
            else:
                records.append(record)
                ids.append(record["encounter_id"])
                outcomes.append(record[TARGET])
        if records:
            part.indexed += index_rows(columns_from_records(records), ids, outcomes, self.embedder, self.store)
        telemetry.logger.info(
            "chunk indexed",
            extra={"indexed": part.indexed, "excluded": part.excluded, "invalid": part.invalid},
        )
        return part, bad_rows
