"""Batch scoring of a UCI-format file: every input row comes out, scored or marked with a reason."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import ModelBundle
from .features import encode, history_in_file
from .schema import EXCLUDED_DISPOSITIONS, TARGET
from .tabular import Table, read_table

OUTPUT_COLUMNS = ("encounter_id", "risk", "risk_tier", "status", "reason", "model_version")


@dataclass
class Scored:
    """Risk for each valid row of a table (NaN where excluded from the cohort)."""

    table: Table
    risk: np.ndarray  # per valid row
    tiers: np.ndarray
    excluded: np.ndarray  # per valid row
    X: np.ndarray


def score_table(model: ModelBundle, table: Table) -> Scored:
    history = history_in_file(table.patient_nbr.tolist(), table.encounter_id.tolist(), table.cols)
    X = encode(table.cols, history)
    excluded = np.isin(table.cols["discharge_disposition_id"], list(EXCLUDED_DISPOSITIONS))
    risk = model.risk(X) if len(X) else np.empty(0)
    risk = np.where(excluded, np.nan, risk)
    tiers = np.where(excluded, "", model.tiers(risk)) if len(X) else np.empty(0, dtype=str)
    return Scored(table, risk, tiers, excluded, X)


def predict_file(model: ModelBundle, data: Path, out: Path) -> dict[str, int]:
    """Score ``data`` into ``out`` (one row per input row, in input order); returns counts by status."""
    table = read_table(data, require_target=False)
    scored = score_table(model, table)
    reasons = {e.line - 2: e.reason for e in table.errors}
    valid_index = np.flatnonzero(table.valid)
    risk = np.full(table.n_rows, np.nan)
    risk[valid_index] = scored.risk
    tier = np.full(table.n_rows, "", dtype=object)
    tier[valid_index] = scored.tiers
    excluded = np.zeros(table.n_rows, dtype=bool)
    excluded[valid_index] = scored.excluded
    ids = table.raw["encounter_id"].tolist()
    counts = {"scored": 0, "excluded": 0, "invalid": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(OUTPUT_COLUMNS)
        for i in range(table.n_rows):
            if i in reasons:
                status, reason, r = "invalid", reasons[i], ""
            elif excluded[i]:
                status, reason, r = "excluded", "discharged to hospice or expired: outside the model's cohort", ""
            else:
                status, reason, r = "scored", "", f"{risk[i]:.6f}"
            counts[status] += 1
            writer.writerow((ids[i], r, tier[i], status, reason, model.version))
    return counts


def labelled_cohort(model: ModelBundle, data: Path) -> tuple[np.ndarray, np.ndarray, Scored, np.ndarray]:
    """(labels, risk, scored, mask over valid rows) for rows that are valid, in the cohort and labelled."""
    table = read_table(data, require_target=True)
    scored = score_table(model, table)
    has_label = np.isin(table.target, ("NO", ">30", "<30")) if table.target is not None else None
    if has_label is None:
        raise ValueError(f"{data} has no {TARGET} column")
    keep = ~scored.excluded & has_label
    return table.labels[keep], scored.risk[keep], scored, keep
