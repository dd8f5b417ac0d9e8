"""Batch validation: every bad row reported by line and reason; the same answer for every file format."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.data.dataset import DatasetSchemaError
from chalicelib.data.schema import COLUMN_BY_NAME, COLUMN_NAMES, FEATURE_INPUTS, columns_from_records, parse_encounter
from chalicelib.data.tabular import read_table, validate_frame


def write_csv(frame: pd.DataFrame, path: Path, newline: str = "\n") -> Path:
    frame.to_csv(path, index=False, lineterminator=newline)
    return path


@pytest.fixture(scope="module")
def small(raw_frame: pd.DataFrame) -> pd.DataFrame:
    """200 real rows, strings as written."""
    return raw_frame.iloc[1000:1200].reset_index(drop=True)


def assert_same_columns(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ---- the real data ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_real_data_set_validates_completely(data_path: Path) -> None:
    table = read_table(data_path, require_target=True)

    assert table.n_rows == 101_766
    assert table.errors == []
    assert table.valid.all()
    assert len(table.encounter_id) == len(table.cols["time_in_hospital"]) == 101_766
    assert len(np.unique(table.encounter_id)) == 101_766
    assert int(table.labels.sum()) == 11_357  # readmitted '<30' in the UCI data set


# ---- bad rows -------------------------------------------------------------------------------------------
def test_bad_rows_are_reported_by_line_and_field_and_the_rest_stay_valid(small: pd.DataFrame, tmp_path: Path) -> None:
    # GIVEN ten real rows where data rows 3 and 7 (file lines 4 and 8; the header is line 1) hold bad values
    frame = small.head(10).copy()
    frame.loc[2, "race"] = "Martian"
    frame.loc[6, "time_in_hospital"] = "99"
    frame.loc[6, "diag_1"] = "25O.1"
    path = write_csv(frame, tmp_path / "bad.csv")

    # WHEN the file is read
    table = read_table(path, require_target=True)

    # THEN both rows are reported, by line, with every bad field named
    assert [e.line for e in table.errors] == [4, 8]
    assert table.errors[0].reason.startswith("race unknown value 'Martian'")
    assert "time_in_hospital must be between 1 and 14, got 99" in table.errors[1].reason
    assert "diag_1 must be an ICD-9 code" in table.errors[1].reason
    assert "race" not in table.errors[1].reason
    # AND no row is silently dropped: the bad rows are counted and marked, the others keep their data
    assert table.n_rows == 10
    assert table.valid.tolist() == [True] * 2 + [False] + [True] * 3 + [False] + [True] * 3
    expected_ids = frame["encounter_id"].astype(np.int64).to_numpy()[table.valid]
    np.testing.assert_array_equal(table.encounter_id, expected_ids)
    assert all(len(v) == 8 for v in table.cols.values())
    assert len(table.target) == 8


def test_a_missing_identifier_invalidates_the_row_in_batch(small: pd.DataFrame, tmp_path: Path) -> None:
    # patient history needs the identifiers, so the batch requires them
    frame = small.head(3).copy()
    frame.loc[1, "patient_nbr"] = "?"
    table = read_table(write_csv(frame, tmp_path / "noid.csv"), require_target=True)
    assert [(e.line, e.reason) for e in table.errors] == [(3, "patient_nbr is required and may not be '?'")]


def test_a_blank_line_is_reported_and_line_numbers_stay_physical(small: pd.DataFrame, tmp_path: Path) -> None:
    frame = small.head(3).copy()
    frame.loc[2, "gender"] = "Martian"
    header, first, *rest = frame.to_csv(index=False, lineterminator="\n").splitlines(keepends=True)
    path = tmp_path / "blank.csv"
    path.write_text(header + first + "\n" + "".join(rest))  # line 3 is blank; the bad row is on line 5

    table = read_table(path, require_target=True)

    assert next((e.line, e.reason) for e in table.errors) == (3, "blank line")
    assert [e.line for e in table.errors] == [3, 5]
    assert table.n_rows == 4 and table.valid.sum() == 2


def test_a_double_minus_count_is_reported_not_raised(small: pd.DataFrame, tmp_path: Path) -> None:
    frame = small.head(3).copy()
    frame.loc[1, "num_procedures"] = "--5"
    table = read_table(write_csv(frame, tmp_path / "minus.csv"), require_target=True)
    assert [e.line for e in table.errors] == [3]


# ---- formats ----------------------------------------------------------------------------------------------
def test_zip_crlf_lf_and_gzip_copies_give_identical_columns(small: pd.DataFrame, tmp_path: Path) -> None:
    # GIVEN the same 200 real rows in four containers
    lf = write_csv(small, tmp_path / "lf.csv", "\n")
    crlf = write_csv(small, tmp_path / "crlf.csv", "\r\n")
    assert b"\r\n" in crlf.read_bytes() and b"\r" not in lf.read_bytes()
    gz = tmp_path / "data.csv.gz"
    gz.write_bytes(gzip.compress(lf.read_bytes()))
    zipped = tmp_path / "dataset_diabetes.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("dataset_diabetes/IDs_mapping.csv", "admission_type_id,description\n1,Emergency\n")
        zf.write(crlf, "dataset_diabetes/diabetic_data.csv")

    # WHEN each is read
    tables = [read_table(p, require_target=True) for p in (zipped, crlf, lf, gz)]

    # THEN all validate, and columns, identifiers and targets are identical (no stray '\r' in readmitted)
    reference = tables[0]
    assert reference.errors == [] and reference.n_rows == 200
    assert set(reference.target) <= {"NO", ">30", "<30"}
    for table in tables[1:]:
        assert table.errors == [] and table.n_rows == 200
        assert_same_columns(reference.cols, table.cols)
        np.testing.assert_array_equal(reference.encounter_id, table.encounter_id)
        np.testing.assert_array_equal(reference.patient_nbr, table.patient_nbr)
        np.testing.assert_array_equal(reference.target, table.target)


# ---- header ------------------------------------------------------------------------------------------------
def test_a_file_missing_a_required_column_is_rejected_naming_it(small: pd.DataFrame, tmp_path: Path) -> None:
    path = write_csv(small.drop(columns=["insulin", "number_diagnoses"]), tmp_path / "short.csv")
    with pytest.raises(DatasetSchemaError) as excinfo:
        read_table(path, require_target=False)
    assert "insulin" in str(excinfo.value)
    assert "number_diagnoses" in str(excinfo.value)


def test_a_file_without_readmitted_is_accepted_only_for_prediction(small: pd.DataFrame, tmp_path: Path) -> None:
    path = write_csv(small.drop(columns=["readmitted"]), tmp_path / "unlabelled.csv")

    table = read_table(path, require_target=False)
    assert table.errors == [] and table.valid.all()
    assert table.target is None

    with pytest.raises(DatasetSchemaError, match="readmitted"):
        read_table(path, require_target=True)


def test_a_file_with_readmitted_but_some_values_missing_is_fine_for_prediction(
    small: pd.DataFrame, tmp_path: Path
) -> None:
    frame = small.head(4).copy()
    frame.loc[0, "readmitted"] = "?"
    frame.loc[1, "readmitted"] = ""
    path = write_csv(frame, tmp_path / "partial.csv")

    assert read_table(path, require_target=False).errors == []
    assert [e.line for e in read_table(path, require_target=True).errors] == [2, 3]


# ---- batch and online agree -----------------------------------------------------------------------------------
ANY_ALLOWED_VALUE = sorted({v for c in COLUMN_BY_NAME.values() for v in c.allowed})
MUTATIONS = st.one_of(
    st.just("?"),
    st.just(""),
    st.text(max_size=8),
    st.text(alphabet="0123456789.-VE ", max_size=7),
    st.integers(min_value=-5, max_value=1_000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(ANY_ALLOWED_VALUE),
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    row=st.integers(min_value=0, max_value=199),
    column=st.sampled_from(COLUMN_NAMES),
    value=MUTATIONS,
    require_target=st.booleans(),
)
@pytest.mark.slow
def test_batch_validator_and_row_parser_agree_on_mutated_real_rows(
    small: pd.DataFrame, row: int, column: str, value: str, require_target: bool
) -> None:
    # GIVEN a real row with one field replaced
    raw = {**small.iloc[row].to_dict(), column: value}

    # WHEN the batch validator and the API's row parser judge it
    table = validate_frame(pd.DataFrame([raw]), require_target=require_target)
    record, errors = parse_encounter(raw, require_target=require_target, require_ids=True)

    # THEN they agree on validity, on the reason, and (when valid) on the parsed columns
    assert (not table.valid[0]) == bool(errors)
    if errors:
        assert [e.line for e in table.errors] == [2]
        assert table.errors[0].reason.split(" ")[0] == column
    else:
        online = columns_from_records([record])
        assert_same_columns({c.name: table.cols[c.name] for c in FEATURE_INPUTS}, online)
