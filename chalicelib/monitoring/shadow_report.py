"""The shadow report and the promotion rule: the champion against the shadow challenger on the same requests (tier
agreement, high-risk churn, risk shift, and both models' realized AUC and ECE once labels have matured), and whether
an approved challenger has run in shadow as long as READMIT_MIN_SHADOW_HOURS/_REQUESTS require.

Light on import (stdlib, pydantic via audit, the registry): the promote step imports ``shadow_ready`` from here;
numpy is imported where a report needs it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from chalicelib.core.audit import AuditRecord, PredictionLog
from chalicelib.core.settings import min_shadow_hours, min_shadow_requests
from chalicelib.monitoring.shadow import SOURCE
from chalicelib.registry.registry import SHADOW, Registry

if TYPE_CHECKING:
    import numpy as np

TIERS = ("low", "medium", "high")
MATURITY = timedelta(days=30)  # as chalicelib/monitoring/outcomes.py: a 30-day readmission label is known 30 days later
DEFAULT_REPORT_WINDOW = timedelta(days=90)  # when the shadow's start is unknown: long enough for matured labels
NOTE = (
    "Shadow predictions are not the record of care: nobody saw them, and under load shadow work is dropped "
    "(counted in the worker's stats), so counts can be below the champion's."
)
log = logging.getLogger("readmit.shadow")


# ---- the report ------------------------------------------------------------------------------------------------
def _pairs(
    records: Iterable[AuditRecord], version: str | None
) -> tuple[list[tuple[AuditRecord, AuditRecord]], dict[str, int]]:
    """(champion, shadow) records paired on (request_id, encounter_hash); keys that are not unique on a side (a
    batch whose encounters have no ids) are left out and counted."""
    champion: dict[tuple[str, str | None], AuditRecord | None] = {}
    shadow: dict[tuple[str, str | None], AuditRecord | None] = {}
    for record in records:
        if record.source == SOURCE:
            if version is not None and record.model_version != version:
                continue
            side = shadow
        elif record.source == "api":
            side = champion
        else:
            continue
        key = (record.request_id, record.encounter_hash)
        side[key] = None if key in side else record  # a second record under the same key: ambiguous
    pairs = []
    ambiguous = unpaired = 0
    for key, s in shadow.items():
        c = champion.get(key, False)
        if s is None or c is None:
            ambiguous += 1
        elif isinstance(c, AuditRecord):
            pairs.append((c, s))
        else:  # False: no champion record under the key
            unpaired += 1
    return pairs, {"ambiguous": ambiguous, "shadow_without_champion": unpaired}


def auc(y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray) -> float | None:
    """calibration.roc_auc (scikit-learn's value, without scikit-learn, which the API does not have)."""
    import numpy as np

    from chalicelib.model.calibration import roc_auc

    return roc_auc(np.asarray(y), np.asarray(p))


def ece(y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray, bins: int = 10) -> float:
    """calibration.ece (evaluation's definition, without scikit-learn, which the API does not have)."""
    import numpy as np

    from chalicelib.model.calibration import ece as expected_calibration_error

    return expected_calibration_error(np.asarray(y), np.asarray(p), bins)


def _realized(
    pairs: list[tuple[AuditRecord, AuditRecord]], labels: Mapping[str, bool] | None, now: datetime
) -> dict[str, Any]:
    """Both models on the paired encounters whose labels have matured (30 days) and are known: the outcome join
    of chalicelib/monitoring/outcomes.py (hashed encounter id → label), on the same encounters for both."""
    matured_before = now - MATURITY
    matured = [(c, s) for c, s in pairs if c.encounter_hash and c.timestamp <= matured_before]
    out: dict[str, Any] = {"matured": len(matured), "labelled": 0, "champion": None, "shadow": None}
    if labels is None:
        out["note"] = "no outcomes given"
        return out
    joined = [
        (c, s, labels[c.encounter_hash])
        for c, s in matured
        if c.encounter_hash is not None and c.encounter_hash in labels
    ]
    out["labelled"] = len(joined)
    if not joined:
        out["note"] = "no matured, labelled shadow predictions yet (labels mature 30 days after the prediction)"
        return out
    y = [int(label) for _, _, label in joined]
    for name, p in (("champion", [c.risk for c, _, _ in joined]), ("shadow", [s.risk for _, s, _ in joined])):
        out[name] = {"n": len(joined), "readmitted": sum(y), "roc_auc": auc(y, p), "ece": ece(y, p)}
    return out


def shadow_report(
    log: PredictionLog,
    since: datetime | None,
    until: datetime | None,
    outcomes: Mapping[str, bool] | None = None,
    *,
    version: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The challenger against the champion on the same requests in [since, until): requests compared, tier
    agreement (share and a 3×3 table, champion's tier by row), churn of the high-risk list, mean risk shift
    (shadow − champion) with its spread, and both models' realized AUC and ECE where labels have matured.
    ``outcomes`` maps hashed encounter ids to 30-day readmission; ``version`` keeps one challenger's records."""
    import numpy as np

    now = now or datetime.now(UTC)
    pairs, left_out = _pairs(log.read(since, until), version)
    report: dict[str, Any] = {
        "window": [None if since is None else since.isoformat(), None if until is None else until.isoformat()],
        "shadow_versions": dict(Counter(s.model_version for _, s in pairs)),
        "champion_versions": dict(Counter(c.model_version for c, _ in pairs)),
        "requests_compared": len({c.request_id for c, _ in pairs}),
        "encounters_compared": len(pairs),
        "left_out": left_out,
        "note": NOTE,
    }
    if not pairs:
        return {**report, "tier_agreement": None, "tier_table": None, "high_risk": None, "risk_shift": None,
                "realized": _realized(pairs, outcomes, now)}  # fmt: skip
    index = {t: i for i, t in enumerate(TIERS)}
    table = [[0] * len(TIERS) for _ in TIERS]
    for c, s in pairs:
        if c.risk_tier in index and s.risk_tier in index:
            table[index[c.risk_tier]][index[s.risk_tier]] += 1
    agree = sum(c.risk_tier == s.risk_tier for c, s in pairs)
    high_c = {i for i, (c, _) in enumerate(pairs) if c.risk_tier == "high"}
    high_s = {i for i, (_, s) in enumerate(pairs) if s.risk_tier == "high"}
    union = high_c | high_s
    shift = np.array([s.risk - c.risk for c, s in pairs], dtype=np.float64)
    report.update(
        {
            "tier_agreement": agree / len(pairs),
            "tier_table": {"tiers": list(TIERS), "rows": "champion", "columns": "shadow", "counts": table},
            "high_risk": {
                "champion": len(high_c),
                "shadow": len(high_s),
                "both": len(high_c & high_s),
                "entering": len(high_s - high_c),  # high under the shadow only: would join the list
                "leaving": len(high_c - high_s),  # high under the champion only: would leave it
                "jaccard_distance": 1 - len(high_c & high_s) / len(union) if union else None,
            },
            "risk_shift": {
                "mean": float(shift.mean()),
                "sd": float(shift.std(ddof=1)) if len(shift) > 1 else None,
                "p05": float(np.percentile(shift, 5)),
                "p95": float(np.percentile(shift, 95)),
                "mean_abs": float(np.abs(shift).mean()),
            },
            "realized": _realized(pairs, outcomes, now),
        }
    )
    return report


# ---- the promotion rule ----------------------------------------------------------------------------------------
def alias_set_at(registry: Registry, alias: str = SHADOW) -> tuple[str, datetime] | None:
    """(version, when it was set) of an alias, or None when unset."""
    doc = registry.alias_record(alias)
    return (doc["version"], datetime.fromisoformat(doc["updated_at"])) if doc else None


def shadow_requests(
    log: PredictionLog, version: str, since: datetime, until: datetime, enough: int | None = None
) -> int:
    """Distinct requests the challenger ``version`` scored in shadow in [since, until); stops counting at
    ``enough`` (the promote step needs only to know the minimum is reached, not read the whole log)."""
    seen: set[str] = set()
    for record in log.read(since, until):
        if record.source == SOURCE and record.model_version == version:
            seen.add(record.request_id)
            if enough is not None and len(seen) >= enough:
                break
    return len(seen)


def shadow_ready(
    registry: Registry,
    log: PredictionLog | None,
    version: str,
    now: datetime | None = None,
    *,
    min_requests: int | None = None,
    min_hours: float | None = None,
) -> tuple[bool, str]:
    """Whether ``version`` has been in shadow long enough to be promoted: at least READMIT_MIN_SHADOW_HOURS since
    the shadow alias named it, and READMIT_MIN_SHADOW_REQUESTS requests it scored in shadow since then (both 0 by
    default: no shadow needed). Returns (ready, why) for the promote step to record or refuse with."""
    min_requests = min_shadow_requests() if min_requests is None else min_requests
    min_hours = min_shadow_hours() if min_hours is None else min_hours
    if min_requests <= 0 and min_hours <= 0:
        return True, "no minimum shadow period is required"
    now = now or datetime.now(UTC)
    current = alias_set_at(registry)
    if current is None or current[0] != version:
        named = f"the shadow model is {current[0]}" if current else "there is no shadow model"
        return False, f"{version} has not run in shadow ({named}); set it as the shadow first"
    hours = (now - current[1]).total_seconds() / 3600
    if hours < min_hours:
        return False, f"{version} has been in shadow {hours:.1f} h of the {min_hours:g} h required"
    if min_requests > 0:
        if log is None:
            return False, "no prediction log to count shadow requests in"
        n = shadow_requests(log, version, current[1], now, enough=min_requests)
        if n < min_requests:
            return False, f"{version} has scored {n} requests in shadow of the {min_requests} required"
    return True, f"{version} has been in shadow {hours:.1f} h (≥ {min_hours:g} h) and met {min_requests} requests"


def report_window(registry: Registry | None, now: datetime) -> tuple[datetime, str | None]:
    """Where a report starts by default: when the current shadow alias was set, else DEFAULT_REPORT_WINDOW ago;
    and the current shadow version (None without a registry or a shadow alias)."""
    current = alias_set_at(registry) if registry is not None else None
    if current is None:
        return now - DEFAULT_REPORT_WINDOW, None
    return current[1], current[0]


def current_report(
    registry: Registry | None,
    log: PredictionLog,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    outcomes: Mapping[str, bool] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`readmit shadow-report` and GET /model/shadow: the current shadow model (None: "no shadow model") against
    the champion, from when the shadow alias was set (or ``since``). Without a shadow alias, every shadow record of
    the window is reported (a past shadow's)."""
    now = now or datetime.now(UTC)
    start, version = report_window(registry, now)
    champion = registry.champion() if registry is not None else None
    report = shadow_report(log, since or start, until, outcomes, version=version, now=now)
    return {"shadow_version": version, "champion_version": champion, **report}


def outcome_labels(uri: str | None = None) -> dict[str, bool] | None:
    """Labels for the realized metrics: the outcome uploads under ``uri`` or $READMIT_OUTCOMES_URI (as the drift
    monitor reads them), else the local store `readmit outcomes` writes; None when there are none."""
    from chalicelib.core import settings
    from chalicelib.monitoring.outcomes import OutcomeStore, load_outcome_uploads

    where = uri or settings.raw(settings.ENV_OUTCOMES_URI)  # per GET /model/shadow: no Settings built
    if where:
        labels, _problems = load_outcome_uploads(where)
        return labels
    store = OutcomeStore(settings.home() / "outcomes.jsonl")
    return store.labels() if store.path.exists() else None
