"""The prediction audit log: one record per scored encounter, read back later by monitoring (drift, calibration).

Records hold hashes, never identifiers, plus the feature vector the model saw. NaN (a missing input) is
written as JSON null and read back as NaN. Records are partitioned by their UTC day (``dt=YYYY-MM-DD``) so a
time window reads only its days; the layout is the same in a local folder (JSON Lines, appended) and on S3
(one object per append, because S3 objects cannot be appended to).

The API writes through Amazon Data Firehose instead (chalicelib/serving/prediction_stream.py, ``firehose://STREAM``),
which delivers JSON Lines objects into the same ``dt=`` partitions of the S3 log, so S3PredictionLog reads both.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chalicelib.core import settings
from chalicelib.core.storage import S3Storage

ENV_PREDICTION_LOG = settings.ENV_PREDICTION_LOG  # s3://bucket/prefix or a folder (the API: also firehose://stream)
FIREHOSE_SCHEME = "firehose://"
DEFAULT_FOLDER = "predictions"
AUDIT_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed-width UTC: records sort by time as strings
_PARTITION = re.compile(r"dt=(\d{4}-\d{2}-\d{2})")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_OWN_SUFFIX = ".jsonl"  # S3PredictionLog.append's objects; Firehose's have no extension, ".gz" or ".jsonl.gz"
_GZIP_MAGIC = b"\x1f\x8b"  # RFC 1952 member header: Firehose's CompressionFormat GZIP, whatever the key's extension

# Firehose names a partition after "the approximate arrival timestamp of the oldest record that's contained in the
# Amazon S3 object being written" (https://docs.aws.amazon.com/firehose/latest/dev/s3-prefixes.html), in UTC, not
# after a record's own time. So a record can sit in the partition of a day *before* its ``at`` (an older record in
# the same buffer, at most one buffering interval older: BufferingHints.IntervalInSeconds is at most 900, see
# https://docs.aws.amazon.com/firehose/latest/APIReference/API_BufferingHints.html) or *after* it (it reached
# Firehose after midnight: queued in the API, retried). A read therefore also opens those neighbouring partitions
# for Firehose's objects and still filters every record by its ``at``.
FIREHOSE_MAX_BUFFER = timedelta(seconds=900)
FIREHOSE_MAX_LAG = timedelta(days=1)  # an assumption, not a documented bound: records reach Firehose within a day

# One lock for every local log in the process: two instances may point at the same folder.
_local_lock = threading.Lock()


class AuditLogError(Exception):
    """Base class for prediction log failures."""


class CorruptAuditLog(AuditLogError):
    """A complete line in the log is not a valid audit record."""


class InvalidLogUri(AuditLogError, ValueError):
    """The URI names no prediction log backend this module knows."""


def _utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (what datetime.utcnow() and most logs mean)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class AuditRecord(BaseModel):
    """One scored encounter as monitoring needs it; ``at`` is normalised to fixed-width UTC ISO (sortable)."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="null")

    request_id: str = Field(min_length=1)
    at: str
    model_version: str
    risk: float = Field(ge=0.0, le=1.0)
    risk_tier: str
    encounter_hash: str | None = None
    features: list[float]  # NaN = missing input; JSON null on disk
    # "shadow": a challenger scored the same request off the request path (chalicelib/monitoring/shadow.py): not the
    # record of care; readers of the record of care leave it out. Logs written before it existed read as before.
    source: Literal["api", "batch", "shadow"]
    caller: str | None = None  # the authenticated caller: a salted hash of the token's subject, never an email

    @field_validator("at", mode="before")
    @classmethod
    def _at_is_utc(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
            if value.tzinfo is None:
                raise ValueError("at must carry a timezone (UTC)")
        if isinstance(value, datetime):
            return _utc(value).strftime(AUDIT_TIME)
        return value

    @field_validator("features", mode="before")
    @classmethod
    def _null_is_nan(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [math.nan if v is None else v for v in value]
        return value

    @classmethod
    def scored(cls, **values: Any) -> AuditRecord:
        """A record from the scoring code's own values (``at`` already in AUDIT_TIME, features as floats with NaN):
        built without re-validation, which costs more than the prediction in a 500-row batch. Reading validates."""
        return cls.model_construct(**values)

    @property
    def timestamp(self) -> datetime:
        return datetime.fromisoformat(self.at)


@runtime_checkable
class PredictionLog(Protocol):
    """Where scoring writes audit records and monitoring reads them; LocalPredictionLog and S3PredictionLog."""

    def append(self, records: Sequence[AuditRecord]) -> None: ...

    def read(self, since: datetime | None = None, until: datetime | None = None) -> Iterator[AuditRecord]:
        """Records with since <= at < until (either bound optional), day by day; no order within a day."""
        ...


def _window(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    return (None if since is None else _utc(since)), (None if until is None else _utc(until))


def _day_in_window(day: date, lo: datetime | None, hi: datetime | None) -> bool:
    return (lo is None or day >= lo.date()) and (hi is None or day <= hi.date())


def _partition_day(name: str) -> date | None:
    match = _PARTITION.fullmatch(name)
    if match is None:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


def _by_day(records: Sequence[AuditRecord]) -> dict[tuple[str, str], list[str]]:
    """JSON lines grouped by (UTC day, UTC hour) of each record."""
    out: dict[tuple[str, str], list[str]] = {}
    for record in records:
        day, hour = record.at[:10], record.at[11:13]
        out.setdefault((day, hour), []).append(record.model_dump_json() + "\n")
    return out


def _parse_lines(lines: Iterable[bytes], where: str, lo: datetime | None, hi: datetime | None) -> Iterator[AuditRecord]:
    for number, line in enumerate(lines, 1):
        if not line.endswith(b"\n") or not line.strip():
            continue  # a write still in flight (or torn by a crash): not a record yet
        try:
            record = AuditRecord.model_validate_json(line)
        except ValidationError as exc:
            raise CorruptAuditLog(f"{where}:{number}: not an audit record ({exc.error_count()} errors)") from None
        t = record.timestamp
        if (lo is None or t >= lo) and (hi is None or t < hi):
            yield record


def _truncate_torn_tail(fh: Any) -> None:
    """Drop a partial last line left by a crash, so the next append does not glue onto it."""
    size = fh.seek(0, os.SEEK_END)
    if size == 0 or os.pread(fh.fileno(), 1, size - 1) == b"\n":
        return
    fh.truncate(os.pread(fh.fileno(), size, 0).rfind(b"\n") + 1)


class LocalPredictionLog:
    """JSON Lines under ``root/dt=YYYY-MM-DD/part-<pid>-<hour>.jsonl``; the pid keeps processes apart.

    The current part stays open (unbuffered: each append is one write to the OS, so a crash after a response
    loses nothing), because opening it per request cost more than writing the record."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._parts: dict[tuple[int, str, str], Any] = {}  # (pid, day, hour) → open file

    @property
    def uri(self) -> str:
        return str(self.root)

    def _part(self, day: str, hour: str) -> Any:
        """The open part for this process and hour (call with the lock held)."""
        key = (os.getpid(), day, hour)
        fh = self._parts.get(key)
        if fh is not None and os.fstat(fh.fileno()).st_nlink == 0:  # deleted or rotated away: start a new file
            fh.close()
            fh = None
        if fh is None:
            for old in self._parts.values():  # an hour's part is finished once the next one starts
                old.close()
            self._parts.clear()
            path = self.root / f"dt={day}" / f"part-{key[0]}-{hour}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(path, "a+b", buffering=0)  # readable, to check the tail  # noqa: SIM115 (kept open)
            _truncate_torn_tail(fh)
            self._parts[key] = fh
        return fh

    def append(self, records: Sequence[AuditRecord]) -> None:
        parts = _by_day(records)  # serialised before taking the lock
        with _local_lock:
            for (day, hour), lines in parts.items():
                self._part(day, hour).write("".join(lines).encode())  # one write per part: whole lines only

    def close(self) -> None:
        with _local_lock:
            for fh in self._parts.values():
                fh.close()
            self._parts.clear()

    def read(self, since: datetime | None = None, until: datetime | None = None) -> Iterator[AuditRecord]:
        lo, hi = _window(since, until)
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            day = _partition_day(folder.name)
            if day is None or not folder.is_dir() or not _day_in_window(day, lo, hi):
                continue
            for part in sorted(folder.glob("*.jsonl")):
                with open(part, "rb") as fh:
                    yield from _parse_lines(fh, str(part), lo, hi)


class S3PredictionLog:
    """One object per append (per UTC day it spans) at ``prefix/dt=YYYY-MM-DD/<request_id>-<uuid8>.jsonl``; reads
    those and the objects a Firehose stream delivers under the same ``dt=`` prefix (plain or GZIP JSON Lines)."""

    def __init__(self, bucket: str, prefix: str = DEFAULT_FOLDER, client: Any = None) -> None:
        self._s3 = S3Storage(bucket, prefix, client)  # the lazily built client and the URI live in one place
        self.bucket, self.prefix = self._s3.bucket, self._s3.prefix

    @property
    def client(self) -> Any:
        return self._s3.client

    @property
    def uri(self) -> str:
        return self._s3.uri

    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def append(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        name = _UNSAFE_KEY_CHARS.sub("_", records[0].request_id)[:64]
        days: dict[str, list[str]] = {}
        for (day, _hour), lines in _by_day(records).items():
            days.setdefault(day, []).extend(lines)
        for day, lines in days.items():
            key = f"{self._root()}dt={day}/{name}-{uuid.uuid4().hex[:8]}.jsonl"
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body="".join(lines).encode(), ContentType="application/x-ndjson"
            )

    def _list(self, prefix: str, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        yield from self.client.get_paginator("list_objects_v2").paginate(**kwargs)

    def read(self, since: datetime | None = None, until: datetime | None = None) -> Iterator[AuditRecord]:
        """Its own objects from the days of the window; Firehose's from those days widened by FIREHOSE_MAX_BUFFER
        before and FIREHOSE_MAX_LAG after (see above), all filtered by ``at``."""
        lo, hi = _window(since, until)
        wide_lo = None if lo is None else lo - FIREHOSE_MAX_BUFFER
        wide_hi = None if hi is None else hi + FIREHOSE_MAX_LAG
        root = self._root()
        partitions = sorted(
            p["Prefix"] for page in self._list(root, "/") for p in page.get("CommonPrefixes", [])
        )  # "prefix/dt=YYYY-MM-DD/"
        for partition in partitions:
            day = _partition_day(partition[len(root) :].rstrip("/"))
            if day is None or not _day_in_window(day, wide_lo, wide_hi):
                continue
            own_day = _day_in_window(day, lo, hi)
            keys = sorted(o["Key"] for page in self._list(partition) for o in page.get("Contents", []))
            for key in keys:
                kind = _object_kind(key)
                if kind is None or (kind == "own" and not own_day):
                    continue
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                yield from _parse_lines(_object_lines(body), f"s3://{self.bucket}/{key}", lo, hi)


def _object_kind(key: str) -> Literal["own", "firehose"] | None:
    """Which writer made an object in a partition, from its name; None for anything else (a folder marker, a note).
    Firehose names objects ``<stream>-<version>-<yyyy>-<MM>-<dd>-<HH>-<mm>-<ss>-<uuid><file extension>``, the
    extension empty, ".gz" for GZIP, or the stream's FileExtension
    (https://docs.aws.amazon.com/firehose/latest/dev/s3-object-name.html)."""
    name = key.rsplit("/", 1)[-1]
    if not name:
        return None
    if name.endswith(".gz"):
        return "firehose"
    if name.endswith(_OWN_SUFFIX):
        return "own"
    return "firehose" if "." not in name else None


def _object_lines(body: Any) -> Iterator[bytes]:
    """An S3 object's lines, streamed (a Firehose object holds up to 128 MB before compression), GZIP or not."""
    head = body.read(2)
    if head == _GZIP_MAGIC:
        with gzip.GzipFile(fileobj=_Prepended(head, body)) as unzipped:
            yield from unzipped
        return
    rest = body.read()
    yield from (head + rest).splitlines(keepends=True)


class _Prepended:
    """A readable whose first bytes were already read (to sniff the GZIP header)."""

    def __init__(self, head: bytes, body: Any) -> None:
        self._head, self._body = head, body

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            head, self._head = self._head, b""
            return head + self._body.read()
        head, self._head = self._head[:size], self._head[size:]
        return head + (self._body.read(size - len(head)) if size > len(head) else b"")

    def seek(self, offset: int, whence: int = 0) -> int:
        """Part of the file object GzipFile takes; it seeks only to rewind, which reading forward never does."""
        raise io.UnsupportedOperation("a streamed S3 body cannot seek")


def open_prediction_log(uri: str | None = None, s3_client: Any = None) -> PredictionLog:
    """s3://bucket/prefix is S3, a path a local folder; None means $READMIT_PREDICTION_LOG, else home()/predictions.
    A firehose://stream URI is the API's alone (prediction_stream.open_api_prediction_log): only the API may write
    to the stream, and readers read the S3 prefix it delivers to."""
    text = uri or settings.Settings.from_env().prediction_log or str(settings.home() / DEFAULT_FOLDER)
    if text.startswith(FIREHOSE_SCHEME):
        raise InvalidLogUri(
            f"{text!r} is a Firehose stream: only the API writes to it; read the s3:// prefix it delivers to"
        )
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            raise InvalidLogUri(f"missing bucket in {text!r}")
        return S3PredictionLog(bucket, prefix, s3_client)
    if "://" in text:
        raise InvalidLogUri(f"unknown prediction log scheme in {text!r}; use s3://bucket/prefix or a path")
    return LocalPredictionLog(Path(text).expanduser())
