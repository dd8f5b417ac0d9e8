"""The online patient-history store, so history features online equal the batch ones.

Batch scoring (``features.history_in_file``) lets each encounter see only the same patient's encounters with
a smaller ``encounter_id``. The store keeps the four fields ``PatientHistory.add`` needs per (patient,
encounter) and aggregates them with that same accumulator, in ``encounter_id`` order, so both paths agree
whatever order encounters arrive in. Patients are keyed by ``identifiers.hash_id``: no PHI is stored.
Backends: SQLite (local default, stdlib) and DynamoDB (serverless).
"""

from __future__ import annotations

import numbers
import os
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from . import settings
from .aws_clients import LazyClient
from .features import PatientHistory

ENV_HISTORY = "READMIT_HISTORY"  # history store URI: dynamodb://table-name or a SQLite file path
DEFAULT_FILE = "history.sqlite3"
FIELDS = ("admission_type_id", "time_in_hospital", "number_inpatient", "discharge_disposition_id")
_DYNAMODB = "dynamodb://"


class HistoryStoreError(Exception):
    """Base class for history store failures."""


class IncompleteRecord(HistoryStoreError, KeyError):
    """The record lacks an integer value for a field the history needs."""


class InvalidEncounterId(HistoryStoreError, ValueError):
    """The encounter_id is not an integer, so it cannot be ordered against the others."""


class InvalidHistoryUri(HistoryStoreError, ValueError):
    """The URI names no history store backend this module knows."""


@runtime_checkable
class HistoryStore(Protocol):
    """What scoring needs: a patient's earlier encounters, and remembering new ones exactly once."""

    def history(self, patient_key: str, before_encounter: int | None) -> PatientHistory:
        """Aggregate of the patient's encounters with encounter_id < before_encounter (all if None)."""
        ...

    def record(self, patient_key: str, encounter_id: int, record: Mapping[str, Any]) -> bool:
        """Remember one encounter; True if new, False if (patient, encounter_id) was already stored."""
        ...


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral | float | str):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # '2.5', nan, inf
        return None
    return number if number == value or isinstance(value, str) else None


def _encounter_id(value: Any) -> int:
    number = _as_int(value)
    if number is None:
        raise InvalidEncounterId(f"encounter_id must be an integer, got {value!r}")
    return number


def _fields(record: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """The four history fields as ints (the batch path casts its columns the same way)."""
    out = []
    for name in FIELDS:
        number = _as_int(record.get(name))
        if number is None:
            raise IncompleteRecord(f"{name} must be an integer, got {record.get(name)!r}")
        out.append(number)
    return out[0], out[1], out[2], out[3]


class SQLiteHistoryStore:
    """Local embedded store: one WAL-mode SQLite file, one connection guarded by a lock (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        # Opened on first use, so constructing a store touches no disk; caller holds the lock.
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")  # readers in other processes never block the writer
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS encounters ("
                " patient_key TEXT NOT NULL, encounter_id INTEGER NOT NULL,"
                " admission_type_id INTEGER NOT NULL, time_in_hospital INTEGER NOT NULL,"
                " number_inpatient INTEGER NOT NULL, discharge_disposition_id INTEGER NOT NULL,"
                " PRIMARY KEY (patient_key, encounter_id)) WITHOUT ROWID"
            )
            self._conn = conn
        return self._conn

    def history(self, patient_key: str, before_encounter: int | None) -> PatientHistory:
        sql = f"SELECT {', '.join(FIELDS)} FROM encounters WHERE patient_key = ?"
        params: tuple[Any, ...] = (patient_key,)
        if before_encounter is not None:
            sql += " AND encounter_id < ?"
            params += (_encounter_id(before_encounter),)
        with self._lock:
            rows = self._connection().execute(sql + " ORDER BY encounter_id", params).fetchall()
        history = PatientHistory()
        for row in rows:
            history.add(*row)
        return history

    def record(self, patient_key: str, encounter_id: int, record: Mapping[str, Any]) -> bool:
        values = (patient_key, _encounter_id(encounter_id), *_fields(record))
        with self._lock:
            cursor = self._connection().execute(
                f"INSERT OR IGNORE INTO encounters (patient_key, encounter_id, {', '.join(FIELDS)})"
                " VALUES (?, ?, ?, ?, ?, ?)",
                values,
            )
            return cursor.rowcount == 1

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class DynamoDBHistoryStore:
    """One item per encounter: partition key patient_key (S), sort key encounter_id (N)."""

    def __init__(self, table_name: str, client: Any = None) -> None:
        self.table_name = table_name
        self._client = client

    client = LazyClient("dynamodb")

    def create_table(self) -> None:
        """Create the on-demand table (tests and local setup; deployments declare it in the template)."""
        from botocore.exceptions import ClientError  # with boto3, only on the AWS path

        try:
            self.client.create_table(
                TableName=self.table_name,
                KeySchema=[
                    {"AttributeName": "patient_key", "KeyType": "HASH"},
                    {"AttributeName": "encounter_id", "KeyType": "RANGE"},
                ],
                AttributeDefinitions=[
                    {"AttributeName": "patient_key", "AttributeType": "S"},
                    {"AttributeName": "encounter_id", "AttributeType": "N"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
        self.client.get_waiter("table_exists").wait(TableName=self.table_name)

    def history(self, patient_key: str, before_encounter: int | None) -> PatientHistory:
        condition = "patient_key = :p"
        values: dict[str, Any] = {":p": {"S": patient_key}}
        if before_encounter is not None:
            condition += " AND encounter_id < :before"
            values[":before"] = {"N": str(_encounter_id(before_encounter))}
        history = PatientHistory()
        pages = self.client.get_paginator("query").paginate(
            TableName=self.table_name,
            KeyConditionExpression=condition,
            ExpressionAttributeValues=values,
            ScanIndexForward=True,  # encounter_id order, like the batch accumulator
            ConsistentRead=True,  # an encounter recorded a moment ago must count, as it would in batch
        )
        for page in pages:
            for item in page.get("Items", []):
                history.add(*(int(item[name]["N"]) for name in FIELDS))
        return history

    def record(self, patient_key: str, encounter_id: int, record: Mapping[str, Any]) -> bool:
        item = {"patient_key": {"S": patient_key}, "encounter_id": {"N": str(_encounter_id(encounter_id))}}
        item.update({name: {"N": str(value)} for name, value in zip(FIELDS, _fields(record), strict=True)})
        from botocore.exceptions import ClientError  # with boto3, only on the AWS path

        try:
            self.client.put_item(
                TableName=self.table_name, Item=item, ConditionExpression="attribute_not_exists(encounter_id)"
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True


def open_history_store(uri: str | None = None, dynamodb_client: Any = None) -> HistoryStore:
    """dynamodb://table-name is DynamoDB; a path is SQLite; None means $READMIT_HISTORY, else home()/history.sqlite3."""
    text = uri or os.environ.get(ENV_HISTORY) or str(settings.home() / DEFAULT_FILE)
    if text.startswith(_DYNAMODB):
        table = text[len(_DYNAMODB) :].strip("/")
        if not table or "/" in table:
            raise InvalidHistoryUri(f"expected dynamodb://table-name, got {text!r}")
        return DynamoDBHistoryStore(table, dynamodb_client)
    if "://" in text:
        raise InvalidHistoryUri(f"unknown history store scheme in {text!r}; use dynamodb://table or a path")
    return SQLiteHistoryStore(Path(text).expanduser())
