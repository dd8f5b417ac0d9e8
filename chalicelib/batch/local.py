"""Batch scoring of a UCI-format file: every input row comes out, scored or marked with a reason."""

from __future__ import annotations

import csv
import importlib.abc
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chalicelib.data.schema import EXCLUDED_DISPOSITIONS, TARGET
from chalicelib.features.encoding import encode
from chalicelib.features.history import history_in_file

if TYPE_CHECKING:  # imported at call time: ``import_xgboost_lean`` must run before xgboost is first imported, and
    # ``readmit predict`` imports pandas (``tabular``) while the model is checked in another process
    from chalicelib.data.tabular import Table
    from chalicelib.model.bundle import ModelBundle

OUTPUT_COLUMNS = ("encounter_id", "risk", "risk_tier", "status", "reason", "model_version")
_EXCLUDED_REASON = "discharged to hospice or expired: outside the model's cohort"


@dataclass
class Scored:
    """Risk for each valid row of a table (NaN where excluded from the cohort)."""

    table: Table
    risk: np.ndarray  # per valid row
    tiers: np.ndarray
    excluded: np.ndarray  # per valid row
    X: np.ndarray


class _Unavailable(importlib.abc.MetaPathFinder):
    """Makes the named top-level packages look uninstalled to ``import``."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in self.names:
            raise ImportError(f"{name} is not needed for scoring")
        return None


def import_xgboost_lean() -> None:
    """Import xgboost without scikit-learn, as the serving Lambda has it (and as ``model_check``'s child does).

    ``xgboost.compat`` imports sklearn at import time only to offer its sklearn-style estimators, which
    readmit never uses (it calls ``xgb.train`` and the Booster); that import is ~0.7 s of a ~3 s
    ``readmit predict``. A no-op when xgboost or sklearn is already imported (nothing to gain, nothing to
    change); sklearn stays importable afterwards for whoever needs it."""
    if "xgboost" in sys.modules or "sklearn" in sys.modules:
        return
    blocker = _Unavailable(("sklearn",))
    sys.meta_path.insert(0, blocker)
    try:
        import xgboost  # noqa: F401
    finally:
        sys.meta_path.remove(blocker)


def score_table(model: ModelBundle, table: Table) -> Scored:
    history = history_in_file(table.patient_nbr.tolist(), table.encounter_id.tolist(), table.cols)
    X = encode(table.cols, history)
    excluded = np.isin(table.cols["discharge_disposition_id"], list(EXCLUDED_DISPOSITIONS))
    risk = model.risk(X) if len(X) else np.empty(0)
    risk = np.where(excluded, np.nan, risk)
    tiers = np.where(excluded, "", model.tiers(risk)) if len(X) else np.empty(0, dtype=str)
    return Scored(table, risk, tiers, excluded, X)


def predict_file(model: ModelBundle, data: Path, out: Path, *, table: Table | None = None) -> dict[str, int]:
    """Score ``data`` into ``out`` (one row per input row, in input order); returns counts by status.

    ``table``: ``data`` already read (``read_table(data, require_target=False)``), e.g. while the model loaded."""
    from chalicelib.data.tabular import read_table

    table = table if table is not None else read_table(data, require_target=False)
    scored = score_table(model, table)
    reasons = {e.line - 2: e.reason for e in table.errors}
    valid_index = np.flatnonzero(table.valid)
    risk = np.full(table.n_rows, np.nan)
    risk[valid_index] = scored.risk
    tier = np.full(table.n_rows, "", dtype=object)
    tier[valid_index] = scored.tiers
    excluded = np.zeros(table.n_rows, dtype=bool)
    excluded[valid_index] = scored.excluded
    # Whole columns, then one writerows: the per-row loop of branches and lookups was ~0.25 s on 100k rows.
    status = np.where(excluded, "excluded", "scored").astype(object)
    reason = np.where(excluded, _EXCLUDED_REASON, "").astype(object)
    for i, why in reasons.items():
        status[i], reason[i] = "invalid", why
    scored = status == "scored"
    risk_text = [f"{r:.6f}" if s else "" for r, s in zip(risk.tolist(), scored.tolist(), strict=True)]
    counts = {name: int(np.count_nonzero(status == name)) for name in ("scored", "excluded", "invalid")}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(OUTPUT_COLUMNS)
        columns = (table.raw["encounter_id"].tolist(), risk_text, tier.tolist(), status.tolist(), reason.tolist())
        writer.writerows((*row, model.version) for row in zip(*columns, strict=True))
    return counts


def labelled_cohort(model: ModelBundle, data: Path) -> tuple[np.ndarray, np.ndarray, Scored, np.ndarray]:
    """(labels, risk, scored, mask over valid rows) for rows that are valid, in the cohort and labelled."""
    from chalicelib.data.tabular import read_table

    table = read_table(data, require_target=True)
    scored = score_table(model, table)
    has_label = np.isin(table.target, ("NO", ">30", "<30")) if table.target is not None else None
    if has_label is None:
        raise ValueError(f"{data} has no {TARGET} column")
    keep = ~scored.excluded & has_label
    return table.labels[keep], scored.risk[keep], scored, keep
