"""The one feature code path: spec, leakage, online == batch, patient history, and named features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from chalicelib.data.schema import AT_DISCHARGE, IDENTIFIERS, MEDICATIONS, TARGET, columns_from_records, parse_encounter
from chalicelib.data.tabular import Table, read_table, validate_frame
from chalicelib.features.docs import feature_spec_markdown
from chalicelib.features.encoding import encode
from chalicelib.features.history import PatientHistory, history_in_file
from chalicelib.features.table import FEATURE_NAMES, FEATURES, HISTORY

ROOT = Path(__file__).resolve().parent.parent
HIST_NAMES = [f.name for f in FEATURES if f.sources == (HISTORY,)]


def batch_features(table: Table) -> np.ndarray:
    history = history_in_file(table.patient_nbr.tolist(), table.encounter_id.tolist(), table.cols)
    return encode(table.cols, history)


@pytest.fixture(scope="module")
def sample_table(sample_csv: Path) -> Table:
    return read_table(sample_csv, require_target=True)


@pytest.fixture(scope="module")
def base_row(raw_frame: pd.DataFrame) -> dict[str, str]:
    """A real encounter with every medication 'No' (the data set's first row)."""
    row = raw_frame.iloc[0].to_dict()
    assert all(row[m] == "No" for m in MEDICATIONS)
    return row


def features_of(base: dict[str, Any], changes: dict[str, Any] | None = None) -> dict[str, float]:
    """One encounter through the online path: parse → columns → encode; {feature name: value}."""
    record, errors = parse_encounter({**base, **(changes or {})})
    assert errors == []
    row = encode(columns_from_records([record]))[0]
    return dict(zip(FEATURE_NAMES, row.tolist(), strict=True))


# ---- the spec ------------------------------------------------------------------------------------------
def test_there_are_at_least_forty_uniquely_named_features() -> None:
    assert len(FEATURES) >= 40
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)


def test_every_feature_uses_only_what_is_known_at_discharge() -> None:
    for f in FEATURES:
        assert f.sources, f.name
        assert set(f.sources) <= AT_DISCHARGE | {HISTORY}, f.name
        assert TARGET not in f.sources, f.name
        assert not set(IDENTIFIERS) & set(f.sources), f.name


def test_encode_gives_one_float32_column_per_feature(sample_table: Table) -> None:
    x = batch_features(sample_table)
    assert x.shape == (int(sample_table.valid.sum()), len(FEATURES))
    assert x.dtype == np.float32


# ---- no leakage -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_outcome_never_changes_the_features(sample_csv: Path, tmp_path: Path) -> None:
    # GIVEN the real sample, and a copy where every outcome is rotated (NO → <30 → >30 → NO)
    raw = pd.read_csv(sample_csv, dtype=str, keep_default_na=False)
    flipped = raw.assign(readmitted=raw["readmitted"].map({"NO": "<30", "<30": ">30", ">30": "NO"}))
    flipped_csv = tmp_path / "flipped.csv"
    flipped.to_csv(flipped_csv, index=False)

    # WHEN both go through the batch path, patient history included
    original = read_table(sample_csv, require_target=True)
    changed = read_table(flipped_csv, require_target=True)

    # THEN the labels differ everywhere and the features do not differ at all
    assert (original.labels != changed.labels).any()
    assert (original.target != changed.target).all()
    np.testing.assert_array_equal(batch_features(original), batch_features(changed))


# ---- online == batch ----------------------------------------------------------------------------------
def test_one_row_online_path_equals_the_batch_path_on_real_rows(sample_table: Table) -> None:
    # GIVEN 300 real rows as the batch path encodes them (without history, which the API adds separately)
    n = 300
    batch = encode(sample_table.cols)[:n]
    raws = sample_table.raw[sample_table.valid].head(n).to_dict("records")

    # WHEN each row goes through the API path on its own
    online = []
    for raw in raws:
        record, errors = parse_encounter(raw)
        assert errors == []
        online.append(encode(columns_from_records([record]))[0])

    # THEN every feature of every row is the same (NaN where the batch has NaN)
    np.testing.assert_allclose(np.stack(online), batch, rtol=0, atol=0, equal_nan=True)


# ---- patient history ------------------------------------------------------------------------------------
HISTORY_COLUMNS = (
    "encounter_id",
    "patient_nbr",
    "admission_type_id",
    "time_in_hospital",
    "number_inpatient",
    "discharge_disposition_id",
    "readmitted",
)
# File order is not encounter order, and string order ('1000' < '20' < '300') is not numeric order either.
HISTORY_ROWS = [
    dict(zip(HISTORY_COLUMNS, values, strict=True))
    for values in (
        ("1000", "7", "1", "7", "4", "1", "<30"),
        ("150", "8", "1", "2", "9", "3", "NO"),  # another patient
        ("20", "7", "1", "3", "2", "3", ">30"),  # emergency admission, discharged to a SNF
        ("300", "7", "2", "5", "0", "1", "<30"),
    )
]
# (encounters, emergency_admissions, days, max_inpatient, transfers_to_facility) from strictly earlier encounters
EXPECTED_HISTORY = [
    (2, 1, 3 + 5, 2, 1),  # 1000 sees 20 and 300, not itself (its own 4 prior stays are not in max_inpatient)
    (0, 0, 0, 0, 0),  # the other patient sees nothing of patient 7
    (0, 0, 0, 0, 0),  # 20 is patient 7's first encounter
    (1, 1, 3, 2, 1),  # 300 sees 20 only
]


def history_table(base: dict[str, str], rows: list[dict[str, str]]) -> Table:
    return validate_frame(pd.DataFrame([{**base, **r} for r in rows]), require_target=True)


def history_of(table: Table) -> np.ndarray:
    return history_in_file(table.patient_nbr.tolist(), table.encounter_id.tolist(), table.cols)


def test_each_encounter_sees_only_strictly_earlier_encounters_of_the_same_patient(base_row: dict[str, str]) -> None:
    table = history_table(base_row, HISTORY_ROWS)
    assert table.valid.all()

    history = history_of(table)

    np.testing.assert_array_equal(history, np.array(EXPECTED_HISTORY, dtype=np.float32))


def test_history_lands_in_the_hist_features(base_row: dict[str, str]) -> None:
    table = history_table(base_row, HISTORY_ROWS)
    x = encode(table.cols, history_of(table))
    cols = [FEATURE_NAMES.index(n) for n in HIST_NAMES]
    assert HIST_NAMES == [
        "hist_encounters",
        "hist_emergency_admissions",
        "hist_days",
        "hist_max_inpatient",
        "hist_transfers_to_facility",
    ]
    np.testing.assert_array_equal(x[:, cols], np.array(EXPECTED_HISTORY, dtype=np.float32))
    # without history the same columns are zero
    assert not encode(table.cols)[:, cols].any()


def test_another_patient_does_not_change_a_patients_history(base_row: dict[str, str]) -> None:
    without_other = [r for r in HISTORY_ROWS if r["patient_nbr"] == "7"]
    history = history_of(history_table(base_row, without_other))
    expected = [h for h, r in zip(EXPECTED_HISTORY, HISTORY_ROWS, strict=True) if r["patient_nbr"] == "7"]
    np.testing.assert_array_equal(history, np.array(expected, dtype=np.float32))


def test_history_ignores_earlier_outcomes(base_row: dict[str, str]) -> None:
    all_readmitted = [{**r, "readmitted": "<30"} for r in HISTORY_ROWS]
    none_readmitted = [{**r, "readmitted": "NO"} for r in HISTORY_ROWS]
    np.testing.assert_array_equal(
        history_of(history_table(base_row, all_readmitted)), history_of(history_table(base_row, none_readmitted))
    )


def test_online_history_accumulation_equals_the_batch_history_on_a_real_patient(raw_frame: pd.DataFrame) -> None:
    # GIVEN the patient with the most encounters in the data set, rows shuffled
    patient = raw_frame["patient_nbr"].value_counts().idxmax()
    rows = raw_frame[raw_frame["patient_nbr"] == patient].sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert len(rows) >= 20

    # WHEN the batch computes history in the file ...
    table = validate_frame(rows, require_target=True)
    assert table.valid.all()
    batch = history_of(table)

    # ... and the online store replays the same encounters one by one, in encounter order
    records = sorted((parse_encounter(r)[0] for r in rows.to_dict("records")), key=lambda r: r["encounter_id"])
    online: dict[int, tuple[int, ...]] = {}
    store = PatientHistory()
    for record in records:
        online[record["encounter_id"]] = store.as_row()
        store.add_record(record)
        store = PatientHistory.from_dict(store.to_dict())  # what a key-value store round trip does

    # THEN each encounter's history is the same either way
    expected = np.array([online[e] for e in table.encounter_id.tolist()], dtype=np.float32)
    np.testing.assert_array_equal(batch, expected)
    assert store.encounters == len(rows)
    assert store.days == sum(r["time_in_hospital"] for r in records)


# ---- named features on crafted records ----------------------------------------------------------------------
def test_race_question_mark_sets_only_race_missing(base_row: dict[str, str]) -> None:
    f = features_of(base_row, {"race": "?"})
    assert f["race_missing"] == 1
    assert [f[n] for n in FEATURE_NAMES if n.startswith("race_") and n != "race_missing"] == [0] * 5


def test_a_recorded_race_sets_exactly_its_own_indicator(base_row: dict[str, str]) -> None:
    f = features_of(base_row, {"race": "Hispanic"})
    assert {n: v for n, v in f.items() if n.startswith("race_") and v} == {"race_hispanic": 1.0}


def test_insulin_dosed_up_is_on_and_up(base_row: dict[str, str]) -> None:
    f = features_of(base_row, {"insulin": "Up"})
    assert f["insulin_on"] == f["insulin_up"] == 1
    assert f["insulin_down"] == 0
    assert f["meds_active"] == f["meds_up"] == f["meds_changed"] == 1
    assert f["meds_down"] == 0
    assert features_of(base_row)["insulin_on"] == 0


def test_combination_drugs_count_for_each_drug_class(base_row: dict[str, str]) -> None:
    f = features_of(base_row, {"glyburide-metformin": "Steady"})
    assert f["metformin_on"] == f["sulfonylurea_on"] == 1
    assert f["tzd_on"] == 0 and f["insulin_on"] == 0


def test_a1c_over_8_is_tested_high_and_over_8(base_row: dict[str, str]) -> None:
    f = features_of(base_row, {"A1Cresult": ">8"})
    assert f["a1c_tested"] == f["a1c_high"] == f["a1c_over_8"] == 1
    normal = features_of(base_row, {"A1Cresult": "Norm"})
    assert (normal["a1c_tested"], normal["a1c_high"], normal["a1c_over_8"]) == (1, 0, 0)
    untested = features_of(base_row, {"A1Cresult": "None"})
    assert (untested["a1c_tested"], untested["a1c_high"], untested["a1c_over_8"]) == (0, 0, 0)


def test_high_a1c_with_medication_change_is_flagged(base_row: dict[str, str]) -> None:
    assert features_of(base_row, {"A1Cresult": ">7", "change": "Ch"})["a1c_high_and_changed"] == 1
    assert features_of(base_row, {"A1Cresult": ">7", "change": "No"})["a1c_high_and_changed"] == 0
    assert features_of(base_row, {"A1Cresult": "Norm", "change": "Ch"})["a1c_high_and_changed"] == 0


def test_primary_diagnosis_group_and_diagnosis_counts(base_row: dict[str, str]) -> None:
    f = features_of(base_row, {"diag_1": "250.83", "diag_2": "428", "diag_3": "?"})
    assert f["diag1_diabetes"] == 1
    assert sum(f[n] for n in FEATURE_NAMES if n.startswith("diag1_")) == 1
    assert f["diags_diabetes"] == 1 and f["diags_circulatory"] == 1 and f["diags_missing"] == 1
    assert f["diag_1_code"] == pytest.approx(250.83)
    assert np.isnan(f["diag_3_code"])
    assert f["diabetes_uncontrolled"] == 1  # 250.x3


def test_meds_per_day_divides_medications_by_length_of_stay(base_row: dict[str, str]) -> None:
    f = features_of(base_row, {"time_in_hospital": "4", "num_medications": "20", "num_lab_procedures": "10"})
    assert f["meds_per_day"] == 5
    assert f["labs_per_day"] == 2.5


def test_unknown_gender_is_missing_not_female(base_row: dict[str, str]) -> None:
    assert features_of(base_row, {"gender": "Male"})["gender_male"] == 1
    assert features_of(base_row, {"gender": "Female"})["gender_male"] == 0
    assert np.isnan(features_of(base_row, {"gender": "Unknown/Invalid"})["gender_male"])


def test_discharge_to_a_nursing_facility_is_grouped_as_facility(base_row: dict[str, str]) -> None:
    f = features_of(base_row, {"discharge_disposition_id": "3"})
    assert f["discharge_facility"] == 1 and f["discharge_home"] == 0
    assert f["discharge_code"] == 3


def test_lace_score_for_a_case_computed_by_hand(base_row: dict[str, str]) -> None:
    # L: 5 days → 4;  A: emergency admission → 3;  C: heart failure 1 + complicated diabetes 2 + malignancy 2
    # = Charlson 5 → 5;  E: 2 emergency visits → 2.   LACE = 4 + 3 + 5 + 2 = 14
    f = features_of(
        base_row,
        {
            "time_in_hospital": "5",
            "admission_type_id": "1",
            "diag_1": "428",
            "diag_2": "250.41",
            "diag_3": "153",
            "number_emergency": "2",
        },
    )
    assert f["charlson_index"] == 5
    assert f["lace_score"] == 14


def test_lace_score_for_a_short_elective_stay_with_many_ed_visits(base_row: dict[str, str]) -> None:
    # L: 1 day → 1;  A: elective → 0;  C: V code only → 0;  E: 9 visits, capped at 4.  LACE = 5
    f = features_of(
        base_row,
        {
            "time_in_hospital": "1",
            "admission_type_id": "3",
            "diag_1": "V57",
            "diag_2": "?",
            "diag_3": "?",
            "number_emergency": "9",
        },
    )
    assert f["lace_score"] == 5


# ---- the spec document ------------------------------------------------------------------------------------
def test_feature_spec_has_one_table_row_per_feature_in_order() -> None:
    rows = [line for line in feature_spec_markdown().splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(FEATURES)
    for i, (line, f) in enumerate(zip(rows, FEATURES, strict=True), 1):
        assert line.startswith(f"| {i} | `{f.name}` | {f.label} |")


def test_docs_features_md_is_the_generated_spec() -> None:
    doc = ROOT / "docs" / "features.md"
    assert doc.exists(), "run: readmit features --out docs/features.md"
    assert doc.read_text() == feature_spec_markdown(), "docs/features.md is stale: run `make docs`"
