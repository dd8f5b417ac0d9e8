"""Batch rows without pandas: the CSV reader, row validation and in-file history the batch Lambdas share.

``tabular.read_table`` (pandas) is the training side's reader; the scoring Lambdas may not import pandas, so
this module reads the same files with the csv module and checks every field with the same parser
(``schema.parse_value``, cached per distinct value of a column), so a row is valid or not, and for the same
reasons in the same words, on both sides. History features come from the same accumulator
(``features.history_in_file``) over the whole file.

A row travels between Lambdas as an *item* ``{"line", "hist", "row"}``: its line in the file (header = 1),
its patient's earlier encounters in the file (five counts, "" for none) and its fields as one CSV record; the
column names travel once per batch. Distributed Map counts every byte of a batch against Step Functions'
256 KiB payload limit, and the UCI row as a JSON object with its 50 keys is ~1.2 kB, this one ~0.24 kB, so
1,000 rows fit in a batch.

The prepared file is read by the Distributed Map's CSV ItemReader, not by Python's csv module, and the two differ:
Step Functions treats a backslash as an escape and silently drops one before any other character. ``write_items``
therefore doubles every backslash, and ``read_item_reader_csv`` is that reader as documented (the tests and the
benchmark read the prepared file through it), so both batch paths see the same fields.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from chalicelib.batch.errors import BatchFileError, DuplicateColumns, MissingColumns
from chalicelib.data.schema import COLUMN_NAMES, COLUMNS, TARGET, Column, is_missing, parse_value
from chalicelib.features.history import HISTORY_WIDTH, history_in_file

ITEM_FIELDS = ("line", "hist", "row")
OPTIONAL_COLUMNS = frozenset({TARGET, "patient_nbr"})  # no patient_nbr column: no history features
REQUIRED_COLUMNS = tuple(c for c in COLUMN_NAMES if c not in OPTIONAL_COLUMNS)
_HISTORY_INPUTS = ("admission_type_id", "time_in_hospital", "number_inpatient", "discharge_disposition_id")

Item = dict[str, str]


@dataclass
class Row:
    """One input row: parsed ``record`` when every field is valid, else the ``reason`` it is not."""

    line: int
    fields: list[str]
    record: dict[str, Any] | None
    reason: str | None
    history: tuple[int, ...]


class RowValidator:
    """Validates the rows of one file (its header fixes the columns); each distinct value is parsed once."""

    def __init__(self, columns: Sequence[str]) -> None:
        columns = [c.strip().lstrip("\ufeff") for c in columns]
        if dup := sorted({c for c in columns if columns.count(c) > 1}):
            raise DuplicateColumns(f"the header repeats {', '.join(dup)}")
        if missing := [c for c in REQUIRED_COLUMNS if c not in columns]:
            raise MissingColumns(f"the header lacks {', '.join(missing)}")
        self.columns = tuple(columns)
        self.has_patient = "patient_nbr" in columns
        index = {name: i for i, name in enumerate(columns)}
        # (column, position, cache of parsed values); ids are all distinct, so they are parsed uncached
        self._plan: list[tuple[Column, int, dict[str, tuple[Any, str | None]] | None]] = [
            (c, index[c.name], None if c.kind == "id" else {}) for c in COLUMNS if c.name in index
        ]

    @staticmethod
    def _parse(col: Any, value: str, cache: dict[str, tuple[Any, str | None]] | None) -> tuple[Any, str | None]:
        hit = parse_value(col, value)
        if hit[1] is not None and col.name == TARGET and is_missing(value):
            hit = (None, None)  # an unlabelled row is fine for scoring
        if cache is not None:
            cache[value] = hit
        return hit

    def parse(self, fields: Sequence[str]) -> tuple[dict[str, Any] | None, str | None]:
        """(record, None) or (None, reason): every field error, in schema order, as tabular.read_table says it."""
        if len(fields) != len(self.columns):
            if not any(f.strip() for f in fields):
                return None, "blank line"
            return None, f"{len(fields)} fields where the header has {len(self.columns)}"
        record: dict[str, Any] = {"patient_nbr": None, TARGET: None}
        problems = None
        for col, i, cache in self._plan:
            value = fields[i]
            hit = cache.get(value) if cache is not None else None
            if hit is None:
                hit = self._parse(col, value, cache)
            if hit[1] is not None:
                problems = [*(problems or []), f"{col.name} {hit[1]}"]
            record[col.name] = hit[0]
        if problems:
            return None, "blank line" if not any(f.strip() for f in fields) else "; ".join(problems)
        return record, None


def read_records(fh: TextIO) -> tuple[list[str], Iterator[list[str]]]:
    """The header and an iterator over the records of a CSV stream (a blank line is an empty record)."""
    reader = csv.reader(fh)
    header = next(reader, None)
    if header is None:
        raise MissingColumns("the file is empty")
    return header, reader


def _history(validator: RowValidator, records: Iterator[list[str]]) -> tuple[bytearray, np.ndarray]:
    """Pass 1: which rows are valid, and the in-file history of each valid one (the same accumulator as training:
    a patient's encounters with a smaller encounter_id). Keeps six numbers per row, not the rows."""
    valid = bytearray()
    keep: dict[str, list[int]] = {name: [] for name in ("patient_nbr", "encounter_id", *_HISTORY_INPUTS)}
    for fields in records:
        record, _ = validator.parse(fields)
        valid.append(record is not None)
        if record is not None:
            for name, values in keep.items():
                values.append(record[name] if record[name] is not None else 0)
    if not validator.has_patient:
        return valid, np.zeros((sum(valid), HISTORY_WIDTH), dtype=np.int64)
    cols = {name: np.asarray(keep[name], dtype=np.float64) for name in _HISTORY_INPUTS}
    return valid, history_in_file(keep["patient_nbr"], keep["encounter_id"], cols).astype(np.int64)


def prepare(open_text: Callable[[], TextIO]) -> tuple[list[str], Iterator[Item]]:
    """The columns and the items of a CSV file, in file order, each with its in-file history.

    Two passes over ``open_text()`` (a file on disk or a string), so memory holds numbers per row, never the rows:
    the prepare step reads files of a million rows."""
    with open_text() as fh:
        header, records = read_records(fh)
        validator = RowValidator(header)
        valid, history = _history(validator, records)

    def items() -> Iterator[Item]:
        encode = _RecordWriter()
        k = 0
        with open_text() as fh:
            _, records = read_records(fh)
            for i, fields in enumerate(records):
                hist = ""
                if valid[i]:
                    if history[k].any():
                        hist = " ".join(map(str, history[k].tolist()))
                    k += 1
                yield {"line": str(i + 2), "hist": hist, "row": encode(fields)}

    return list(validator.columns), items()


class _RecordWriter:
    """One CSV record as a string (quoted only where needed), reusing a buffer."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")

    def __call__(self, fields: Sequence[str]) -> str:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerow(fields)
        return self._buffer.getvalue()[:-1]


def from_items(validator: RowValidator, items: Iterable[Item]) -> list[Row]:
    """Rows of a batch of items, each validated again: the scoring Lambda trusts no earlier step."""
    rows = []
    for item in items:
        fields = next(csv.reader([item["row"]]), [])
        record, reason = validator.parse(fields)
        history = tuple(int(v) for v in item.get("hist", "").split()) if record is not None else ()
        if history and len(history) != HISTORY_WIDTH:
            raise BatchFileError(f"line {item['line']}: history has {len(history)} counts, expected {HISTORY_WIDTH}")
        rows.append(Row(int(item["line"]), fields, record, reason, history))
    return rows


def write_items(items: Iterable[Item], fh: TextIO) -> int:
    """The prepared file the Distributed Map reads: a CSV with the header line,hist,row; returns the row count.

    Quotes are doubled inside quoted fields (csv's default, and what Step Functions recommends) and every backslash
    is doubled, so ``read_item_reader_csv`` (Step Functions) gives back each item exactly."""
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(ITEM_FIELDS)
    n = 0
    for item in items:
        writer.writerow(tuple(item[name].replace(_BACKSLASH, _BACKSLASH * 2) for name in ITEM_FIELDS))
        n += 1
    return n


# ---- Step Functions' CSV ItemReader ----------------------------------------------------------------------------
# The rules, from "How Step Functions parses input CSV files"
# (https://docs.aws.amazon.com/step-functions/latest/dg/example-csv-parse-dist-map.html):
# - fields are separated by the delimiter (CSVDelimiter, default COMMA), records by newlines;
# - fields are strings; double quotes are not required, but a quoted string may hold delimiters and newlines;
# - a double quote is preserved by repeating it (the page's example reads the unquoted field {""MyKey"":""MyValue""}
#   as {"MyKey":"MyValue"});
# - a backslash escapes another backslash, a double quote or the delimiter; "a backslash followed by any other
#   character is silently removed";
# - with CSVHeaderLocation FIRST_ROW the first record names the fields; a row with fewer fields gets empty strings
#   for the missing ones, and a row with more has the extra fields skipped.
# Not documented, and never written by write_items: a lone double quote inside an unquoted field (kept as it is)
# and a backslash at the very end of the file (dropped, as before "any other character").
_BACKSLASH, _QUOTE = "\\", '"'


def _item_reader_records(text: str, delimiter: str = ",") -> Iterator[list[str]]:
    """The records of ``text`` as Step Functions' CSV ItemReader splits them (rules above)."""
    fields: list[str] = []
    field: list[str] = []
    start = True  # nothing of this field read yet: a double quote here opens a quoted string
    quoted = False
    i, n = 0, len(text)
    while i < n:
        ch, nxt = text[i], text[i + 1 : i + 2]
        i += 1
        if ch == _BACKSLASH:
            if nxt and nxt in (_BACKSLASH, _QUOTE, delimiter):
                field.append(nxt)
                i += 1
            # else: the backslash is silently removed and the next character read as usual
        elif ch == _QUOTE and start:
            quoted = True
        elif ch == _QUOTE and nxt == _QUOTE:  # a repeated quote is one quote
            field.append(_QUOTE)
            i += 1
        elif ch == _QUOTE and quoted:
            quoted = False
        elif not quoted and ch == delimiter:
            fields.append("".join(field))
            field, start = [], True
            continue
        elif not quoted and ch in "\r\n":
            if ch == "\r" and nxt == "\n":
                i += 1
            fields.append("".join(field))
            yield fields
            fields, field, start = [], [], True
            continue
        else:
            field.append(ch)
        start = False
    if not start or fields:
        fields.append("".join(field))
        yield fields


def read_item_reader_csv(text: str, delimiter: str = ",") -> list[Item]:
    """The items a Distributed Map's CSV ItemReader (CSVHeaderLocation FIRST_ROW) hands over for ``text``."""
    records = _item_reader_records(text, delimiter)
    header = next(records, None)
    if header is None:
        return []
    width = len(header)
    return [dict(zip(header, [*record[:width], *[""] * (width - len(record))], strict=True)) for record in records]
