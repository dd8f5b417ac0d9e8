"""Nightly batch scoring: the pandas-free row path matches `readmit predict`, the merge keeps every row in call-list
order, and the batch functions, replayed from events/ against moto S3, turn an uploaded discharge list into a
scored file, a summary and audit records, by either path (one Lambda, or prepare → batches → merge)."""

from __future__ import annotations

import csv
import io
import json
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from moto import mock_aws

from chalicelib.batch import job as batch_job
from chalicelib.batch.local import predict_file
from chalicelib.batch.output import (
    EXCLUDED_REASON,
    OUTPUT_COLUMNS,
    STATUSES,
    Summary,
    from_csv,
    merge,
    order_key,
    score_rows,
    to_csv,
)
from chalicelib.batch.rows import (
    MissingColumns,
    RowValidator,
    from_items,
    prepare,
    read_item_reader_csv,
    read_records,
    write_items,
)
from chalicelib.model.bundle import ModelBundle
from chalicelib.registry.registry import Registry
from tests.helpers import FakeContext, load_event, load_function

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
REGION = "us-east-1"
DATA, MODELS, LOGS = "readmit-data-dev", "readmit-models-dev", "readmit-predictions-dev"
STEP_FUNCTIONS_PAYLOAD_LIMIT = 262_144  # bytes: a Distributed Map batch (items + BatchInput) must fit


fixture = load_event
Context = partial(FakeContext, "readmit-batch-score", memory_limit_in_mb=2048)


def handler(name: str) -> Any:
    return load_function(name).handler


def rows_of(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


# ---- a discharge list: real UCI rows with bad ones injected ------------------------------------------------------
BAD_ROWS = {  # index in the clean list → what is wrong with it
    3: ("age", "[200-210)"),
    10: ("gender", ""),
    17: ("time_in_hospital", "99"),
    1500: ("diag_1", "XYZ"),
}


@pytest.fixture(scope="module")
def discharges(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,500 real rows of the sample (no outcome column, as a discharge list), three batches' worth, with four
    invalid rows and a blank line injected."""
    frame = pd.read_csv(sample_csv, dtype=str, keep_default_na=False, na_filter=False).head(2500)
    frame = frame.drop(columns=["readmitted"])
    for index, (column, value) in BAD_ROWS.items():
        frame.loc[frame.index[index], column] = value
    text = frame.to_csv(index=False, lineterminator="\n").splitlines()
    text.insert(700, "")  # a blank line in the middle of the file
    path = tmp_path_factory.mktemp("discharges") / "discharges.csv"
    path.write_text("\n".join(text) + "\n")
    return path


@pytest.fixture(scope="module")
def model(small_bundle: Path) -> ModelBundle:
    return ModelBundle.load(small_bundle)


def score_locally(model: ModelBundle, text: str, batch: int = 1000) -> list[tuple[str, ...]]:
    """The batch path without AWS: prepare, then score batches of items; rows in file order."""
    columns, items = prepare(lambda: io.StringIO(text, newline=""))
    validator = RowValidator(columns)
    out: list[tuple[str, ...]] = []
    all_items = list(items)
    for start in range(0, len(all_items), batch):
        rows = from_items(validator, all_items[start : start + batch])
        out += score_rows(model, rows, validator.columns.index("encounter_id"), request_id="test").rows
    return sorted(out, key=lambda r: int(r[OUTPUT_COLUMNS.index("line")]))


# ---- the row path ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_pandas_free_path_scores_every_row_exactly_as_readmit_predict_does(
    model: ModelBundle, discharges: Path, tmp_path: Path
) -> None:
    # GIVEN the pandas path (readmit predict) and the csv-module path the Lambdas use, in batches of 1,000
    predict_file(model, discharges, tmp_path / "predicted.csv")
    expected = rows_of((tmp_path / "predicted.csv").read_bytes())
    got = score_locally(model, discharges.read_text())

    # THEN every row has the same id, risk (to 6 decimals), tier, status and reason, in the same order
    assert len(got) == len(expected) == 2501
    col = {name: i for i, name in enumerate(OUTPUT_COLUMNS)}
    for line, (mine, theirs) in enumerate(zip(got, expected, strict=True), start=2):
        assert int(mine[col["line"]]) == line
        assert (mine[col["encounter_id"]], mine[col["risk"]], mine[col["risk_tier"]]) == (
            theirs["encounter_id"],
            theirs["risk"],
            theirs["risk_tier"],
        ), line
        assert (mine[col["status"]], mine[col["reason"]]) == (theirs["status"], theirs["reason"]), line
    statuses = [r[col["status"]] for r in got]
    assert statuses.count("invalid") == len(BAD_ROWS) + 1  # and the blank line
    assert statuses.count("excluded") > 0 and statuses.count("scored") > 2000
    # AND a patient's history crossed batch boundaries: some rows of the later batches have earlier encounters
    _, items = prepare(lambda: discharges.open(newline=""))
    assert any(item["hist"] for item in list(items)[1000:])


def test_batches_of_a_thousand_rows_fit_the_step_functions_payload_limit(discharges: Path) -> None:
    columns, items = prepare(lambda: discharges.open(newline=""))
    items = list(items)
    batch_input = fixture("batch_score_map_batch.json")["BatchInput"] | {"columns": columns}
    sizes = [
        len(json.dumps({"Items": items[s : s + 1000], "BatchInput": batch_input}, separators=(",", ":")).encode())
        for s in range(0, len(items) - 999, 1000)
    ]
    assert sizes and max(sizes) < STEP_FUNCTIONS_PAYLOAD_LIMIT, sizes
    # the UCI row as a JSON object (what a plain CSV ItemReader would hand over) is ~5x larger
    plain = rows_of(discharges.read_bytes())[:1000]
    assert len(json.dumps(plain).encode()) > 4 * max(sizes)


def test_items_carry_fields_with_commas_quotes_and_newlines_intact() -> None:
    batch = fixture("batch_score_map_batch.json")
    columns = batch["BatchInput"]["columns"]
    fields = next(csv.reader([batch["Items"][0]["row"]]))
    odd = list(fields)
    odd[columns.index("payer_code")] = 'He said "no", twice\nthen left'
    text = to_csv([columns, fields, odd], header=False).decode()

    _, items = prepare(lambda: io.StringIO(text, newline=""))
    rows = from_items(RowValidator(columns), list(items))

    assert [r.fields for r in rows] == [fields, odd]
    assert rows[0].reason is None and rows[1].reason is not None
    assert rows[1].reason.startswith("payer_code unknown value 'He said \"no\", twice\\nthen left'")


def test_blank_short_and_long_rows_are_invalid_with_a_reason_and_never_stop_the_file(model: ModelBundle) -> None:
    text = (ROOT / "events" / "batch_score_map_batch.json").read_text()
    columns = json.loads(text)["BatchInput"]["columns"]
    good = next(csv.reader([json.loads(text)["Items"][0]["row"]]))
    lines = [",".join(columns), ",".join(good), "", ",".join(good[:-1]), ",".join([*good, "extra"])]
    got = score_locally(model, "\n".join(lines) + "\n")
    col = {name: i for i, name in enumerate(OUTPUT_COLUMNS)}
    assert [(r[col["status"]], r[col["reason"]]) for r in got] == [
        ("scored", ""),
        ("invalid", "blank line"),
        ("invalid", f"{len(columns) - 1} fields where the header has {len(columns)}"),
        ("invalid", f"{len(columns) + 1} fields where the header has {len(columns)}"),
    ]


def test_a_list_without_patient_nbr_is_scored_without_history_and_one_missing_a_needed_column_is_refused(
    model: ModelBundle, discharges: Path
) -> None:
    frame = pd.read_csv(discharges, dtype=str, keep_default_na=False, na_filter=False).head(300)
    without_patient = frame.drop(columns=["patient_nbr"]).to_csv(index=False)
    rows = score_locally(model, without_patient)
    assert {r[OUTPUT_COLUMNS.index("status")] for r in rows} >= {"scored"}
    _, items = prepare(lambda: io.StringIO(without_patient, newline=""))
    assert not any(item["hist"] for item in items)

    with pytest.raises(MissingColumns, match="age, weight"):
        prepare(lambda: io.StringIO(frame.drop(columns=["age", "weight"]).to_csv(index=False), newline=""))
    with pytest.raises(MissingColumns, match="empty"):
        prepare(lambda: io.StringIO("", newline=""))


# ---- merge -------------------------------------------------------------------------------------------------------
def _row(line: int, status: str, risk: float | None = None, tier: str = "") -> tuple[str, ...]:
    reason = {"scored": "", "excluded": EXCLUDED_REASON, "invalid": f"age unknown value (line {line})"}[status]
    return (str(900000 + line), "" if risk is None else f"{risk:.6f}", tier, "", "v1", status, reason, str(line))


def test_merge_orders_rows_by_risk_keeps_every_row_and_counts_invalid_ones() -> None:
    # GIVEN three parts, each sorted as a batch writes it, with scored, excluded and invalid rows and a risk tie
    rng = random.Random(3)
    rows = [
        _row(line, "scored", round(rng.random(), 6), rng.choice(["low", "medium", "high"])) for line in range(2, 62)
    ]
    rows += [_row(62, "scored", 0.5, "high"), _row(63, "scored", 0.5, "high")]
    rows += [_row(line, "excluded") for line in (70, 71)] + [_row(line, "invalid") for line in (64, 80, 81)]
    rng.shuffle(rows)
    parts = [sorted(rows[i::3], key=order_key) for i in range(3)]
    # parts round-trip through the CSV a batch writes
    parts = [from_csv(to_csv(p)) for p in parts]

    merged = list(merge(parts))
    summary = Summary(capacity_percent=10)
    for row in merged:
        summary.add(row)
    result = summary.to_dict()

    # THEN all rows are there once, scored first by risk (highest first, ties by line), then excluded, then invalid
    assert sorted(merged) == sorted(rows)
    status = [r[OUTPUT_COLUMNS.index("status")] for r in merged]
    assert status == ["scored"] * 62 + ["excluded"] * 2 + ["invalid"] * 3
    risks = [float(r[1]) for r in merged[:62]]
    assert risks == sorted(risks, reverse=True)
    tied = [int(r[-1]) for r in merged[:62] if r[1] == "0.500000"]
    assert tied == [62, 63]
    assert [int(r[-1]) for r in merged[62:]] == [70, 71, 64, 80, 81]
    # AND the summary counts them, lists every invalid row with its reason and the capacity band
    assert (result["rows"], result["scored"], result["excluded"], result["invalid"]) == (67, 62, 2, 3)
    assert result["invalid_rows"] == [{"line": n, "reason": f"age unknown value (line {n})"} for n in (64, 80, 81)]
    tiers = [r[2] for r in rows if r[5] == "scored"]
    assert result["tiers"] == {t: tiers.count(t) for t in ("high", "medium", "low")}
    band = result["capacity_band"]
    assert band["rows"] == sum(1 for r in risks if r >= risks[6]) and band["min_risk"] == risks[6]  # ceil(6.2) = 7


# ---- the functions, replayed from events/ against moto ---------------------------------------------------------
@dataclass
class Aws:
    s3: Any
    version: str
    kms_key: str

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=DATA, Key=key, Body=data)

    def get(self, key: str, bucket: str = DATA) -> bytes:
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def audit(self) -> list[dict[str, Any]]:
        keys = [o["Key"] for o in self.s3.list_objects_v2(Bucket=LOGS, Prefix="predictions/").get("Contents", [])]
        return [json.loads(line) for key in keys for line in self.get(key, LOGS).decode().splitlines()]


@pytest.fixture
def aws(small_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    """The data, model and prediction-log buckets, a registry whose champion is the small real model, and the
    environment template.yaml gives the batch functions."""
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        for bucket in (DATA, MODELS, LOGS):
            s3.create_bucket(Bucket=bucket)
        registry = Registry.open(f"s3://{MODELS}/registry", s3_client=s3)
        version = registry.register(small_bundle)
        registry.promote(version, "first model")
        kms_key = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
        monkeypatch.setenv("READMIT_REGISTRY", f"s3://{MODELS}/registry")
        monkeypatch.setenv("READMIT_PREDICTION_LOG", f"s3://{LOGS}/predictions")
        monkeypatch.setenv("READMIT_ID_SALT", "batch-test-salt")
        monkeypatch.setenv(batch_job.ENV_KMS_KEY, kms_key)
        monkeypatch.setenv(batch_job.ENV_CAPACITY_PERCENT, "10")
        monkeypatch.setattr(batch_job, "_jobs", None)  # a fresh container: no model cached from another test
        yield Aws(s3, version, kms_key)


def fixture_file() -> bytes:
    """The discharge list the fixtures describe: the header and the five rows of events/batch_score_map_batch.json."""
    batch = fixture("batch_score_map_batch.json")
    return ("\n".join([",".join(batch["BatchInput"]["columns"]), *(i["row"] for i in batch["Items"])]) + "\n").encode()


@pytest.mark.slow
def test_the_s3_event_replay_scores_the_whole_file_into_a_scored_csv_and_summary(aws: Aws) -> None:
    event = fixture("batch_score_s3_object_created.json")
    data = fixture_file()
    assert len(data) == event["detail"]["object"]["size"]
    aws.put(event["detail"]["object"]["key"], data)

    notice = handler("batch_score")(event, Context())

    scored = rows_of(aws.get("scored/2026-11-27/discharges.csv"))
    summary = json.loads(aws.get("scored/2026-11-27/discharges.summary.json"))
    risks = [float(r["risk"]) for r in scored[:4]]
    assert risks == sorted(risks, reverse=True)
    assert [r["status"] for r in scored] == ["scored"] * 4 + ["invalid"]
    assert scored[-1]["encounter_id"] == "900105" and scored[-1]["reason"].startswith("age unknown value '[200-210)'")
    assert all(r["model_version"] == aws.version and r["top_factors"].count(" = ") == 3 for r in scored[:4])
    assert (summary["rows"], summary["scored"], summary["invalid"]) == (5, 4, 1)
    assert summary["invalid_rows"] == [{"line": 6, "reason": scored[-1]["reason"]}]
    assert notice["scored_file"] == f"s3://{DATA}/scored/2026-11-27/discharges.csv"
    assert notice["run_id"] == event["id"] and "invalid_rows" not in notice
    assert len(aws.audit()) == 4


@pytest.mark.slow
def test_the_map_batch_replay_writes_a_sorted_part_and_an_audit_record_per_scored_row(aws: Aws) -> None:
    # The fixture's model version is a placeholder: the batch asks for the registry's champion, as prepare pins it.
    event = fixture("batch_score_map_batch.json")
    event["BatchInput"]["model_version"] = aws.version

    result = handler("batch_score")(event, Context())

    assert result == {
        "part": f"results/{event['BatchInput']['run_id']}/parts/0000000002.csv",
        "rows": 5,
        "scored": 4,
        "excluded": 0,
        "invalid": 1,
    }
    part = from_csv(aws.get(result["part"]))
    assert part == sorted(part, key=order_key) and len(part) == 5
    records = aws.audit()
    assert len(records) == 4
    assert {(r["source"], r["model_version"]) for r in records} == {("batch", aws.version)}
    assert all(len(r["encounter_hash"]) == 32 and r["encounter_hash"] != "900101" for r in records)
    scored_risks = sorted(float(r[1]) for r in part if r[5] == "scored")
    assert sorted(round(r["risk"], 6) for r in records) == scored_risks


@pytest.mark.slow
def test_a_batch_for_a_model_version_the_registry_does_not_hold_fails_the_batch(aws: Aws) -> None:
    event = fixture("batch_score_map_batch.json")  # its version was never registered
    with pytest.raises(Exception, match="20261126T020000Z-0123abcd"):
        handler("batch_score")(event, Context())
    assert aws.audit() == []


def _simulate_distributed_map(aws: Aws, prepared: dict[str, Any], run_id: str) -> list[dict[str, Any]]:
    """What Step Functions does between Prepare and Merge: read the prepared CSV (header row), batch the rows as
    dicts of strings, 1,000 to a batch, with the BatchInput of the definition, and invoke the scoring function."""
    definition = json.loads((ROOT / "statemachines" / "batch_score.asl.json").read_text())
    batcher = definition["States"]["ScoreBatches"]["ItemBatcher"]
    items = read_item_reader_csv(aws.get(prepared["items_key"]).decode())  # ItemReader: CSV, FIRST_ROW
    batch_input = {"run_id": run_id, "bucket": DATA, "model_version": prepared["model_version"]}
    batch_input["columns"] = prepared["columns"]
    assert set(batcher["BatchInput"]) == {f"{k}.$" for k in batch_input}
    size = batcher["MaxItemsPerBatch"]
    score = handler("batch_score")
    return [
        score({"Items": items[s : s + size], "BatchInput": batch_input}, Context()) for s in range(0, len(items), size)
    ]


def _score_both_ways(aws: Aws, data: bytes, name: str) -> tuple[dict, list, dict]:
    """Upload ``data`` twice and score it by one Lambda (incoming/small/) and by prepare → Distributed Map
    (simulated: moto cannot run ItemBatcher) → merge (incoming/large/); (prepared, map results, merge notice)."""
    small, large = fixture("batch_score_job.json"), fixture("batch_prepare_job.json")
    small |= {"key": f"incoming/small/{name}", "run_id": "run-small"}
    large |= {"key": f"incoming/large/{name}", "run_id": "run-large"}
    aws.put(small["key"], data)
    aws.put(large["key"], data)
    handler("batch_score")(small, Context())
    prepared = handler("batch_prepare")(large, Context())
    results = _simulate_distributed_map(aws, prepared, large["run_id"])
    merge_input = fixture("batch_merge_input.json") | {k: large[k] for k in ("key", "run_id")} | {"prepared": prepared}
    return prepared, results, handler("batch_merge")(merge_input, Context())


@pytest.mark.slow
def test_prepare_batches_and_merge_write_the_same_scored_file_as_the_single_lambda_path(
    aws: Aws, discharges: Path
) -> None:
    prepared, results, notice = _score_both_ways(aws, discharges.read_bytes(), "list.csv")
    assert prepared["rows"] == 2501 and prepared["model_version"] == aws.version
    assert [r["rows"] for r in results] == [1000, 1000, 501]

    one = aws.get("scored/small/list.csv")
    many = aws.get("scored/large/list.csv")
    assert one == many
    summary_one = json.loads(aws.get("scored/small/list.summary.json"))
    summary_many = json.loads(aws.get("scored/large/list.summary.json"))
    volatile = ("source", "scored_file", "summary_file", "run_id", "finished_at")
    assert {k: v for k, v in summary_one.items() if k not in volatile} == {
        k: v for k, v in summary_many.items() if k not in volatile
    }
    assert notice["rows"] == 2501 and notice["invalid"] == len(BAD_ROWS) + 1
    # every scored row was audited once per run, with the model's version
    records = aws.audit()
    assert len(records) == 2 * summary_one["scored"]
    assert {r["model_version"] for r in records} == {aws.version}


@pytest.mark.slow
def test_merge_refuses_a_run_whose_parts_miss_prepared_rows(aws: Aws, discharges: Path) -> None:
    job = fixture("batch_prepare_job.json")
    aws.put(job["key"], discharges.read_bytes())
    prepared = handler("batch_prepare")(job, Context())
    results = _simulate_distributed_map(aws, prepared, job["run_id"])
    aws.s3.delete_object(Bucket=DATA, Key=results[1]["part"])  # a lost batch

    with pytest.raises(batch_job.IncompleteRun, match="1501 rows scored, 2501 prepared"):
        handler("batch_merge")(fixture("batch_merge_input.json") | {"prepared": prepared}, Context())
    assert "Contents" not in aws.s3.list_objects_v2(Bucket=DATA, Prefix="scored/")


@pytest.mark.slow
def test_a_file_without_the_needed_columns_fails_the_run_and_an_invalid_event_names_fields_not_values(
    aws: Aws,
) -> None:
    job = fixture("batch_score_job.json")
    aws.put(job["key"], b"encounter_id,patient_nbr,race\n900001,800001,Caucasian\n")
    with pytest.raises(MissingColumns, match="gender, age"):
        handler("batch_score")(job, Context())

    batch = fixture("batch_score_map_batch.json")
    batch["Items"][2] = {"line": "4", "row": batch["Items"][2]["row"], "hist": 7}  # not a string
    with pytest.raises(batch_job.InvalidEvent) as raised:
        handler("batch_score")(batch, Context())
    assert "Items.2.hist" in str(raised.value) and "900103" not in str(raised.value)
    with pytest.raises(batch_job.InvalidEvent, match="key"):
        handler("batch_prepare")(job | {"key": "scored/x.csv"}, Context())


@pytest.mark.slow
def test_a_list_uploaded_to_incoming_comes_back_scored_sorted_summarised_and_audited(
    aws: Aws, discharges: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Done when: a file uploaded to S3 produces the scored file and summary. The event is the one S3 itself sends
    to EventBridge (moto), matched by the rule pattern in template.yaml."""
    import yaml

    from tests.test_template import CfnLoader

    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=CfnLoader)
    rule = template["Resources"]["BatchScoreStateMachine"]["Properties"]["Events"]["IncomingFile"]["Properties"]
    pattern = json.loads(json.dumps(rule["Pattern"]).replace('{"Ref": "DataBucket"}', json.dumps(DATA)))
    # GIVEN EventBridge notifications on the bucket and the template's rule (captured by a queue here)
    aws.s3.put_bucket_notification_configuration(
        Bucket=DATA, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    sqs, events = boto3.client("sqs", region_name=REGION), boto3.client("events", region_name=REGION)
    queue = sqs.create_queue(QueueName="rule-target")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="readmit-batch-incoming-dev", EventPattern=json.dumps(pattern))
    events.put_targets(Rule="readmit-batch-incoming-dev", Targets=[{"Id": "batch", "Arn": queue_arn}])

    # WHEN tonight's discharge list is uploaded (and the scored file lands later: no second event for it)
    aws.put("incoming/2026-11-27/discharges.csv", discharges.read_bytes())
    [message] = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    event = json.loads(message["Body"])
    notice = handler("batch_score")(event, Context())
    assert "Messages" not in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)

    # THEN the scored file holds every row once, scored ones by risk (highest first), bad ones marked with reasons
    scored = rows_of(aws.get("scored/2026-11-27/discharges.csv"))
    source = rows_of(discharges.read_bytes())
    assert len(scored) == 2501 and sorted(int(r["line"]) for r in scored) == list(range(2, 2503))
    assert tuple(scored[0]) == OUTPUT_COLUMNS
    by_status = {s: [r for r in scored if r["status"] == s] for s in STATUSES}
    risks = [float(r["risk"]) for r in by_status["scored"]]
    assert risks == sorted(risks, reverse=True) and scored[: len(risks)] == by_status["scored"]
    invalid_lines = {int(r["line"]) for r in by_status["invalid"]}
    assert len(invalid_lines) == len(BAD_ROWS) + 1
    assert all(r["reason"] for r in by_status["invalid"]) and all(r["risk"] == "" for r in by_status["invalid"])
    for index, (column, _) in BAD_ROWS.items():
        line = index + 2 + (index >= 699)  # the blank line was inserted before the 700th data line
        reason = next(r["reason"] for r in by_status["invalid"] if int(r["line"]) == line)
        assert reason.startswith(column), (line, reason)
    assert {r["encounter_id"] for r in by_status["scored"]} <= {r["encounter_id"] for r in source}

    # AND the summary counts rows, invalid rows with reasons, tiers and the top-10% capacity band
    summary = json.loads(aws.get("scored/2026-11-27/discharges.summary.json"))
    assert (summary["rows"], summary["invalid"], summary["scored"]) == (2501, 5, len(risks))
    assert {i["line"] for i in summary["invalid_rows"]} == invalid_lines
    assert summary["tiers"] == {
        t: sum(r["risk_tier"] == t for r in by_status["scored"]) for t in ("high", "medium", "low")
    }
    k = -(-len(risks) * 10 // 100)
    assert summary["capacity_band"]["min_risk"] == risks[k - 1]
    assert summary["capacity_band"]["rows"] == sum(r >= risks[k - 1] for r in risks) >= k
    assert summary["model_version"] == aws.version and summary["model_versions"] == [aws.version]

    # AND both files are encrypted with the batch KMS key
    for key in ("scored/2026-11-27/discharges.csv", "scored/2026-11-27/discharges.summary.json"):
        head = aws.s3.head_object(Bucket=DATA, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", aws.kms_key)

    # AND every scored row is in the prediction log with its model version; nothing else is
    records = aws.audit()
    assert len(records) == len(risks)
    assert {(r["source"], r["model_version"]) for r in records} == {("batch", aws.version)}

    # AND neither the notice (SNS) nor the logs carry identifiers or reasons
    ids = {r["encounter_id"] for r in source} | {r["patient_nbr"] for r in source}
    logged = capsys.readouterr().out + json.dumps(notice)
    assert not {i for i in ids if re.search(rf"\b{i}\b", logged)}
    assert "reason" not in json.dumps(notice) and notice["invalid"] == 5


@pytest.mark.slow
def test_the_batch_functions_import_and_score_without_pandas_or_scikit_learn(small_bundle: Path) -> None:
    """The Lambda packages hold the serving dependencies only: block pandas and sklearn and score the fixture batch."""
    code = f"""
import importlib.abc, sys, json
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('pandas', 'sklearn'):
            raise ImportError('not in the Lambda package: ' + name)
sys.meta_path.insert(0, Block())
import importlib.util
for name in ('batch_score', 'batch_prepare', 'batch_merge'):
    spec = importlib.util.spec_from_file_location('fn_' + name, 'functions/' + name + '/app.py')
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
from chalicelib.batch.rows import RowValidator, from_items
from chalicelib.batch.output import score_rows
from chalicelib.model.bundle import ModelBundle
batch = json.load(open('events/batch_score_map_batch.json'))
v = RowValidator(batch['BatchInput']['columns'])
out = score_rows(ModelBundle.load({str(small_bundle)!r}), from_items(v, batch['Items']), 0, request_id='t')
print(sorted(r[5] for r in out.rows), [m for m in ('pandas', 'sklearn') if m in sys.modules])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['invalid', 'scored', 'scored', 'scored', 'scored'] []"


def test_the_prepared_file_is_what_the_csv_item_reader_reads(discharges: Path, tmp_path: Path) -> None:
    _, items = prepare(lambda: discharges.open(newline=""))
    items = list(items)
    path = tmp_path / "items.csv"
    with path.open("w", newline="") as fh:
        assert write_items(items, fh) == len(items)
    # Step Functions' CSV reader with CSVHeaderLocation FIRST_ROW: a dict of strings per row, keyed by the header
    assert read_item_reader_csv(path.read_text()) == items


# ---- Step Functions' CSV ItemReader, as documented -------------------------------------------------------------
# https://docs.aws.amazon.com/step-functions/latest/dg/example-csv-parse-dist-map.html
def test_the_item_reader_model_reads_the_documented_examples_as_the_page_says() -> None:
    # the page's backslash example, and its one-row example with a quoted comma, a doubled quote and a newline
    assert read_item_reader_csv("path,size\nC:\\\\Program Files\\\\MyApp.exe,6534512\n") == [
        {"path": "C:\\Program Files\\MyApp.exe", "size": "6534512"}
    ]
    doc_row = 'abc,123,"This string contains commas, a double quotation marks (""), and a newline (\n)",'
    doc_row += '{""MyKey"":""MyValue""},"[1,2,3]"'
    got = read_item_reader_csv("a,b,c,d,e\n" + doc_row)
    assert got == [
        {
            "a": "abc",
            "b": "123",
            "c": 'This string contains commas, a double quotation marks ("), and a newline (\n)',
            "d": '{"MyKey":"MyValue"}',
            "e": "[1,2,3]",
        }
    ]
    # a backslash before a comma escapes it; before any other character it is silently removed
    assert read_item_reader_csv("a,b\nx\\,y,z\\q\n") == [{"a": "x,y", "b": "zq"}]
    # fewer fields than the header: empty strings; more: the extra ones are skipped
    assert read_item_reader_csv("a,b,c\n1\n1,2,3,4\n") == [{"a": "1", "b": "", "c": ""}, {"a": "1", "b": "2", "c": "3"}]


ODD_VALUES = (  # column → a value with backslashes, quoted commas or doubled quotes, as a list may hold them
    ("payer_code", "C:\\temp\\x"),
    ("medical_specialty", "trailing\\"),  # before the delimiter: Step Functions would read an escaped comma
    ("diag_3", 'say ""\\"" then, "no"'),
    ("race", "\\\\"),
)


def _odd_list() -> str:
    """The fixtures' five rows, then one more per odd value, each invalid only in that column."""
    batch = fixture("batch_score_map_batch.json")
    columns = batch["BatchInput"]["columns"]
    good = next(csv.reader([batch["Items"][0]["row"]]))
    rows = [columns, *(next(csv.reader([i["row"]])) for i in batch["Items"])]
    for n, (column, value) in enumerate(ODD_VALUES):
        odd = list(good)
        odd[columns.index(column)] = value
        odd[columns.index("encounter_id")] = str(990000 + n)
        rows.append(odd)
    return to_csv(rows, header=False).decode()


def test_rows_with_backslashes_quoted_commas_and_doubled_quotes_reach_the_batches_as_the_file_has_them(
    tmp_path: Path,
) -> None:
    text = _odd_list()
    _, items = prepare(lambda: io.StringIO(text, newline=""))
    items = list(items)
    path = tmp_path / "items.csv"
    with path.open("w", newline="") as fh:
        write_items(items, fh)

    handed_over = read_item_reader_csv(path.read_text())

    assert handed_over == items
    _, records = read_records(io.StringIO(text, newline=""))
    columns = fixture("batch_score_map_batch.json")["BatchInput"]["columns"]
    assert [r.fields for r in from_items(RowValidator(columns), handed_over)] == list(records)


@pytest.mark.slow
def test_both_batch_paths_score_a_list_with_backslashes_and_quotes_into_the_same_file(aws: Aws) -> None:
    _score_both_ways(aws, _odd_list().encode(), "odd.csv")

    one, many = aws.get("scored/small/odd.csv"), aws.get("scored/large/odd.csv")
    assert one == many
    reasons = {r["encounter_id"]: r["reason"] for r in rows_of(many)}
    for n, (column, value) in enumerate(ODD_VALUES):
        reason = reasons[str(990000 + n)]
        assert reason.startswith(column) and repr(value) in reason, reason  # the value as the file has it
