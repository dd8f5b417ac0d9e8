"""Batch input: a UCI-format CSV → validated columns, with every bad row reported by line and reason.

Validation is vectorised per column (pandas) for speed; the words of each error come from the same
row parser the API uses (``schema.parse_encounter``), so batch and online reject the same values for
the same reasons. Training-side only: the serving path never imports this module.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from chalicelib.data.dataset import DatasetError, DatasetSchemaError, open_text
from chalicelib.data.schema import (
    COLUMN_NAMES,
    COLUMNS,
    FEATURE_INPUTS,
    IDENTIFIERS,
    POSITIVE_LABEL,
    TARGET,
    Column,
    is_missing,
    parse_encounter,
    parse_value,
)


@dataclass
class RowError:
    """A row that failed validation: its line in the file (header = line 1) and why."""

    line: int
    reason: str


@dataclass
class Table:
    """A validated batch. ``valid`` marks rows whose every field parsed; ``cols`` hold only those rows."""

    raw: pd.DataFrame  # strings as read; identifiers stay here and never reach logs
    valid: np.ndarray
    errors: list[RowError]
    cols: dict[str, np.ndarray]
    encounter_id: np.ndarray  # int64, valid rows
    patient_nbr: np.ndarray  # int64, valid rows
    target: np.ndarray | None  # readmitted as strings (valid rows), None when the file has no target

    @property
    def n_rows(self) -> int:
        return len(self.raw)

    @property
    def labels(self) -> np.ndarray:
        assert self.target is not None
        return (self.target == POSITIVE_LABEL).astype(np.int8)


def _check(col: Column, s: pd.Series, nullable: bool) -> tuple[np.ndarray, np.ndarray]:
    """(valid mask, parsed values) for one column. Each distinct value goes through the row parser once,
    so batch and API accept exactly the same values."""
    # On the plain object array: pandas' own string dtype factorizes at half the speed, and iterating its
    # uniques costs ~1 µs a value.
    codes, unique_array = pd.factorize(s.to_numpy(dtype=object))
    uniques: list[str] = unique_array.tolist()
    if col.kind in ("int", "id", "code"):
        ok, table = _numbers(col, uniques, nullable)
        return np.append(ok, False)[codes], np.append(table, np.nan)[codes]
    parsed = [parse_value(col, u) for u in uniques]
    ok = np.array(
        [problem is None or (nullable and is_missing(u)) for u, (_, problem) in zip(uniques, parsed, strict=False)]
        + [False]
    )
    if col.kind == "category":
        index = {v: i for i, v in enumerate(col.allowed)}
        table = np.array([-1 if v is None else index[v] for v, _ in parsed] + [-1], dtype=np.int16)
    else:
        table = np.array(["" if v is None else v for v, _ in parsed] + [""], dtype="U7")
    return ok[codes], table[codes]


_PLAIN_DIGITS = 18  # fits int64 whatever the digits; longer texts take the row parser's path


def _numbers(col: Column, uniques: list[str], nullable: bool) -> tuple[np.ndarray, np.ndarray]:
    """(valid, value as float64) per distinct text of an integer column.

    The common case, plain ASCII digits within the column's range or codes, is answered in numpy: the id
    columns have ~100k distinct values each, and the row parser's regex on each was ~0.15 s of a predict.
    Every other text goes through ``parse_value``, so what is accepted is the row parser's decision."""
    text = np.array(uniques, dtype=str) if uniques else np.empty(0, dtype="U1")
    ascii_only = text.view(np.uint32).reshape(len(text), -1).max(axis=1, initial=0) < 128
    length = np.strings.str_len(text)
    same_text = length == np.fromiter(map(len, uniques), dtype=np.int64, count=len(uniques))  # numpy drops end NULs
    plain = np.strings.isdigit(text) & ascii_only & same_text & (length <= _PLAIN_DIGITS)
    values = np.full(len(text), np.nan)
    numbers = text[plain].astype(np.int64)
    if col.kind == "code":
        fits = np.isin(numbers, np.fromiter(col.codes or {}, dtype=np.int64))
    else:
        fits = (numbers >= col.low) & (numbers <= col.high)
    good = np.zeros(len(text), dtype=bool)
    good[np.flatnonzero(plain)[fits]] = True
    values[good] = numbers[fits]
    ok = good.copy()
    for i in np.flatnonzero(~good).tolist():
        value, problem = parse_value(col, uniques[i])
        ok[i] = problem is None or (nullable and is_missing(uniques[i]))
        values[i] = np.nan if value is None else value
    return ok, values


def read_table(path: Path, *, require_target: bool) -> Table:
    """Read and validate a UCI-format file (zip, csv, csv.gz; CRLF or LF).

    A row with the wrong number of fields is one invalid row (its line and field count), not a failed file."""
    ragged: dict[int, str] = {}
    try:
        with open_text(path) as fh:
            raw = _read_csv(fh)
    except pd.errors.EmptyDataError:
        raise DatasetSchemaError(f"{path} is empty: expected a UCI-format CSV with a header line") from None
    except pd.errors.ParserError:  # ragged rows: the slow path keeps them, marked, instead of failing the file
        raw, ragged = _read_ragged(path)
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not UTF-8 text: expected a UCI-format CSV (or its .zip / .csv.gz)") from None
    required = [c for c in COLUMN_NAMES if require_target or c != TARGET]
    missing_cols = [c for c in required if c not in raw.columns]
    if missing_cols:
        raise DatasetSchemaError(_schema_message(path, [str(c) for c in raw.columns], missing_cols, required))
    return validate_frame(raw, require_target=require_target, ragged=ragged)


def _read_csv(fh: IO[str]) -> pd.DataFrame:
    """Every field as the string written. pandas' C parser is given the bytes under the text stream when there
    are some (~25% faster than through the text layer): it decodes them as strict UTF-8 itself, so a non-UTF-8
    file still raises UnicodeDecodeError, and a BOM is dropped either way."""
    source = getattr(fh, "buffer", fh)
    return pd.read_csv(
        source, dtype=str, keep_default_na=False, na_filter=False, skip_blank_lines=False, encoding="utf-8"
    )


def _read_ragged(path: Path) -> tuple[pd.DataFrame, dict[int, str]]:
    """The file through the csv module: rows with too many or too few fields are cut or padded to the header's
    width (so the first column, the encounter id, still lines up) and reported by row index."""
    with open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise DatasetSchemaError(f"{path} is empty: expected a UCI-format CSV with a header line")
        width, rows, ragged = len(header), [], {}
        for i, row in enumerate(reader):
            if row and len(row) != width:
                ragged[i] = f"has {len(row)} fields, expected {width}"
                row = (row + [""] * width)[:width]
            rows.append(row or [""] * width)
    return pd.DataFrame(rows, columns=header, dtype=str), ragged


def _schema_message(path: Path, header: list[str], missing: list[str], required: list[str]) -> str:
    """Why the header is wrong, in the words of the likely cause: another delimiter, or not a UCI file at all."""
    first = ",".join(header)
    for delimiter, name in ((";", "semicolon"), ("\t", "tab")):
        if delimiter in first:
            return (
                f"{path}: the header looks {name}-delimited; readmit reads comma-separated UCI files "
                f"(convert it, e.g. re-export as CSV with ',' as the separator)"
            )
    if len(missing) == len(required):
        return f"{path} is not a UCI-format CSV: its first line has none of the expected columns (encounter_id, …)"
    return f"{path}: missing columns {', '.join(missing)}"


def validate_frame(raw: pd.DataFrame, *, require_target: bool, ragged: dict[int, str] | None = None) -> Table:
    """Parse every column; ``ragged`` rows (index → reason) are invalid whatever their fields say."""
    ragged = ragged or {}
    n = len(raw)
    valid = np.ones(n, dtype=bool)
    valid[list(ragged)] = False
    parsed: dict[str, Any] = {}
    for col in COLUMNS:
        if col.name == TARGET and col.name not in raw.columns:
            continue
        ok, values = _check(col, raw[col.name], nullable=col.name == TARGET and not require_target)
        valid &= ok
        parsed[col.name] = values
    errors = []
    for i in np.flatnonzero(~valid):
        if int(i) in ragged:
            errors.append(RowError(int(i) + 2, ragged[int(i)]))
            continue
        row = raw.iloc[i].to_dict()
        if not any(str(v).strip() for v in row.values()):
            errors.append(RowError(int(i) + 2, "blank line"))
            continue
        _, field_errors = parse_encounter(row, require_target=require_target, require_ids=True)
        reason = "; ".join(f"{e.field} {e.message}" for e in field_errors) or "invalid row"
        errors.append(RowError(int(i) + 2, reason))
    cols = {c.name: parsed[c.name][valid] for c in FEATURE_INPUTS}
    ids = {name: parsed[name][valid].astype(np.int64) for name in IDENTIFIERS}
    target = raw[TARGET].to_numpy(dtype=str)[valid] if TARGET in raw.columns else None
    return Table(raw, valid, errors, cols, ids["encounter_id"], ids["patient_nbr"], target)
