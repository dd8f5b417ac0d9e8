"""The one row parser (``schema.parse_encounter``): typed records, and errors a caller can act on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from chalicelib.data.schema import (
    COLUMN_BY_NAME,
    COLUMN_NAMES,
    DISCHARGE_DISPOSITIONS,
    FEATURE_INPUTS,
    FieldError,
    columns_from_records,
    is_excluded,
    parse_encounter,
    parse_value,
)

INT_FIELDS = (
    "encounter_id",
    "patient_nbr",
    "admission_type_id",
    "discharge_disposition_id",
    "admission_source_id",
    "time_in_hospital",
    "num_lab_procedures",
    "num_procedures",
    "num_medications",
    "number_outpatient",
    "number_emergency",
    "number_inpatient",
    "number_diagnoses",
)


@pytest.fixture(scope="module")
def first_row(raw_frame: pd.DataFrame) -> dict[str, str]:
    """The data set's first encounter, as written: weight, payer_code, diag_2 and diag_3 are '?'."""
    row = raw_frame.iloc[0].to_dict()
    assert row["weight"] == row["payer_code"] == row["diag_2"] == row["diag_3"] == "?"
    return row


def errors_of(raw: dict[str, Any], **kwargs: Any) -> dict[str, str]:
    _, errors = parse_encounter(raw, **kwargs)
    return {e.field: e.message for e in errors}


# ---- valid input --------------------------------------------------------------------------------------
def test_a_real_row_parses_without_errors_into_typed_values(first_row: dict[str, str]) -> None:
    record, errors = parse_encounter(first_row, require_target=True, require_ids=True)

    assert errors == []
    for name in INT_FIELDS:
        assert type(record[name]) is int, name
        assert record[name] == int(first_row[name])
    # '?' means missing: None, never the string '?'
    assert record["weight"] is None
    assert record["payer_code"] is None
    assert record["diag_2"] is None and record["diag_3"] is None
    assert record["diag_1"] == "250.83"
    assert record["race"] == "Caucasian"
    assert record["readmitted"] == "NO"
    assert set(record) == set(COLUMN_NAMES)


def test_every_real_row_of_a_thousand_parses_cleanly(raw_frame: pd.DataFrame) -> None:
    for raw in raw_frame.iloc[::101].head(1000).to_dict("records"):
        _, errors = parse_encounter(raw, require_target=True, require_ids=True)
        assert errors == [], (raw["encounter_id"], errors)


def test_json_ints_and_numeric_strings_give_the_same_record(first_row: dict[str, str]) -> None:
    # GIVEN the same encounter once as CSV strings and once as a JSON body with numbers
    as_json: dict[str, Any] = {**first_row, **{name: int(first_row[name]) for name in INT_FIELDS}}

    from_csv, csv_errors = parse_encounter(first_row)
    from_json, json_errors = parse_encounter(as_json)

    assert csv_errors == json_errors == []
    assert from_csv == from_json


def test_surrounding_whitespace_in_a_number_is_tolerated_but_integral_floats_only() -> None:
    col = COLUMN_BY_NAME["num_medications"]
    assert parse_value(col, " 12 ") == (12, None)
    assert parse_value(col, 12.0) == (12, None)
    value, problem = parse_value(col, 12.5)
    assert value is None and problem is not None and "integer" in problem


def test_question_mark_in_a_nullable_field_is_missing_not_an_error(first_row: dict[str, str]) -> None:
    record, errors = parse_encounter({**first_row, "race": "?", "medical_specialty": "?"})
    assert errors == []
    assert record["race"] is None and record["medical_specialty"] is None


# ---- errors name the field and say why -------------------------------------------------------------------
def test_unknown_category_lists_the_allowed_values(first_row: dict[str, str]) -> None:
    errors = errors_of({**first_row, "race": "Martian"})

    assert set(errors) == {"race"}
    assert "'Martian'" in errors["race"]
    for allowed in ("Caucasian", "AfricanAmerican", "Hispanic", "Asian", "Other"):
        assert f"'{allowed}'" in errors["race"]


def test_categories_are_case_sensitive_and_not_coerced(first_row: dict[str, str]) -> None:
    errors = errors_of({**first_row, "gender": "male", "insulin": "UP"})
    assert set(errors) == {"gender", "insulin"}
    assert "'Male'" in errors["gender"]
    assert "'Steady'" in errors["insulin"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("time_in_hospital", "15", "between 1 and 14, got 15"),
        ("time_in_hospital", "0", "between 1 and 14, got 0"),
        ("num_procedures", -1, "between 0 and 20, got -1"),
        ("number_diagnoses", "31", "between 1 and 30, got 31"),
    ],
)
def test_out_of_range_number_gives_the_range(first_row: dict[str, str], field: str, value: Any, expected: str) -> None:
    errors = errors_of({**first_row, field: value})
    assert set(errors) == {field}
    assert expected in errors[field]


@pytest.mark.parametrize("value", ["12.5", "twelve", "1e3", "0x1F", 12.5, [12]])
def test_non_integer_count_is_rejected_with_the_value_shown(first_row: dict[str, str], value: Any) -> None:
    errors = errors_of({**first_row, "num_medications": value})
    assert set(errors) == {"num_medications"}
    assert "must be an integer" in errors["num_medications"]
    assert repr(value) in errors["num_medications"]


@pytest.mark.parametrize("field", ["time_in_hospital", "admission_type_id", "number_inpatient"])
def test_a_json_boolean_is_not_accepted_as_an_integer(first_row: dict[str, str], field: str) -> None:
    # True == 1 in Python; a boolean in a count or code field is a caller bug, not the number 1
    errors = errors_of({**first_row, field: True})
    assert set(errors) == {field}
    assert "must be an integer" in errors[field]


def test_unknown_admission_code_lists_the_allowed_codes(first_row: dict[str, str]) -> None:
    errors = errors_of({**first_row, "admission_type_id": "9"})
    assert set(errors) == {"admission_type_id"}
    assert "unknown code 9" in errors["admission_type_id"]
    assert "allowed: 1, 2, 3, 4, 5, 6, 7, 8" in errors["admission_type_id"]


def test_admission_source_code_16_is_not_a_documented_code(first_row: dict[str, str]) -> None:
    # IDs_mapping.csv skips 16 for admission_source_id; it must not be accepted
    errors = errors_of({**first_row, "admission_source_id": 16})
    assert "unknown code 16" in errors["admission_source_id"]


@pytest.mark.parametrize("code", ["25O.1", "250.", "2500", "V4", "E87", "X12", "250.123", "4 28"])
def test_malformed_icd9_code_is_rejected(first_row: dict[str, str], code: str) -> None:
    errors = errors_of({**first_row, "diag_1": code})
    assert set(errors) == {"diag_1"}
    assert "ICD-9" in errors["diag_1"]
    assert repr(code) in errors["diag_1"]


@pytest.mark.parametrize("code", ["428", "250.83", "38", "V45", "V57.1", "E878", "E909.3"])
def test_well_formed_icd9_codes_are_kept_as_written(first_row: dict[str, str], code: str) -> None:
    record, errors = parse_encounter({**first_row, "diag_3": code})
    assert errors == []
    assert record["diag_3"] == code


def test_a_missing_required_field_is_reported_as_required(first_row: dict[str, str]) -> None:
    raw = {k: v for k, v in first_row.items() if k != "age"}
    errors = errors_of(raw)
    assert errors == {"age": "is required"}


def test_a_question_mark_in_a_required_field_is_reported(first_row: dict[str, str]) -> None:
    errors = errors_of({**first_row, "age": "?", "time_in_hospital": "?"})
    assert set(errors) == {"age", "time_in_hospital"}
    assert "may not be '?'" in errors["age"]
    assert "may not be '?'" in errors["time_in_hospital"]


def test_a_number_where_a_category_is_expected_is_rejected(first_row: dict[str, str]) -> None:
    errors = errors_of({**first_row, "A1Cresult": 8})
    assert errors == {"A1Cresult": "must be a string, got int"}


def test_all_errors_are_collected_at_once_in_schema_order(first_row: dict[str, str]) -> None:
    # GIVEN five bad fields in one request
    raw = {**first_row, "race": "Martian", "age": "?", "time_in_hospital": 0, "diag_2": "X12", "insulin": "Sometimes"}

    # WHEN it is parsed
    record, errors = parse_encounter(raw)

    # THEN each bad field is reported once, in column order, and the good fields still parse
    assert [e.field for e in errors] == ["race", "age", "time_in_hospital", "diag_2", "insulin"]
    assert all(isinstance(e, FieldError) and e.message for e in errors)
    assert record["gender"] == "Female" and record["num_lab_procedures"] == 41


# ---- integer-lookalike strings (bug) -------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["--5", "²"])
def test_integer_lookalike_text_is_reported_as_a_field_error_not_raised(first_row: dict[str, str], text: str) -> None:
    errors = errors_of({**first_row, "num_medications": text})
    assert "must be an integer" in errors["num_medications"]


# ---- target and identifiers ----------------------------------------------------------------------------------
def test_readmitted_is_optional_for_prediction(first_row: dict[str, str]) -> None:
    without = {k: v for k, v in first_row.items() if k != "readmitted"}
    for raw in (without, {**first_row, "readmitted": "?"}):
        record, errors = parse_encounter(raw)
        assert errors == []
        assert record["readmitted"] is None


def test_readmitted_is_required_for_training(first_row: dict[str, str]) -> None:
    without = {k: v for k, v in first_row.items() if k != "readmitted"}
    assert errors_of(without, require_target=True) == {"readmitted": "is required"}


def test_an_invalid_readmitted_value_is_rejected_even_when_optional(first_row: dict[str, str]) -> None:
    errors = errors_of({**first_row, "readmitted": "YES"})
    assert "'<30'" in errors["readmitted"]


def test_identifiers_are_optional_unless_required(first_row: dict[str, str]) -> None:
    raw = {k: v for k, v in first_row.items() if k not in ("encounter_id", "patient_nbr")}
    record, errors = parse_encounter(raw)
    assert errors == [] and record["encounter_id"] is None and record["patient_nbr"] is None
    assert set(errors_of(raw, require_ids=True)) == {"encounter_id", "patient_nbr"}


# ---- cohort -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", sorted(DISCHARGE_DISPOSITIONS))
def test_only_hospice_and_expired_dispositions_are_excluded(code: int) -> None:
    assert is_excluded({"discharge_disposition_id": code}) == (code in {11, 13, 14, 19, 20, 21})


def test_a_parsed_real_row_discharged_expired_is_excluded(first_row: dict[str, str]) -> None:
    record, _ = parse_encounter({**first_row, "discharge_disposition_id": "11"})
    assert is_excluded(record)
    record, _ = parse_encounter({**first_row, "discharge_disposition_id": "1"})
    assert not is_excluded(record)


# ---- columnar form --------------------------------------------------------------------------------------------
def test_columns_from_records_has_one_entry_per_record_with_the_documented_dtypes(
    first_row: dict[str, str],
) -> None:
    # GIVEN three parsed records, one with missing race and diagnoses
    raws = [
        first_row,
        {**first_row, "race": "Asian", "diag_2": "V57.1", "time_in_hospital": "9"},
        {**first_row, "race": "?", "diag_1": "?", "age": "[90-100)"},
    ]
    records = [parse_encounter(r)[0] for r in raws]

    cols = columns_from_records(records)

    # THEN only model inputs (no ids, no target), each of length 3
    assert list(cols) == [c.name for c in FEATURE_INPUTS]
    assert "readmitted" not in cols and "encounter_id" not in cols and "patient_nbr" not in cols
    assert all(len(v) == 3 for v in cols.values())
    # categories: int16 index into the allowed values, -1 when missing
    assert cols["race"].dtype == np.int16
    assert cols["race"].tolist() == [0, 3, -1]
    assert cols["age"].tolist() == [0, 0, 9]
    # ICD-9: fixed-width strings, '' when missing
    assert cols["diag_1"].dtype.kind == "U"
    assert cols["diag_1"].tolist() == ["250.83", "250.83", ""]
    assert cols["diag_2"].tolist() == ["", "V57.1", ""]
    # counts and codes: float64
    assert cols["time_in_hospital"].dtype == np.float64
    assert cols["time_in_hospital"].tolist() == [1.0, 9.0, 1.0]
    assert cols["discharge_disposition_id"].dtype == np.float64


def test_columns_from_no_records_are_empty() -> None:
    cols = columns_from_records([])
    assert all(len(v) == 0 for v in cols.values())
