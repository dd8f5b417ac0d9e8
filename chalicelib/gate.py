"""The champion/challenger gate: only a better, well-calibrated, fair model reaches production.

Both models are scored on the same patient-grouped evaluation set. Every threshold is a setting; the
decision and every reason are stored in the registry history.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .evaluation import evaluate
from .promotion import Decision

SUBGROUPS = ("race", "gender", "age_band")


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate. The original system demanded AUC > 0.75 of a model that scored 0.64, so
    nothing could pass; these defaults pass a good model and stop a broken one."""

    min_auc: float = 0.65  # absolute floor
    max_auc_drop: float = 0.005  # challenger may trail the champion by at most this much
    max_ece: float = 0.02
    min_subgroup_auc: float = 0.60  # for subgroups with enough encounters and readmissions
    max_subgroup_gap: float = 0.08  # subgroup AUC may sit at most this far under the overall AUC
    min_subgroup_size: int = 300
    min_subgroup_positives: int = 30

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GateConfig:
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**{k: type(getattr(cls, k))(v) for k, v in known.items()})


def _summary(y: np.ndarray, p: np.ndarray, threshold: float, groups: dict[str, np.ndarray]) -> dict[str, Any]:
    m = evaluate(y, p, threshold, groups)
    return {k: m[k] for k in ("n", "roc_auc", "pr_auc", "brier", "ece", "precision", "recall")} | {
        "subgroups": {
            g: {v: {"n": r["n"], "positives": r["positives"], "roc_auc": r["roc_auc"]} for v, r in t.items()}
            for g, t in m["subgroups"].items()
        }
    }


def fairness_problems(summary: dict[str, Any], cfg: GateConfig) -> list[str]:
    problems = []
    overall = summary["roc_auc"]
    for group, table in summary["subgroups"].items():
        for value, row in table.items():
            if row["n"] < cfg.min_subgroup_size or row["positives"] < cfg.min_subgroup_positives:
                continue
            auc = row["roc_auc"]
            if auc is None:
                continue
            if auc < cfg.min_subgroup_auc:
                problems.append(f"{group}={value}: AUC {auc:.3f} is below the floor {cfg.min_subgroup_auc:.3f}")
            elif overall - auc > cfg.max_subgroup_gap:
                problems.append(
                    f"{group}={value}: AUC {auc:.3f} is {overall - auc:.3f} under the overall {overall:.3f} "
                    f"(max gap {cfg.max_subgroup_gap:.3f})"
                )
    return problems


def decide(
    y: np.ndarray,
    challenger_risk: np.ndarray,
    challenger_threshold: float,
    groups: dict[str, np.ndarray],
    champion_risk: np.ndarray | None = None,
    champion_threshold: float | None = None,
    cfg: GateConfig | None = None,
) -> Decision:
    """Apply the gate. Without a champion only the floors apply (AUC, calibration, fairness)."""
    cfg = cfg or GateConfig()
    challenger = _summary(y, challenger_risk, challenger_threshold, groups)
    reasons: list[str] = []
    ok = True
    if challenger["roc_auc"] is None or challenger["roc_auc"] < cfg.min_auc:
        ok = False
        reasons.append(f"ROC-AUC {challenger['roc_auc']} is below the floor {cfg.min_auc:.3f}")
    else:
        reasons.append(f"ROC-AUC {challenger['roc_auc']:.4f} clears the floor {cfg.min_auc:.3f}")
    if challenger["ece"] > cfg.max_ece:
        ok = False
        reasons.append(f"ECE {challenger['ece']:.4f} exceeds {cfg.max_ece:.4f}: probabilities are miscalibrated")
    else:
        reasons.append(f"ECE {challenger['ece']:.4f} is within {cfg.max_ece:.4f}")
    unfair = fairness_problems(challenger, cfg)
    if unfair:
        ok = False
        reasons.extend(f"fairness: {p}" for p in unfair)
    else:
        reasons.append("no subgroup (race, gender, age band) below the floor or too far under the overall AUC")

    champion = None
    churn = None
    if champion_risk is not None and champion_threshold is not None:
        champion = _summary(y, champion_risk, champion_threshold, groups)
        drop = (champion["roc_auc"] or 0.0) - (challenger["roc_auc"] or 0.0)
        if drop > cfg.max_auc_drop:
            ok = False
            reasons.append(
                f"ROC-AUC {challenger['roc_auc']:.4f} trails the champion's {champion['roc_auc']:.4f} by {drop:.4f} "
                f"(allowed {cfg.max_auc_drop:.4f})"
            )
        else:
            reasons.append(
                f"ROC-AUC {challenger['roc_auc']:.4f} vs champion {champion['roc_auc']:.4f}: "
                f"within {cfg.max_auc_drop:.4f}"
            )
        churn = float(np.mean((challenger_risk >= challenger_threshold) != (champion_risk >= champion_threshold)))
        reasons.append(f"high-tier churn {churn:.1%} (reported, not gating)")
    else:
        reasons.append("no champion yet: only the floors apply")
    return Decision(ok, reasons, challenger, champion, churn, asdict(cfg))
