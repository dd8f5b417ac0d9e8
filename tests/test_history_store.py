"""One contract suite for the online history store, run against SQLite and (moto) DynamoDB.

The point of the store is parity: online history features must equal what ``history_in_file`` computes in
batch, whatever order the encounters were recorded in.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws

from chalicelib.features.history import PatientHistory, history_in_file
from chalicelib.serving.history_store import (
    ENV_HISTORY,
    DynamoDBHistoryStore,
    HistoryStore,
    IncompleteRecord,
    InvalidEncounterId,
    InvalidHistoryUri,
    SQLiteHistoryStore,
    open_history_store,
)
from tests.helpers import errors_in_threads

DISCHARGES = (1, 3, 6, 22)


def encounter(admission: int = 1, los: int = 3, inpatient: int = 0, discharge: int = 1) -> dict[str, int]:
    return {
        "admission_type_id": admission,
        "time_in_hospital": los,
        "number_inpatient": inpatient,
        "discharge_disposition_id": discharge,
    }


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    if request.param == "sqlite":
        sqlite = SQLiteHistoryStore(tmp_path / "state" / "history.sqlite3")
        yield sqlite
        sqlite.close()
        return
    with mock_aws():
        dynamo = DynamoDBHistoryStore("history", boto3.client("dynamodb"))
        dynamo.create_table()
        yield dynamo


# ---- the contract ---------------------------------------------------------------------------------------------
def test_a_patient_without_records_has_an_empty_history(store: HistoryStore) -> None:
    assert store.history("nobody", None) == PatientHistory()
    assert store.history("nobody", 10) == PatientHistory()


def test_history_before_an_encounter_sees_only_smaller_ids_even_when_recorded_out_of_order(
    store: HistoryStore,
) -> None:
    # GIVEN three encounters recorded latest-first
    store.record("p", 30, encounter(admission=3, los=7, inpatient=4, discharge=3))
    store.record("p", 10, encounter(admission=1, los=2, inpatient=1, discharge=1))
    store.record("p", 20, encounter(admission=1, los=5, inpatient=2, discharge=22))

    # THEN each cut-off sees exactly the encounters with a strictly smaller id
    assert store.history("p", 10).as_row() == (0, 0, 0, 0, 0)
    assert store.history("p", 11).as_row() == (1, 1, 2, 1, 0)
    assert store.history("p", 20).as_row() == (1, 1, 2, 1, 0)
    assert store.history("p", 30).as_row() == (2, 2, 7, 2, 0)
    assert store.history("p", 31).as_row() == (3, 2, 14, 4, 1)
    assert store.history("p", None).as_row() == (3, 2, 14, 4, 1)


@pytest.mark.slow
def test_recording_the_same_encounter_twice_counts_it_once(store: HistoryStore) -> None:
    assert store.record("p", 5, encounter(los=4)) is True
    assert store.record("p", 5, encounter(los=4)) is False
    # a retry carrying different values does not overwrite the first write either
    assert store.record("p", 5, encounter(los=9)) is False
    assert store.history("p", None).as_row() == (1, 1, 4, 0, 0)


def test_patients_are_isolated(store: HistoryStore) -> None:
    store.record("alice", 1, encounter(los=2))
    store.record("bob", 2, encounter(los=6, discharge=3))
    store.record("bob", 3, encounter(los=1))

    assert store.history("alice", None).as_row() == (1, 1, 2, 0, 0)
    assert store.history("bob", None).as_row() == (2, 2, 7, 0, 1)
    # the same encounter id under another patient is a different item
    assert store.record("alice", 2, encounter()) is True


@pytest.mark.slow
def test_numpy_and_string_integers_are_accepted_as_the_batch_path_casts_them(store: HistoryStore) -> None:
    assert store.record("p", np.int64(7), encounter(admission=np.int64(1), los=np.float64(3.0))) is True  # type: ignore[arg-type]
    assert store.record("p", 7, encounter()) is False
    assert store.history("p", np.int64(8)).as_row() == (1, 1, 3, 0, 0)  # type: ignore[arg-type]


def test_a_record_missing_a_history_field_is_rejected_and_nothing_is_stored(store: HistoryStore) -> None:
    incomplete = encounter()
    del incomplete["number_inpatient"]
    with pytest.raises(IncompleteRecord, match="number_inpatient"):
        store.record("p", 1, incomplete)
    with pytest.raises(IncompleteRecord, match="time_in_hospital"):
        store.record("p", 1, {**encounter(), "time_in_hospital": 2.5})
    with pytest.raises(InvalidEncounterId):
        store.record("p", "first", encounter())  # type: ignore[arg-type]
    assert store.history("p", None).encounters == 0


@pytest.mark.slow
def test_online_history_equals_batch_history_for_every_encounter(store: HistoryStore) -> None:
    # GIVEN ~200 synthetic encounters over 30 patients, with unique encounter ids in random order
    rng = random.Random(20240501)
    n = 200
    patients = [f"patient-{rng.randrange(30)}" for _ in range(n)]
    encounter_ids = rng.sample(range(1, 1_000_000), n)
    cols = {
        "admission_type_id": np.array([rng.choice((1, 2, 3, 5, 6, 7, 8)) for _ in range(n)], dtype=np.float64),
        "time_in_hospital": np.array([rng.randint(1, 14) for _ in range(n)], dtype=np.float64),
        "number_inpatient": np.array([rng.choice((0, 0, 0, 1, 2, 3, 5, 9)) for _ in range(n)], dtype=np.float64),
        "discharge_disposition_id": np.array([rng.choice(DISCHARGES) for _ in range(n)], dtype=np.float64),
    }
    batch = history_in_file(patients, encounter_ids, cols)
    assert (batch[:, 0] > 0).sum() > 100  # most encounters do have earlier history: the check has teeth

    # WHEN every encounter is recorded online (in file order, not id order)
    for i in range(n):
        record = {name: cols[name][i] for name in cols}
        assert store.record(patients[i], encounter_ids[i], record) is True

    # THEN every encounter's online history equals its batch row
    for i in range(n):
        online = store.history(patients[i], encounter_ids[i]).as_row()
        assert online == tuple(int(v) for v in batch[i]), f"encounter {encounter_ids[i]} of {patients[i]}"


# ---- SQLite specifics -------------------------------------------------------------------------------------------
def test_sqlite_store_creates_nothing_until_first_use(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "history.sqlite3"
    store = SQLiteHistoryStore(path)
    assert not path.parent.exists()
    store.record("p", 1, encounter())
    assert path.is_file()
    store.close()


def test_sqlite_store_uses_write_ahead_logging(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "history.sqlite3"
    store = SQLiteHistoryStore(path)
    store.record("p", 1, encounter())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_sqlite_store_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    first = SQLiteHistoryStore(path)
    first.record("p", 1, encounter(los=5))
    first.close()
    second = SQLiteHistoryStore(path)
    assert second.history("p", None).as_row() == (1, 1, 5, 0, 0)
    assert second.record("p", 1, encounter(los=5)) is False
    second.close()


@pytest.mark.slow
def test_sqlite_store_is_safe_from_several_threads_at_once(tmp_path: Path) -> None:
    store = SQLiteHistoryStore(tmp_path / "history.sqlite3")

    def work(t: int) -> None:
        for k in range(50):
            # each thread writes its own patient and a shared one, and reads while others write
            store.record(f"own-{t}", k, encounter(los=1 + k % 14))
            store.record("shared", t * 1000 + k, encounter(discharge=3))
            store.history("shared", None)

    errors = errors_in_threads(work, 4)
    assert errors == []
    assert store.history("shared", None).as_row() == (200, 200, 600, 0, 200)
    for t in range(4):
        assert store.history(f"own-{t}", None).encounters == 50
        assert store.history(f"own-{t}", None).days == sum(1 + k % 14 for k in range(50))
    store.close()


# ---- choosing a backend -----------------------------------------------------------------------------------------
def test_open_history_store_defaults_to_sqlite_in_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("READMIT_HOME", str(tmp_path))
    monkeypatch.delenv(ENV_HISTORY, raising=False)
    store = open_history_store(None)
    assert isinstance(store, SQLiteHistoryStore)
    assert store.path == tmp_path / "history.sqlite3"


def test_open_history_store_reads_the_environment_when_no_uri_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_HISTORY, "dynamodb://readmit-history")
    store = open_history_store(None)
    assert isinstance(store, DynamoDBHistoryStore)
    assert store.table_name == "readmit-history"
    # an explicit URI wins over the environment
    explicit = open_history_store(str(tmp_path / "h.db"))
    assert isinstance(explicit, SQLiteHistoryStore)
    assert explicit.path == tmp_path / "h.db"


def test_open_history_store_rejects_unknown_schemes_and_empty_tables() -> None:
    with pytest.raises(InvalidHistoryUri):
        open_history_store("dynamodb://")
    with pytest.raises(InvalidHistoryUri):
        open_history_store("s3://bucket/history")


def test_dynamodb_store_builds_no_client_until_used() -> None:
    store = DynamoDBHistoryStore("history")
    assert store._client is None


@pytest.mark.slow
def test_dynamodb_history_pages_through_large_histories() -> None:
    with mock_aws():
        client = boto3.client("dynamodb")
        store = DynamoDBHistoryStore("history", client)
        store.create_table()
        store.create_table()  # idempotent for local setup scripts
        calls: list[dict] = []
        paginator = client.get_paginator("query")
        original = paginator.paginate

        def small_pages(**kwargs: object) -> object:
            calls.append(kwargs)
            return original(**kwargs, PaginationConfig={"PageSize": 3})

        paginator.paginate = small_pages  # type: ignore[method-assign]
        client.get_paginator = lambda name: paginator  # type: ignore[method-assign]
        for eid in range(1, 11):
            store.record("p", eid, encounter(los=eid))
        assert store.history("p", 11).as_row() == (10, 10, 55, 0, 0)
        assert store.history("p", 6).as_row() == (5, 5, 15, 0, 0)
        assert all(call["ConsistentRead"] is True for call in calls)
        # the answer above really spanned several pages
        pages = list(original(**calls[0], PaginationConfig={"PageSize": 3}))
        assert len(pages) >= 4


# ---- no raw encounter_id at rest (issue #20) -------------------------------------------------------------------
RAW_IDS = (314159265, 271828182, 1_000_003, 86753090)
OLD_SCHEMA = (  # the table before encounter ids were hashed
    "CREATE TABLE encounters ("
    " patient_key TEXT NOT NULL, encounter_id INTEGER NOT NULL,"
    " admission_type_id INTEGER NOT NULL, time_in_hospital INTEGER NOT NULL,"
    " number_inpatient INTEGER NOT NULL, discharge_disposition_id INTEGER NOT NULL,"
    " PRIMARY KEY (patient_key, encounter_id)) WITHOUT ROWID"
)


def encodings(value: int) -> list[bytes]:
    """How a raw id could sit in a file: its digits, or SQLite's big-endian 4/6/8-byte integer."""
    return [str(value).encode(), value.to_bytes(4, "big"), value.to_bytes(6, "big"), value.to_bytes(8, "big")]


def file_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def test_the_sqlite_file_holds_no_raw_encounter_id(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "history.sqlite3"
    store = SQLiteHistoryStore(path, salt="s3cret")
    for i, eid in enumerate(RAW_IDS):
        store.record("p", eid, encounter(los=1 + i))
    assert store.history("p", 300_000_000).as_row() == (3, 3, 2 + 3 + 4, 0, 0)  # the cut-off still works
    store.close()
    data = file_bytes(path)
    assert data  # the check reads something
    for eid in RAW_IDS:
        for needle in encodings(eid):
            assert needle not in data, f"encounter {eid} is stored as {needle!r}"
    with sqlite3.connect(path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(encounters)")}
    assert "encounter_id" not in columns


def test_encounter_keys_are_the_salted_hash_every_other_module_uses(tmp_path: Path) -> None:
    import sqlite3

    from chalicelib.core.identifiers import hash_id

    path = tmp_path / "history.sqlite3"
    store = SQLiteHistoryStore(path, salt="s3cret")
    store.record("p", 42, encounter())
    store.close()
    with sqlite3.connect(path) as conn:
        [(key,)] = conn.execute("SELECT encounter_key FROM encounters").fetchall()
    assert key == hash_id(42, "s3cret", kind="encounter")


@pytest.mark.parametrize("eid", [0, 1, -5, 123456789, 2**63 + 11, -(2**127)])
def test_the_order_key_opens_only_with_the_salt(eid: int) -> None:
    from chalicelib.serving.history_store import encounter_key, seal, unseal

    key = encounter_key(eid, "salt-a")
    sealed = seal(eid, key, "salt-a")
    assert unseal(sealed, key, "salt-a") == eid
    assert int(sealed, 16) != eid % 2**128  # the id XOR a pad, not the id
    assert unseal(sealed, key, "salt-b") != eid


def test_an_encounter_id_beyond_127_bits_is_rejected(tmp_path: Path) -> None:
    store = SQLiteHistoryStore(tmp_path / "h.sqlite3", salt="s")
    with pytest.raises(InvalidEncounterId):
        store.record("p", 2**127, encounter())
    store.close()


def test_an_old_store_is_migrated_on_open_with_identical_history(tmp_path: Path) -> None:
    import sqlite3

    # GIVEN a store written before hashing: raw encounter ids, two patients
    path = tmp_path / "history.sqlite3"
    rows = [("p", 10, 1, 2, 1, 1), ("p", 30, 3, 7, 4, 3), ("p", 20, 1, 5, 2, 22), ("q", 86753090, 2, 4, 0, 1)]
    rows += [("r", eid, 1, 3, 0, 1) for eid in RAW_IDS]
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(OLD_SCHEMA)
    conn.executemany("INSERT INTO encounters VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    assert any(needle in file_bytes(path) for needle in encodings(314159265))  # the check has teeth

    # WHEN the store opens it
    store = SQLiteHistoryStore(path, salt="s3cret")

    # THEN history is what it was, duplicates are still recognised, and no raw id remains in the file
    assert store.history("p", 20).as_row() == (1, 1, 2, 1, 0)
    assert store.history("p", 31).as_row() == (3, 2, 14, 4, 1)
    assert store.history("q", None).as_row() == (1, 0, 4, 0, 0)
    assert store.history("r", 300_000_000).encounters == 3
    assert store.record("p", 20, encounter()) is False
    assert store.record("p", 40, encounter()) is True
    store.close()
    data = file_bytes(path)
    for eid in (*RAW_IDS, 86753090):
        for needle in encodings(eid):
            assert needle not in data, f"encounter {eid} survived the migration as {needle!r}"
    # a second open finds the new schema and leaves it alone
    again = SQLiteHistoryStore(path, salt="s3cret")
    assert again.history("p", None).encounters == 4
    again.close()


def test_a_failed_migration_leaves_the_old_store_intact(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "history.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(OLD_SCHEMA)
    conn.executemany(
        "INSERT INTO encounters VALUES (?, ?, ?, ?, ?, ?)", [("p", 1, 1, 2, 0, 1), ("p", "not-a-number", 1, 2, 0, 1)]
    )
    conn.commit()
    conn.close()
    store = SQLiteHistoryStore(path, salt="s")
    with pytest.raises(InvalidEncounterId):
        store.history("p", None)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM encounters WHERE encounter_id = 1").fetchone() == (1,)


def test_dynamodb_items_hold_no_raw_encounter_id() -> None:
    with mock_aws():
        client = boto3.client("dynamodb")
        store = DynamoDBHistoryStore("history", client, salt="s3cret")
        store.create_table()
        for eid in RAW_IDS:
            store.record("p", eid, encounter())
        items = client.scan(TableName="history", ConsistentRead=True)["Items"]
        assert len(items) == len(RAW_IDS)
        text = repr(items)
        for eid in RAW_IDS:
            assert str(eid) not in text
        assert all("encounter_id" not in item for item in items)
        assert store.history("p", 300_000_000).encounters == 3


def test_the_dynamodb_one_off_copies_a_legacy_table_hashed_and_can_run_again() -> None:
    with mock_aws():
        client = boto3.client("dynamodb")
        client.create_table(  # the old shape: sort key encounter_id (N)
            TableName="legacy",
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
        for patient, eid, los in (("p", 10, 2), ("p", 30, 7), ("p", 20, 5), ("q", 314159265, 3)):
            item = {"patient_key": {"S": patient}, "encounter_id": {"N": str(eid)}}
            item.update({k: {"N": str(v)} for k, v in encounter(los=los).items()})
            client.put_item(TableName="legacy", Item=item)
        store = DynamoDBHistoryStore("history", client, salt="s3cret")
        store.create_table()

        assert store.copy_legacy_table("legacy") == (4, 0)
        assert store.history("p", 30).as_row() == (2, 2, 7, 0, 0)
        assert store.history("q", None).encounters == 1
        assert "314159265" not in repr(client.scan(TableName="history")["Items"])
        assert store.copy_legacy_table("legacy") == (0, 4)  # idempotent: safe to rerun after the switch
