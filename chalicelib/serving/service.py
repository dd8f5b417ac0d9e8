"""Scoring parsed encounters: history lookup → features → calibrated risk → SHAP factors → audit record.

The same path serves one encounter or a batch of 500; it imports neither pandas nor scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from chalicelib.core.audit import AUDIT_TIME, AuditRecord, PredictionLog
from chalicelib.core.identifiers import current_salt, hash_id
from chalicelib.data.schema import columns_from_records, is_excluded
from chalicelib.features.encoding import encode
from chalicelib.features.history import HISTORY_WIDTH, PatientHistory
from chalicelib.model.bundle import ModelBundle
from chalicelib.model.explain import factor_lists
from chalicelib.registry.provider import ModelProvider
from chalicelib.serving.errors import Detail, NotReady, ValidationFailed
from chalicelib.serving.history_store import HistoryStore

if TYPE_CHECKING:
    from chalicelib.monitoring.shadow import ShadowScorer

COHORT_MESSAGE = "patients discharged to hospice or expired (11, 13, 14, 19, 20, 21) are outside the model's cohort"


def cohort_error(record: dict[str, Any], prefix: str = "") -> ValidationFailed | None:
    if is_excluded(record):
        return ValidationFailed([Detail(f"{prefix}discharge_disposition_id", COHORT_MESSAGE)], "outside the cohort")
    return None


@dataclass
class Scored:
    """One scored encounter, before it is shaped into a response."""

    risk: float
    tier: str
    factors: list[dict[str, Any]] | None
    history_encounters: int


class Predictor:
    """Scores validated records with the provider's current model; records history and audit on request.

    With a ``shadow`` (and a log), each API request's encoded features are handed to the challenger after the
    champion has scored and logged them; the challenger scores off the request path
    (chalicelib/monitoring/shadow.py)."""

    def __init__(
        self,
        provider: ModelProvider,
        history: HistoryStore | None = None,
        log: PredictionLog | None = None,
        shadow: ShadowScorer | None = None,
    ) -> None:
        self.provider = provider
        self.history = history
        self.log = log
        self.shadow = shadow

    def model(self) -> ModelBundle:
        model = self.provider.current()
        if model is None:
            raise NotReady(self.provider.status.last_error or "no model loaded yet")
        return model

    def _histories(self, records: Sequence[dict[str, Any]], salt: str | None) -> list[PatientHistory | None]:
        out: list[PatientHistory | None] = []
        for r in records:
            if self.history is None or r.get("patient_nbr") is None:
                out.append(None)
            else:
                key = hash_id(r["patient_nbr"], salt, kind="patient")
                out.append(self.history.history(key, r.get("encounter_id")))
        return out

    def score(
        self,
        model: ModelBundle,
        records: Sequence[dict[str, Any]],
        *,
        explain: bool = True,
        request_id: str,
        remember: bool = False,
        source: str = "api",
        caller: str | None = None,
    ) -> list[Scored]:
        # Resolved once per call (a batch hashes up to 1,000 ids), and only when some id will be hashed.
        hashes = self.log is not None or any(r.get("patient_nbr") is not None for r in records)
        salt = current_salt() if hashes else None
        histories = self._histories(records, salt)
        hist = np.zeros((len(records), HISTORY_WIDTH), dtype=np.float32)
        for i, h in enumerate(histories):
            if h is not None:
                hist[i] = h.as_row()
        X = encode(columns_from_records(list(records)), hist)
        if explain:
            risk, contribs = model.risk_and_contributions(X)
        else:
            risk, contribs = model.risk(X), None
        tiers = model.tiers(risk)
        factors = factor_lists(contribs, records, histories) if contribs is not None else None
        results = [
            Scored(r, tiers[i], factors[i] if factors is not None else None, h.encounters if h else 0)
            for i, (r, h) in enumerate(zip(risk.tolist(), histories, strict=True))
        ]
        if self.log is not None:
            at = datetime.now(UTC).strftime(AUDIT_TIME)  # one request, one time
            hashed = [_encounter_hash(r, salt) for r in records]
            self.log.append(
                [
                    _audit(request_id, at, model.version, results[i], hashed[i], X[i], source, caller)
                    for i in range(len(records))
                ]
            )
            if self.shadow is not None and source == "api":  # the batch job and /chat (no log) never shadow
                self.shadow.submit(model, X, request_id, at, hashed, caller)
        if remember and self.history is not None:
            for record in records:
                if record.get("patient_nbr") is not None and record.get("encounter_id") is not None:
                    key = hash_id(record["patient_nbr"], salt, kind="patient")
                    self.history.record(key, record["encounter_id"], record)
        return results


def _encounter_hash(record: dict[str, Any], salt: str | None) -> str | None:
    eid = record.get("encounter_id")
    return hash_id(eid, salt, kind="encounter") if eid is not None else None


def _audit(
    request_id: str,
    at: str,
    version: str,
    scored: Scored,
    encounter_hash: str | None,
    x: np.ndarray,
    source: str,
    caller: str | None = None,
) -> AuditRecord:
    return AuditRecord.scored(
        request_id=request_id,
        at=at,
        model_version=version,
        risk=scored.risk,
        risk_tier=scored.tier,
        encounter_hash=encounter_hash,
        features=x.astype(np.float64).tolist(),  # NaN (a missing input) is written as null
        source=source,
        caller=caller,
    )
