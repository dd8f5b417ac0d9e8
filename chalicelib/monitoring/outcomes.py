"""Labels arrive 30 days late: an outcomes feed joined to the prediction log by the hashed encounter id, and
realized performance for windows whose labels have matured (with a clearly marked estimate before that)."""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from chalicelib.core.audit import PredictionLog
from chalicelib.core.identifiers import hash_id

MATURITY = timedelta(days=30)  # readmission within 30 days is known only 30 days after discharge
POSITIVE = {"<30", "1", "true", "yes"}
NEGATIVE = {"no", ">30", "0", "false"}


class BadOutcome(ValueError):
    """An outcome row without an encounter id or with an unreadable label."""


@dataclass(frozen=True)
class Outcome:
    encounter_hash: str
    readmitted_30d: bool


def parse_outcomes(rows: Iterable[dict[str, Any]]) -> tuple[list[Outcome], list[str]]:
    """Rows with `encounter_id` and `readmitted` (UCI values, or 0/1/true/false). Bad rows are reported."""
    good, bad = [], []
    for i, row in enumerate(rows, start=1):
        eid, label = row.get("encounter_id"), str(row.get("readmitted", "")).strip().lower()
        if eid in (None, "") or label not in POSITIVE | NEGATIVE:
            bad.append(f"row {i}: needs encounter_id and readmitted (<30, >30, NO, 0 or 1)")
            continue
        good.append(Outcome(hash_id(eid, kind="encounter"), label in POSITIVE))
    return good, bad


def read_outcome_file(path: Path) -> tuple[list[Outcome], list[str]]:
    with path.open(newline="") as fh:
        if path.suffix == ".jsonl":
            return parse_outcomes(json.loads(line) for line in fh if line.strip())
        return parse_outcomes(csv.DictReader(fh))


class OutcomeStore:
    """Local JSONL of hashed encounter ids and labels (no identifiers kept); the last label for an id wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def add(self, outcomes: Iterable[Outcome]) -> int:
        lines = [json.dumps({"encounter_hash": o.encounter_hash, "readmitted_30d": o.readmitted_30d}) for o in outcomes]
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.writelines(line + "\n" for line in lines)
        return len(lines)

    def labels(self) -> dict[str, bool]:
        if not self.path.exists():
            return {}
        out = {}
        for line in self.path.read_text().splitlines():
            if line.strip():
                item = json.loads(line)
                out[item["encounter_hash"]] = bool(item["readmitted_30d"])
        return out


def load_outcome_uploads(uri: str, s3_client: Any = None) -> tuple[dict[str, bool], list[str]]:
    """Labels from every outcome upload (``*.csv`` / ``*.jsonl``) under a folder or ``s3://`` prefix. Ids are
    hashed in memory as they are read; later files win for the same encounter."""
    import io

    from chalicelib.core.storage import open_storage

    storage = open_storage(uri, s3_client)
    labels: dict[str, bool] = {}
    problems: list[str] = []
    for key in storage.list(""):
        if not key.endswith((".csv", ".jsonl")):
            continue
        text = storage.read_bytes(key).decode("utf-8")
        if key.endswith(".jsonl"):
            rows: Iterable[dict[str, Any]] = (json.loads(line) for line in text.splitlines() if line.strip())
        else:
            rows = csv.DictReader(io.StringIO(text))
        good, bad = parse_outcomes(rows)
        labels.update({o.encounter_hash: o.readmitted_30d for o in good})
        problems.extend(f"{key}: {b}" for b in bad)
    return labels, problems


def _iter_window(log: PredictionLog, since: datetime, until: datetime) -> Iterator[Any]:
    return (r for r in log.read(since, until) if r.source != "shadow")  # shadow records are not the record of care


def realized(
    log: PredictionLog, labels: dict[str, bool], since: datetime, until: datetime, now: datetime | None = None
) -> dict[str, Any]:
    """Realized metrics for predictions in [since, until). Only predictions older than 30 days count as matured;
    for the rest, the calibrated risks give an *estimate* of how many readmissions to expect."""
    # Without scikit-learn: the drift monitor's Lambda package has none (model.evaluation imports it at load).
    from chalicelib.model.calibration import ece, roc_auc

    now = now or datetime.now(UTC)
    matured_before = now - MATURITY
    records = [r for r in _iter_window(log, since, until) if r.encounter_hash]
    matured = [r for r in records if r.timestamp <= matured_before]
    pending = [r for r in records if r.timestamp > matured_before]
    joined = [(r, labels[r.encounter_hash]) for r in matured if r.encounter_hash in labels]
    out: dict[str, Any] = {
        "window": [since.isoformat(), until.isoformat()],
        "predictions": len(records),
        "matured": len(matured),
        "label_coverage": len(joined) / len(matured) if matured else None,
    }
    if joined:
        y = np.array([label for _, label in joined], dtype=int)
        p = np.array([r.risk for r, _ in joined])
        high = np.array([r.risk_tier == "high" for r, _ in joined])
        out["realized"] = {
            "n": len(joined),
            "readmitted": int(y.sum()),
            "roc_auc": roc_auc(y, p),
            "ece": ece(y, p),
            "high_tier_precision": float(y[high].mean()) if high.any() else None,
            "observed_rate": float(y.mean()),
            "expected_rate": float(p.mean()),
        }
    if pending:
        risk = np.array([r.risk for r in pending])
        out["estimate"] = {
            "note": "ESTIMATE from calibrated risks: labels for these predictions have not matured (30 days)",
            "n": len(pending),
            "expected_readmissions": float(risk.sum()),
            "predicted_high_tier": int(sum(r.risk_tier == "high" for r in pending)),
        }
    return out
