"""Scored batch rows, their order and the run summary: what the scored file and its summary say.

Every input row comes out exactly once: scored (with risk, tier and its three largest factors), excluded (outside
the model's cohort) or invalid (with the reason). The file is ordered for a call list: scored rows by risk,
highest first, then excluded, then invalid rows, each by line. Batches are scored and sorted independently; the
merge is a k-way merge of sorted parts, so it streams.
"""

from __future__ import annotations

import csv
import heapq
import io
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from chalicelib.core.audit import AuditRecord
from chalicelib.core.identifiers import hash_id
from chalicelib.data.schema import columns_from_records, is_excluded
from chalicelib.features.encoding import encode
from chalicelib.features.history import PatientHistory
from chalicelib.model.bundle import TIERS, ModelBundle
from chalicelib.model.explain import factor_lists

OUTPUT_COLUMNS = ("encounter_id", "risk", "risk_tier", "top_factors", "model_version", "status", "reason", "line")
STATUSES = ("scored", "excluded", "invalid")
EXCLUDED_REASON = "discharged to hospice or expired: outside the model's cohort"  # as batch.predict_file says it
SHORT_FACTORS = 3
MAX_LISTED_INVALID = 1000  # the summary lists this many invalid rows; the scored file marks every one

OutputRow = tuple[str, str, str, str, str, str, str, str]
_RISK, _STATUS, _REASON, _LINE = (OUTPUT_COLUMNS.index(c) for c in ("risk", "status", "reason", "line"))
_TIER = OUTPUT_COLUMNS.index("risk_tier")
_RANK = {status: i for i, status in enumerate(STATUSES)}


def order_key(row: Sequence[str]) -> tuple[int, float, int]:
    """Scored rows by risk (highest first), then excluded, then invalid; ties and the rest by line."""
    risk = -float(row[_RISK]) if row[_STATUS] == "scored" else 0.0
    return _RANK[row[_STATUS]], risk, int(row[_LINE])


def short_factors(factors: list[dict[str, Any]], k: int = SHORT_FACTORS) -> str:
    """'Inpatient stays (prior year) = 2 (+); ...': the k largest contributions, + raises risk, - lowers it."""
    return "; ".join(f"{f['label']} = {f['value']} ({'+' if f['contribution'] > 0 else '-'})" for f in factors[:k])


@dataclass
class ScoredBatch:
    """One batch, scored: output rows in file order and the audit records of the scored ones."""

    rows: list[OutputRow]
    audit: list[AuditRecord]

    def counts(self) -> dict[str, int]:
        found = Counter(r[_STATUS] for r in self.rows)
        return {"rows": len(self.rows), **{s: found[s] for s in STATUSES}}

    def sorted_rows(self) -> list[OutputRow]:
        return sorted(self.rows, key=order_key)


def score_rows(model: ModelBundle, rows: Sequence[Any], id_index: int, *, request_id: str) -> ScoredBatch:
    """Risk, tier and short factors for the valid in-cohort rows of a batch (``batch_rows.Row``s).

    Risk is ``model.risk`` exactly as ``batch.score_table`` computes it; SHAP only names the factors."""
    cohort = [r for r in rows if r.record is not None and not is_excluded(r.record)]
    hist = np.zeros((len(cohort), len(PatientHistory.__dataclass_fields__)), dtype=np.float32)
    for i, r in enumerate(cohort):
        if r.history:
            hist[i] = r.history
    scored: dict[int, tuple[float, str, str]] = {}
    audit: list[AuditRecord] = []
    if cohort:
        X = encode(columns_from_records([r.record for r in cohort]), hist)
        risk = model.risk(X)
        tiers = model.tiers(risk)
        contribs = model.contributions(X)
        at = datetime.now(UTC)
        histories = [PatientHistory(*r.history) if r.history else None for r in cohort]
        factors = factor_lists(contribs, [r.record for r in cohort], histories)
        for i, r in enumerate(cohort):
            scored[r.line] = (float(risk[i]), tiers[i], short_factors(factors[i]))
            eid = r.record["encounter_id"]
            audit.append(
                AuditRecord(
                    request_id=request_id,
                    at=at,
                    model_version=model.version,
                    risk=float(risk[i]),
                    risk_tier=tiers[i],
                    encounter_hash=hash_id(eid, kind="encounter"),
                    features=X[i].tolist(),
                    source="batch",
                )
            )
    out: list[OutputRow] = []
    for r in rows:
        eid = r.fields[id_index] if id_index < len(r.fields) else ""
        if r.record is None:
            out.append((eid, "", "", "", model.version, "invalid", r.reason or "invalid row", str(r.line)))
        elif r.line not in scored:
            out.append((eid, "", "", "", model.version, "excluded", EXCLUDED_REASON, str(r.line)))
        else:
            risk_value, tier, top_factors = scored[r.line]
            out.append((eid, f"{risk_value:.6f}", tier, top_factors, model.version, "scored", "", str(r.line)))
    return ScoredBatch(out, audit)


def to_csv(rows: Iterable[Sequence[str]], header: bool = True) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(OUTPUT_COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def from_csv(data: bytes) -> list[OutputRow]:
    reader = csv.reader(io.StringIO(data.decode()))
    if tuple(next(reader, ())) != OUTPUT_COLUMNS:
        raise ValueError(f"a part must start with the header {','.join(OUTPUT_COLUMNS)}")
    return [tuple(r) for r in reader]  # type: ignore[misc]  # a part is to_csv's output: rows of 8 columns


def merge(parts: Iterable[Iterable[Sequence[str]]]) -> Iterator[Sequence[str]]:
    """One ordered stream from parts that are each ordered by ``order_key``."""
    return heapq.merge(*parts, key=order_key)


@dataclass
class Summary:
    """Counts over the merged rows, fed in output order: rows, status, tiers, the capacity band, invalid rows."""

    capacity_percent: float
    counts: Counter[str] = field(default_factory=Counter)
    tiers: Counter[str] = field(default_factory=Counter)
    risks: list[float] = field(default_factory=list)  # scored rows, highest first
    invalid: list[dict[str, Any]] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)

    def add(self, row: Sequence[str]) -> None:
        status = row[_STATUS]
        self.counts[status] += 1
        self.versions.add(row[OUTPUT_COLUMNS.index("model_version")])
        if status == "scored":
            self.tiers[row[_TIER]] += 1
            self.risks.append(float(row[_RISK]))
        elif status == "invalid" and len(self.invalid) < MAX_LISTED_INVALID:
            self.invalid.append({"line": int(row[_LINE]), "reason": row[_REASON]})

    def capacity_band(self) -> dict[str, Any]:
        """The top ``capacity_percent`` of scored rows by risk (rows tied with the last one are in too)."""
        n = len(self.risks)
        if n == 0:
            return {"percent": self.capacity_percent, "rows": 0, "min_risk": None}
        cutoff = self.risks[max(1, math.ceil(n * self.capacity_percent / 100)) - 1]
        band = sum(1 for r in self.risks if r >= cutoff)
        return {"percent": self.capacity_percent, "rows": band, "min_risk": cutoff}

    def to_dict(self) -> dict[str, Any]:
        invalid = self.counts["invalid"]
        return {
            "rows": sum(self.counts.values()),
            **{status: self.counts[status] for status in STATUSES},
            "tiers": {tier: self.tiers[tier] for tier in reversed(TIERS)},
            "capacity_band": self.capacity_band(),
            "model_versions": sorted(self.versions),
            "invalid_rows": self.invalid,
            "invalid_rows_listed": min(invalid, MAX_LISTED_INVALID),
        }
