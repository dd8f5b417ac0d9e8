"""Issue #17 part 3: `readmit predict`'s fast path gives the old path's bytes, without the old path's costs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chalicelib.batch.local import predict_file
from chalicelib.data import schema, tabular
from chalicelib.features import history as features
from chalicelib.model.bundle import ModelBundle

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def messy_csv(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 real rows with invalid values of several kinds, a ragged row, a blank line and excluded rows."""
    lines = sample_csv.read_text().splitlines()[:3001]
    header = lines[0].split(",")
    col = {name: header.index(name) for name in header}

    def edit(i: int, name: str, value: str) -> None:
        fields = lines[i].split(",")
        fields[col[name]] = value
        lines[i] = ",".join(fields)

    edit(10, "encounter_id", "12a")  # not an integer
    edit(11, "patient_nbr", "0")  # out of range
    edit(12, "time_in_hospital", " 3")  # padded: the row parser's business, not the fast path's
    edit(13, "admission_type_id", "99")  # unknown code
    edit(14, "encounter_id", "٣٣")  # a non-ASCII digit
    edit(15, "num_lab_procedures", "0007")  # leading zeros: valid, as the row parser reads it
    edit(16, "number_inpatient", "-1")
    edit(17, "encounter_id", "9" * 40)  # longer than any integer converted
    edit(18, "discharge_disposition_id", "11")  # expired: excluded from the cohort
    lines[20] += ",extra"  # ragged
    lines[21] = ""  # blank line
    path = tmp_path_factory.mktemp("fast") / "messy.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _numbers_by_row_parser(col: schema.Column, uniques: list[str], nullable: bool) -> tuple[np.ndarray, np.ndarray]:
    """What the code did before: every distinct text through ``parse_value``."""
    parsed = [schema.parse_value(col, u) for u in uniques]
    ok = [p is None or (nullable and schema.is_missing(u)) for u, (_, p) in zip(uniques, parsed, strict=True)]
    return np.array(ok, dtype=bool), np.array([np.nan if v is None else v for v, _ in parsed], dtype=np.float64)


def _old_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code as it was: every distinct value through ``parse_value``, history row by row."""
    monkeypatch.setattr(tabular, "_numbers", _numbers_by_row_parser)
    monkeypatch.setattr(features, "_MANY_ROWS", 10**12)


@pytest.mark.parametrize("column", ["encounter_id", "admission_type_id", "time_in_hospital"])
def test_numbers_in_numpy_decide_as_the_row_parser(column: str) -> None:
    col = schema.COLUMN_BY_NAME[column]
    texts = ["1", "7", "0007", "14", "15", "0", "-1", "+5", " 7", "7 ", "5\x00", "\x005", "٣", "²", "1e3", "7.0"]
    texts += ["", "?"]
    texts += ["9" * 12, "1" + "0" * 12, "1" + "0" * 12 + "1", "9" * 18, "9" * 19, "9" * 40, "-" + "9" * 40, "12a"]
    ok, values = tabular._numbers(col, texts, nullable=False)
    want_ok, want_values = _numbers_by_row_parser(col, texts, nullable=False)
    assert ok.tolist() == want_ok.tolist()
    assert np.array_equal(values, want_values, equal_nan=True)
    assert ok.any() and not ok.all()


def test_fast_path_writes_the_old_paths_bytes(
    small_bundle: Path, messy_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ModelBundle.load(small_bundle)
    new, old = tmp_path / "new.csv", tmp_path / "old.csv"
    counts = predict_file(model, messy_csv, new)
    with monkeypatch.context() as m:
        _old_path(m)
        assert predict_file(model, messy_csv, old) == counts
    assert new.read_bytes() == old.read_bytes()
    assert counts["invalid"] == 8 and counts["excluded"] >= 1 and counts["scored"] > 2500


def test_history_in_numpy_matches_the_accumulator_with_ties() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    patients, encounters = rng.integers(1, 900, n), rng.integers(1, 3000, n)  # repeated patients and tied ids
    cols = {
        "admission_type_id": rng.integers(1, 9, n).astype(np.float64),
        "time_in_hospital": rng.integers(1, 15, n).astype(np.float64),
        "number_inpatient": rng.integers(0, 30, n).astype(np.float64),
        "discharge_disposition_id": rng.integers(1, 31, n).astype(np.float64),
    }
    fast = features.history_in_file(patients.tolist(), encounters.tolist(), cols)
    original = features._MANY_ROWS
    try:
        features._MANY_ROWS = 10**12
        reference = features.history_in_file(patients.tolist(), encounters.tolist(), cols)
    finally:
        features._MANY_ROWS = original
    assert fast.dtype == reference.dtype == np.float32
    assert np.array_equal(fast, reference)
    assert fast[:, 0].max() > 3  # patients with several earlier encounters were exercised


def test_validation_parses_each_id_without_the_row_parser(sample_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Distinct ids (one per row) no longer go through ``parse_value``'s regex one by one: it is called for far
    fewer values than the file has encounters."""
    calls = 0
    real = tabular.parse_value

    def counting(col: schema.Column, value: object) -> tuple[object, str | None]:
        nonlocal calls
        calls += 1
        return real(col, value)

    monkeypatch.setattr(tabular, "parse_value", counting)
    table = tabular.read_table(sample_csv, require_target=True)
    assert table.n_rows > 8000 and table.valid.all()
    assert calls < table.n_rows // 4, calls


@pytest.mark.slow
def test_predict_does_not_import_scikit_learn(small_bundle: Path, sample_csv: Path, tmp_path: Path) -> None:
    """xgboost imports sklearn (~0.7 s) for estimators readmit never uses; predict's process goes without."""
    out = tmp_path / "o.csv"
    code = (
        "import sys\nfrom chalicelib.cli import main as cli\n"
        f"code = cli.main(['predict', '--model', {str(small_bundle)!r}, '--data', {str(sample_csv)!r},"
        f" '--out', {str(out)!r}])\n"
        "print('sklearn' in sys.modules, 'xgboost' in sys.modules, code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "0"], done.stdout + done.stderr
    assert out.read_text().count("\n") > 8000


def test_the_byte_reader_reads_bom_crlf_and_gzip_as_the_text_did(sample_csv: Path, tmp_path: Path) -> None:
    import gzip

    from chalicelib.data.dataset import DatasetError

    lines = sample_csv.read_text().splitlines()[:301]
    plain = tabular.read_table(_write(tmp_path / "lf.csv", "\n".join(lines) + "\n"), require_target=True)
    bom_crlf = _write(tmp_path / "bom.csv", "\ufeff" + "\r\n".join(lines) + "\r\n")
    gz = tmp_path / "s.csv.gz"
    gz.write_bytes(gzip.compress(("\r\n".join(lines) + "\r\n").encode()))
    for other in (tabular.read_table(bom_crlf, require_target=True), tabular.read_table(gz, require_target=True)):
        assert other.raw.equals(plain.raw) and other.n_rows == 300
    latin = tmp_path / "latin.csv"
    latin.write_bytes(("\n".join(lines[:50]) + "\nCaf\u00e9\n").encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        tabular.read_table(latin, require_target=True)


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path
