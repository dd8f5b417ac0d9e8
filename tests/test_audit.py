"""One contract suite for the prediction audit log, run against a local folder and (moto) S3."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from chalicelib.core.audit import (
    ENV_PREDICTION_LOG,
    AuditRecord,
    CorruptAuditLog,
    InvalidLogUri,
    LocalPredictionLog,
    PredictionLog,
    S3PredictionLog,
    open_prediction_log,
)
from tests.helpers import errors_in_threads, moto_s3

NOON = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)


def audit(request_id: str = "req-1", at: datetime = NOON, features: list | None = None, **kw: object) -> AuditRecord:
    fields: dict = {
        "request_id": request_id,
        "at": at.isoformat(),
        "model_version": "v3",
        "risk": 0.25,
        "risk_tier": "medium",
        "encounter_hash": "ab" * 16,
        "features": [1.0, 2.5, 0.0] if features is None else features,
        "source": "api",
    }
    fields.update(kw)
    return AuditRecord(**fields)


def same(a: AuditRecord, b: AuditRecord) -> bool:
    """Equality that treats NaN as equal to NaN (the model's == does not)."""
    fa, fb = a.model_dump(exclude={"features"}), b.model_dump(exclude={"features"})
    return fa == fb and [repr(x) for x in a.features] == [repr(x) for x in b.features]


@pytest.fixture(params=["local", "s3"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PredictionLog]:
    if request.param == "local":
        yield LocalPredictionLog(tmp_path / "predictions")
        return
    with moto_s3("audit") as client:
        yield S3PredictionLog("audit", "predictions", client)


# ---- the record -------------------------------------------------------------------------------------------------
def test_at_is_normalised_to_fixed_width_utc() -> None:
    east = timezone(timedelta(hours=5))
    record = audit(at=datetime(2024, 3, 11, 2, 30, tzinfo=east))
    assert record.at == "2024-03-10T21:30:00.000000Z"
    assert record.timestamp == datetime(2024, 3, 10, 21, 30, tzinfo=UTC)
    assert audit(at=NOON).at < audit(at=NOON + timedelta(microseconds=1)).at  # sortable as text


def test_a_timestamp_without_timezone_is_rejected() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        audit(at=datetime(2024, 3, 10, 12, 0))


def test_unknown_source_and_out_of_range_risk_are_rejected() -> None:
    with pytest.raises(ValidationError):
        audit(source="cron")
    with pytest.raises(ValidationError):
        audit(risk=1.5)


def test_nan_features_are_written_as_null_and_read_back_as_nan() -> None:
    record = audit(features=[1.0, math.nan, None, 3.0])
    assert math.isnan(record.features[1]) and math.isnan(record.features[2])  # None (the service's form) is NaN
    line = record.model_dump_json()
    assert json.loads(line)["features"] == [1.0, None, None, 3.0]  # valid JSON: no bare NaN token
    assert "NaN" not in line
    back = AuditRecord.model_validate_json(line)
    assert back.features[0] == 1.0 and back.features[3] == 3.0
    assert math.isnan(back.features[1]) and math.isnan(back.features[2])


# ---- the contract -----------------------------------------------------------------------------------------------
def test_appended_records_read_back_identically(log: PredictionLog) -> None:
    records = [
        audit("req-1", NOON, [1.0, math.nan, 3.0]),
        audit("req-1", NOON + timedelta(seconds=1), [0.5, 0.0, math.nan], encounter_hash=None, source="batch"),
    ]
    log.append(records)
    back = sorted(log.read(), key=lambda r: r.at)
    assert len(back) == 2
    assert all(same(a, b) for a, b in zip(records, back, strict=True))
    assert math.isnan(back[0].features[1]) and back[1].encounter_hash is None and back[1].source == "batch"


@pytest.mark.slow
def test_an_empty_append_writes_nothing(log: PredictionLog) -> None:
    log.append([])
    assert list(log.read()) == []


def test_reading_a_log_that_was_never_written_yields_nothing(log: PredictionLog) -> None:
    assert list(log.read(NOON - timedelta(days=1), NOON)) == []


@pytest.mark.slow
def test_read_filters_by_time_half_open(log: PredictionLog) -> None:
    # GIVEN records over three days, including two either side of midnight
    times = [
        NOON - timedelta(days=1),
        datetime(2024, 3, 10, 23, 59, 59, tzinfo=UTC),
        datetime(2024, 3, 11, 0, 0, 0, tzinfo=UTC),
        NOON + timedelta(days=1),
    ]
    log.append([audit(f"req-{i}", t) for i, t in enumerate(times)])

    def ids(since: datetime | None = None, until: datetime | None = None) -> list[str]:
        return sorted(r.request_id for r in log.read(since, until))

    assert ids() == ["req-0", "req-1", "req-2", "req-3"]
    assert ids(since=NOON) == ["req-1", "req-2", "req-3"]  # since is inclusive
    assert ids(until=times[2]) == ["req-0", "req-1"]  # until is exclusive
    assert ids(NOON, times[2]) == ["req-1"]
    assert ids(times[2], times[3]) == ["req-2"]
    assert ids(since=NOON + timedelta(days=2)) == []
    # naive bounds are taken as UTC
    assert ids(datetime(2024, 3, 11), datetime(2024, 3, 11, 1)) == ["req-2"]


def test_records_are_partitioned_by_their_utc_day(tmp_path: Path) -> None:
    log = LocalPredictionLog(tmp_path)
    log.append([audit("a", NOON), audit("b", datetime(2024, 3, 11, 0, 30, tzinfo=UTC))])
    days = sorted(p.name for p in tmp_path.iterdir())
    assert days == ["dt=2024-03-10", "dt=2024-03-11"]
    (part,) = (tmp_path / "dt=2024-03-10").iterdir()
    assert part.name.startswith("part-") and part.name.endswith("-12.jsonl")
    assert len(part.read_text().splitlines()) == 1


def test_s3_writes_one_object_per_append_named_after_the_first_request() -> None:
    with moto_s3("audit") as client:
        log = S3PredictionLog("audit", "predictions", client)
        log.append([audit("req/1?", NOON), audit("req-2", NOON)])
        log.append([audit("req-3", NOON)])
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="audit")["Contents"])
        assert len(keys) == 2
        assert all(k.startswith("predictions/dt=2024-03-10/") and k.endswith(".jsonl") for k in keys)
        assert any(k.split("/")[-1].startswith("req_1_-") for k in keys)  # unsafe key characters replaced
        assert sorted(r.request_id for r in log.read()) == ["req-2", "req-3", "req/1?"]


# ---- local log robustness ---------------------------------------------------------------------------------------
def test_concurrent_appends_from_threads_produce_whole_lines(tmp_path: Path) -> None:
    log = LocalPredictionLog(tmp_path)
    wide = [float(i) for i in range(200)]  # long lines make interleaving likely if writes were not serialised

    def work(t: int) -> None:
        for k in range(25):
            log.append([audit(f"t{t}-{k}-{j}", NOON, wide) for j in range(4)])

    errors = errors_in_threads(work, 8)
    assert errors == []
    lines = [line for part in tmp_path.rglob("*.jsonl") for line in part.read_text().splitlines()]
    assert len(lines) == 8 * 25 * 4
    assert all(json.loads(line)["features"] == wide for line in lines)
    assert len({r.request_id for r in log.read()}) == 800


def test_a_line_torn_by_a_crash_is_skipped_and_the_next_writer_repairs_it(tmp_path: Path) -> None:
    crashed = LocalPredictionLog(tmp_path)
    crashed.append([audit("before", NOON)])
    (part,) = tmp_path.rglob("*.jsonl")
    with part.open("a") as fh:
        fh.write(audit("torn", NOON).model_dump_json()[:40])  # the process died mid-write
    crashed.close()
    log = LocalPredictionLog(tmp_path)  # the restarted process, with the same pid: the same part file
    assert [r.request_id for r in log.read()] == ["before"]
    log.append([audit("after", NOON)])
    assert [r.request_id for r in log.read()] == ["before", "after"]


def test_a_part_removed_while_open_is_started_again_rather_than_written_into_the_void(tmp_path: Path) -> None:
    log = LocalPredictionLog(tmp_path)
    log.append([audit("first", NOON)])
    (part,) = tmp_path.rglob("*.jsonl")
    part.unlink()  # rotated or cleaned up by an operator while the server runs
    log.append([audit("second", NOON)])
    assert [r.request_id for r in log.read()] == ["second"]


def test_appends_in_a_new_hour_go_to_a_new_part_and_earlier_parts_stay_readable(tmp_path: Path) -> None:
    log = LocalPredictionLog(tmp_path)
    log.append([audit("noon", NOON)])
    log.append([audit("one", NOON + timedelta(hours=1))])
    log.append([audit("noon-late", NOON + timedelta(minutes=30))])  # a late record reopens its hour's part
    parts = sorted(p.name.rsplit("-", 1)[-1] for p in tmp_path.rglob("*.jsonl"))
    assert parts == ["12.jsonl", "13.jsonl"]
    assert sorted(r.request_id for r in log.read()) == ["noon", "noon-late", "one"]


def test_a_complete_line_that_is_not_a_record_is_reported_with_its_location(tmp_path: Path) -> None:
    log = LocalPredictionLog(tmp_path)
    log.append([audit("ok", NOON)])
    (part,) = tmp_path.rglob("*.jsonl")
    with part.open("a") as fh:
        fh.write('{"request_id": "x"}\n')
    with pytest.raises(CorruptAuditLog, match=r"\.jsonl:2"):
        list(log.read())


def test_folders_that_are_not_day_partitions_are_ignored(tmp_path: Path) -> None:
    log = LocalPredictionLog(tmp_path)
    log.append([audit("ok", NOON)])
    (tmp_path / "dt=not-a-date").mkdir()
    (tmp_path / "dt=not-a-date" / "x.jsonl").write_text("garbage\n")
    (tmp_path / "README").write_text("hi\n")
    assert [r.request_id for r in log.read()] == ["ok"]


# ---- choosing a backend -----------------------------------------------------------------------------------------
def test_open_prediction_log_defaults_to_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("READMIT_HOME", str(tmp_path))
    monkeypatch.delenv(ENV_PREDICTION_LOG, raising=False)
    log = open_prediction_log(None)
    assert isinstance(log, LocalPredictionLog)
    assert log.root == tmp_path / "predictions"
    assert not log.root.exists()  # nothing is created until the first append


def test_open_prediction_log_reads_s3_uris_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PREDICTION_LOG, "s3://audit-bucket/team/predictions/")
    log = open_prediction_log(None)
    assert isinstance(log, S3PredictionLog)
    assert (log.bucket, log.prefix) == ("audit-bucket", "team/predictions")
    assert log._s3._client is None  # no client (credentials, network) until used
    bare = open_prediction_log("s3://audit-bucket")
    assert isinstance(bare, S3PredictionLog) and bare.prefix == ""


def test_open_prediction_log_rejects_bad_uris() -> None:
    with pytest.raises(InvalidLogUri):
        open_prediction_log("s3:///predictions")
    with pytest.raises(InvalidLogUri):
        open_prediction_log("gs://bucket/predictions")


def test_s3_log_without_prefix_reads_what_it_wrote() -> None:
    with moto_s3("audit") as client:
        log = open_prediction_log("s3://audit", s3_client=client)
        log.append([audit("root", NOON)])
        assert client.list_objects_v2(Bucket="audit")["Contents"][0]["Key"].startswith("dt=2024-03-10/root-")
        assert [r.request_id for r in log.read(NOON, NOON + timedelta(seconds=1))] == ["root"]
