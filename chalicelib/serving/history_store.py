"""The online patient-history store, so history features online equal the batch ones.

Batch scoring (``features.history_in_file``) lets each encounter see only the same patient's encounters with
a smaller ``encounter_id``. The store keeps the four fields ``PatientHistory.add`` needs per (patient,
encounter) and aggregates them with that same accumulator, so both paths agree whatever order encounters
arrive in. No PHI is stored: patients and encounters are keyed by ``identifiers.hash_id`` (salted HMACs), and
the "smaller encounter_id" cut-off is computed from ``encounter_order``, the encounter_id XORed with a salted
HMAC pad (``seal``), which only the salt opens. That exposes nothing the hash does not: anyone holding the salt
can already recover a small integer id from its hash by enumeration; without the salt both are random.
Backends: SQLite (local default, stdlib) and DynamoDB (serverless). A SQLite file from before this scheme
(raw ``encounter_id`` column) is rewritten hashed on open, in one transaction, and its free pages zeroed.
"""

from __future__ import annotations

import contextlib
import numbers
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from chalicelib.core import settings
from chalicelib.core.aws_clients import LazyClient
from chalicelib.core.identifiers import current_salt, hash_id
from chalicelib.features.history import PatientHistory

ENV_HISTORY = settings.ENV_HISTORY  # history store URI: dynamodb://table-name or a SQLite file path
DEFAULT_FILE = "history.sqlite3"
FIELDS = ("admission_type_id", "time_in_hospital", "number_inpatient", "discharge_disposition_id")
_DYNAMODB = "dynamodb://"
ENCOUNTER_KIND = "encounter"  # the hash_id namespace every other encounter hash uses (audit log, outcomes, index)
ORDER_KIND = "encounter-order"  # the pad that seals the order key, keyed like every hash, in its own namespace
_ORDER_BITS = 128  # hash_id's 32 hex characters


class HistoryStoreError(Exception):
    """Base class for history store failures."""


class IncompleteRecord(HistoryStoreError, KeyError):
    """The record lacks an integer value for a field the history needs."""


class InvalidEncounterId(HistoryStoreError, ValueError):
    """The encounter_id is not an integer (or beyond 127 bits), so it cannot be ordered against the others."""


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
    if not -(1 << (_ORDER_BITS - 1)) <= number < 1 << (_ORDER_BITS - 1):
        raise InvalidEncounterId("encounter_id is beyond 127 bits")
    return number


def encounter_key(encounter_id: int, salt: str) -> str:
    """The stored encounter identity: the salted hash the audit log and the outcomes use."""
    return hash_id(encounter_id, salt, kind=ENCOUNTER_KIND)


def _pad(key: str, salt: str) -> int:
    return int(hash_id(key, salt, kind=ORDER_KIND), 16)


def seal(encounter_id: int, key: str, salt: str) -> str:
    """The order key: the id (two's complement, 128 bits) XOR a pad derived from its hash, as 32 hex digits.
    The pad is a PRF of the id, so every id gets its own one-time pad; without the salt the value is random."""
    return format((encounter_id % (1 << _ORDER_BITS)) ^ _pad(key, salt), "032x")


def unseal(sealed: str, key: str, salt: str) -> int:
    """The encounter_id back from ``seal``'s output, to compare with a cut-off in memory (never stored)."""
    value = int(sealed, 16) ^ _pad(key, salt)
    return value - (1 << _ORDER_BITS) if value >= 1 << (_ORDER_BITS - 1) else value


def _aggregate(rows: list[tuple[str, str, tuple[int, ...]]], before: int | None, salt: str) -> PatientHistory:
    """PatientHistory of the rows (key, sealed order, fields: one int per FIELDS name) whose encounter_id is below
    ``before``, in encounter_id order like the batch accumulator."""
    opened = sorted((unseal(sealed, key, salt), fields) for key, sealed, fields in rows)
    history = PatientHistory()
    for encounter_id, fields in opened:
        if before is None or encounter_id < before:
            history.add(*fields)
    return history


def _fields(record: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """The four history fields as ints (the batch path casts its columns the same way)."""
    out = []
    for name in FIELDS:
        number = _as_int(record.get(name))
        if number is None:
            raise IncompleteRecord(f"{name} must be an integer, got {record.get(name)!r}")
        out.append(number)
    return out[0], out[1], out[2], out[3]


_COLUMNS = "patient_key, encounter_key, encounter_order, " + ", ".join(FIELDS)
_CREATE = (
    "CREATE TABLE {name} ("
    " patient_key TEXT NOT NULL, encounter_key TEXT NOT NULL, encounter_order TEXT NOT NULL,"
    " admission_type_id INTEGER NOT NULL, time_in_hospital INTEGER NOT NULL,"
    " number_inpatient INTEGER NOT NULL, discharge_disposition_id INTEGER NOT NULL,"
    " PRIMARY KEY (patient_key, encounter_key)) WITHOUT ROWID"
)


class SQLiteHistoryStore:
    """Local embedded store: one WAL-mode SQLite file, one connection guarded by a lock (thread-safe). ``salt``
    defaults to ``identifiers.current_salt()`` at each call, the salt the patient keys were made with."""

    def __init__(self, path: Path, salt: str | None = None) -> None:
        self.path = Path(path)
        self.salt = salt
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _salt(self) -> str:
        return self.salt or current_salt()

    def _connection(self) -> sqlite3.Connection:
        # Opened on first use, so constructing a store touches no disk; caller holds the lock.
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")  # readers in other processes never block the writer
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA secure_delete=ON")  # a deleted row's bytes are zeroed, not left in free pages
            try:
                migrated = self._prepare(conn)
            except BaseException:
                conn.close()
                raise
            if migrated:  # push the zeroed pages into the main file and empty the WAL
                with contextlib.suppress(sqlite3.OperationalError):  # another process busy: the next checkpoint
                    conn.execute("VACUUM")
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn = conn
        return self._conn

    def _prepare(self, conn: sqlite3.Connection) -> bool:
        """Create the table, or rewrite a store from before hashing (raw encounter_id column); True if migrated.
        Under one write lock, so two processes opening an old file at once migrate it once."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(encounters)")}
            migrated = "encounter_id" in columns
            if not columns:
                conn.execute(_CREATE.format(name="encounters"))
            elif migrated:
                salt = self._salt()
                rows = conn.execute(f"SELECT patient_key, encounter_id, {', '.join(FIELDS)} FROM encounters")
                conn.execute(_CREATE.format(name="encounters_hashed"))
                conn.executemany(
                    f"INSERT INTO encounters_hashed ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (_row(patient, _encounter_id(eid), fields, salt) for patient, eid, *fields in rows.fetchall()),
                )
                conn.execute("DROP TABLE encounters")
                conn.execute("ALTER TABLE encounters_hashed RENAME TO encounters")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return migrated

    def history(self, patient_key: str, before_encounter: int | None) -> PatientHistory:
        before = _encounter_id(before_encounter) if before_encounter is not None else None
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    f"SELECT encounter_key, encounter_order, {', '.join(FIELDS)} FROM encounters WHERE patient_key = ?",
                    (patient_key,),
                )
                .fetchall()
            )
        return _aggregate([(key, sealed, tuple(fields)) for key, sealed, *fields in rows], before, self._salt())

    def record(self, patient_key: str, encounter_id: int, record: Mapping[str, Any]) -> bool:
        values = _row(patient_key, _encounter_id(encounter_id), _fields(record), self._salt())
        with self._lock:
            cursor = self._connection().execute(
                f"INSERT OR IGNORE INTO encounters ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", values
            )
            return cursor.rowcount == 1

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _row(patient_key: str, encounter_id: int, fields: Any, salt: str) -> tuple[Any, ...]:
    key = encounter_key(encounter_id, salt)
    return (patient_key, key, seal(encounter_id, key, salt), *fields)


class DynamoDBHistoryStore:
    """One item per encounter: partition key patient_key (S), sort key encounter_key (S, the encounter hash), and
    encounter_order (S, ``seal``). The cut-off is applied after the query, so a query reads the patient's whole
    history (tens of items); the aggregate does not depend on the order the items come back in."""

    def __init__(self, table_name: str, client: Any = None, salt: str | None = None) -> None:
        self.table_name = table_name
        self._client = client
        self.salt = salt

    client = LazyClient("dynamodb")

    def _salt(self) -> str:
        return self.salt or current_salt()

    def create_table(self) -> None:
        """Create the on-demand table (tests and local setup; deployments declare it in the template)."""
        from botocore.exceptions import ClientError  # with boto3, only on the AWS path

        try:
            self.client.create_table(
                TableName=self.table_name,
                KeySchema=[
                    {"AttributeName": "patient_key", "KeyType": "HASH"},
                    {"AttributeName": "encounter_key", "KeyType": "RANGE"},
                ],
                AttributeDefinitions=[
                    {"AttributeName": "patient_key", "AttributeType": "S"},
                    {"AttributeName": "encounter_key", "AttributeType": "S"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
        self.client.get_waiter("table_exists").wait(TableName=self.table_name)

    def history(self, patient_key: str, before_encounter: int | None) -> PatientHistory:
        before = _encounter_id(before_encounter) if before_encounter is not None else None
        pages = self.client.get_paginator("query").paginate(
            TableName=self.table_name,
            KeyConditionExpression="patient_key = :p",
            ExpressionAttributeValues={":p": {"S": patient_key}},
            ConsistentRead=True,  # an encounter recorded a moment ago must count, as it would in batch
        )
        rows = [
            (item["encounter_key"]["S"], item["encounter_order"]["S"], tuple(int(item[n]["N"]) for n in FIELDS))
            for page in pages
            for item in page.get("Items", [])
        ]
        return _aggregate(rows, before, self._salt())

    def record(self, patient_key: str, encounter_id: int, record: Mapping[str, Any]) -> bool:
        _, key, sealed, *fields = _row(patient_key, _encounter_id(encounter_id), _fields(record), self._salt())
        item = {"patient_key": {"S": patient_key}, "encounter_key": {"S": key}, "encounter_order": {"S": sealed}}
        item.update({name: {"N": str(value)} for name, value in zip(FIELDS, fields, strict=True)})
        from botocore.exceptions import ClientError  # with boto3, only on the AWS path

        try:
            self.client.put_item(
                TableName=self.table_name, Item=item, ConditionExpression="attribute_not_exists(encounter_key)"
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def copy_legacy_table(self, source_table: str) -> tuple[int, int]:
        """The one-off DynamoDB migration: every item of a table in the old shape (sort key encounter_id, N) is
        written here hashed; (copied, already present). Idempotent (conditional puts), so it can run again after
        the API has switched tables to pick up encounters recorded meanwhile. Scan with ConsistentRead:
        botocore/data/dynamodb/2012-08-10/service-2.json (Scan; ConsistentRead, LastEvaluatedKey pagination)."""
        copied = present = 0
        for page in self.client.get_paginator("scan").paginate(TableName=source_table, ConsistentRead=True):
            for item in page.get("Items", []):
                fields = {name: int(item[name]["N"]) for name in FIELDS}
                new = self.record(item["patient_key"]["S"], int(item["encounter_id"]["N"]), fields)
                copied, present = copied + new, present + (not new)
        return copied, present


def open_history_store(uri: str | None = None, dynamodb_client: Any = None) -> HistoryStore:
    """dynamodb://table-name is DynamoDB; a path is SQLite; None means $READMIT_HISTORY, else home()/history.sqlite3."""
    text = uri or settings.Settings.from_env().history or str(settings.home() / DEFAULT_FILE)
    if text.startswith(_DYNAMODB):
        table = text[len(_DYNAMODB) :].strip("/")
        if not table or "/" in table:
            raise InvalidHistoryUri(f"expected dynamodb://table-name, got {text!r}")
        return DynamoDBHistoryStore(table, dynamodb_client)
    if "://" in text:
        raise InvalidHistoryUri(f"unknown history store scheme in {text!r}; use dynamodb://table or a path")
    return SQLiteHistoryStore(Path(text).expanduser())
