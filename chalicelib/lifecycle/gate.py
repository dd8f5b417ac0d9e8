"""The champion/challenger gate: only a better, well-calibrated, fair model reaches production.

Both models are scored on the same patient-grouped evaluation set. Every threshold is a setting; the
decision and every reason are stored in the registry history.

The subgroup rule judges intervals, not point estimates: a group fails only when its whole 95% bootstrap
interval of AUC lies below the floor or below the overall AUC minus the allowed gap. A small noisy group whose
point estimate dips does not block a good model, and a group too small to judge is named in the reasons
instead of silently passing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from chalicelib.lifecycle.promotion import Decision
from chalicelib.model.bootstrap import JUDGEABLE, RESAMPLES, SEED
from chalicelib.model.evaluation import evaluate

SUBGROUPS = ("race", "gender", "age_band")


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate. The original system demanded AUC > 0.75 of a model that scored 0.64, so
    nothing could pass; these defaults pass a good model and stop a broken one."""

    min_auc: float = 0.65  # absolute floor
    max_auc_drop: float = 0.005  # challenger may trail the champion by at most this much
    max_ece: float = 0.02
    min_subgroup_auc: float = 0.60  # a group fails when its AUC interval's upper bound is below this
    max_subgroup_gap: float = 0.08  # ... or below the overall AUC minus this
    # Smaller groups are "too few to judge": reported, never failing. The interval now carries the noise, so the
    # old 300/30 cut (which let harm in a group of 250 pass unseen) is down to the evaluation's own minimum.
    min_subgroup_size: int = JUDGEABLE.encounters
    min_subgroup_positives: int = JUDGEABLE.readmissions
    bootstrap_resamples: int = RESAMPLES  # patient-clustered resamples behind each interval
    bootstrap_seed: int = SEED

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GateConfig:
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**{k: type(getattr(cls, k))(v) for k, v in known.items()})


def _summary(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    groups: dict[str, np.ndarray],
    patients: np.ndarray | None = None,
    cfg: GateConfig | None = None,
) -> dict[str, Any]:
    """Headline metrics and per-subgroup AUC; with ``cfg``, also the subgroups' bootstrap intervals (resampling
    ``patients``, or encounters when the caller has no patient ids)."""
    resamples = cfg.bootstrap_resamples if cfg else 0
    intervals = resamples > 0
    clusters = (patients if patients is not None else np.arange(len(y))) if intervals else None
    m = evaluate(
        y, p, threshold, groups, clusters,
        resamples=resamples, seed=cfg.bootstrap_seed if cfg else SEED,
    )  # fmt: skip
    out = {k: m[k] for k in ("n", "roc_auc", "pr_auc", "brier", "ece", "precision", "recall")} | {
        "subgroups": {
            g: {
                v: {
                    "n": r["n"],
                    "positives": r["positives"],
                    "roc_auc": r["roc_auc"],
                    "roc_auc_interval": (r.get("intervals") or {}).get("roc_auc"),
                }
                for v, r in t.items()
            }
            for g, t in m["subgroups"].items()
        }
    }
    if intervals:
        out["roc_auc_interval"] = m["intervals"]["roc_auc"]
        out["bootstrap"] = {
            "resamples": resamples,
            "unit": "patient" if patients is not None else "encounter",
        }
    return out


def _ci(interval: list[float] | None) -> str:
    return f" (95% CI {interval[0]:.3f}–{interval[1]:.3f})" if interval else ""


def fairness_problems(summary: dict[str, Any], cfg: GateConfig) -> list[str]:
    """Groups whose AUC interval lies wholly below the floor or wholly below overall AUC minus the allowed gap.
    A row without an interval (a summary from before intervals) is judged by its point estimate."""
    problems = []
    overall = summary["roc_auc"]
    for group, table in summary["subgroups"].items():
        for value, row in table.items():
            if row["n"] < cfg.min_subgroup_size or row["positives"] < cfg.min_subgroup_positives:
                continue
            auc, interval = row["roc_auc"], row.get("roc_auc_interval")
            if auc is None:
                continue
            upper = interval[1] if interval else auc
            ci = _ci(interval)
            if upper < cfg.min_subgroup_auc:
                problems.append(
                    f"{group}={value}: AUC {auc:.3f}{ci} lies wholly below the floor {cfg.min_subgroup_auc:.3f}"
                )
            elif overall is not None and upper < overall - cfg.max_subgroup_gap:
                problems.append(
                    f"{group}={value}: AUC {auc:.3f}{ci} lies wholly more than {cfg.max_subgroup_gap:.3f} under "
                    f"the overall {overall:.3f}"
                )
    return problems


def unjudged(summary: dict[str, Any], cfg: GateConfig) -> list[str]:
    """Groups too small to judge, by name and size: neither passing nor failing, but never silent."""
    return [
        f"{group}={value} (n {row['n']}, {row['positives']} readmitted)"
        for group, table in summary["subgroups"].items()
        for value, row in table.items()
        if row["n"] < cfg.min_subgroup_size or row["positives"] < cfg.min_subgroup_positives
    ]


def decide(
    y: np.ndarray,
    challenger_risk: np.ndarray,
    challenger_threshold: float,
    groups: dict[str, np.ndarray],
    champion_risk: np.ndarray | None = None,
    champion_threshold: float | None = None,
    cfg: GateConfig | None = None,
    patients: np.ndarray | None = None,
) -> Decision:
    """Apply the gate. Without a champion only the floors apply (AUC, calibration, fairness).

    ``patients`` (one id per row) makes the subgroup intervals resample patients; without them encounters are
    resampled, which understates the uncertainty when patients have several encounters."""
    cfg = cfg or GateConfig()
    challenger = _summary(y, challenger_risk, challenger_threshold, groups, patients, cfg)
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
        reasons.append(
            "no subgroup (race, gender, age band) whose AUC interval lies wholly below the floor or too far under "
            "the overall AUC"
        )
    small = unjudged(challenger, cfg)
    if small:
        reasons.append(
            f"too few to judge (under {cfg.min_subgroup_size} encounters or {cfg.min_subgroup_positives} "
            f"readmissions; reported, not gating): {', '.join(small)}"
        )

    champion = None
    churn = None
    if champion_risk is not None and champion_threshold is not None:
        champion = _summary(y, champion_risk, champion_threshold, groups)  # its point AUC is all the gate compares
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
