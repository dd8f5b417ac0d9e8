"""Promotion and rejection: the only place the champion changes, with the decision's reasons recorded.

Light on purpose (registry only, no numpy, pandas or scikit-learn): the promote and reject Lambdas import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .model_check import InvalidModel
from .registry import Registry

TRIGGERS = ("schedule", "drift", "manual")


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    challenger: dict[str, Any]
    champion: dict[str, Any] | None
    churn: float | None  # share of patients whose risk tier would change (reported, not gating)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_decision(registry: Registry, version: str, decision: Decision, *, trigger: str, champion: str | None) -> str:
    """Promote or reject; the champion changes only on a promotion. Returns the champion afterwards."""
    extra = {"trigger": trigger, "gate_reasons": decision.reasons, "challenger_metrics": _headline(decision.challenger)}
    if decision.champion is not None:
        extra["champion_metrics"] = _headline(decision.champion)
        extra["churn"] = decision.churn
    summary = "; ".join(r for r in decision.reasons if "not gating" not in r)
    if decision.promote:
        try:  # Registry.open's registry validates the stored model in a separate process first
            registry.promote(version, f"passed the gate ({trigger}): {summary}", extra)
        except InvalidModel as exc:  # the champion is unchanged; the history says why the winner was not promoted
            registry.reject(version, f"passed the gate ({trigger}) but {exc}", extra)
            raise
        return version
    registry.reject(version, f"failed the gate ({trigger}): {summary}", extra)
    return champion or ""


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("n", "roc_auc", "brier", "ece")}
