"""Capacity planning: if a team can follow up only the top q% riskiest patients, what share of the
30-day readmissions does that catch? Computed once at training time on the evaluation set (the holdout when
there is one) and stored in the bundle metadata, so serving answers it without the data (numpy only)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PERCENTS = tuple(range(1, 101))  # every whole percent: the page's input needs no interpolation
CARD_PERCENTS = (5, 10, 20, 30, 50)  # the rows shown in the model card


def capture_curve(y: np.ndarray, risk: np.ndarray, evaluation: str) -> dict[str, Any]:
    """For each q in 1..100%: flag the ceil(q·n) highest risks; the share of positives caught (capture),
    the share of flagged who are positive (precision), and the lowest flagged risk (the cut-off)."""
    y = np.asarray(y).astype(np.int64)
    order = np.argsort(-np.asarray(risk, dtype=np.float64), kind="stable")
    caught = np.cumsum(y[order])
    ranked = np.asarray(risk, dtype=np.float64)[order]
    positives = int(y.sum())
    points = []
    for q in PERCENTS:
        k = max(1, math.ceil(q / 100 * len(y)))
        points.append(
            {
                "q": q,
                "flagged": k,
                "capture": round(float(caught[k - 1]) / positives, 4) if positives else None,
                "precision": round(float(caught[k - 1]) / k, 4),
                "min_risk": round(float(ranked[k - 1]), 6),
            }
        )
    return {"evaluation": evaluation, "n": len(y), "positives": positives, "points": points}


def card_rows(capacity: dict[str, Any] | None) -> list[str]:
    """A small Markdown table of the curve for the model card (empty when the bundle predates it)."""
    if not capacity:
        return []
    by_q = {p["q"]: p for p in capacity["points"]}
    lines = [
        "## Capacity: flagging the top q% of patients",
        "",
        f"On the {capacity['evaluation']} set ({capacity['n']:,} encounters, {capacity['positives']:,} readmitted "
        "within 30 days): the share of those readmissions among the q% highest risks.",
        "",
        "| top q% | readmissions caught | precision | lowest flagged risk |",
        "|---|---|---|---|",
    ]
    for q in CARD_PERCENTS:
        p = by_q[q]
        capture = "–" if p["capture"] is None else f"{p['capture']:.1%}"
        lines.append(f"| {q}% | {capture} | {p['precision']:.1%} | {p['min_risk']:.3f} |")
    return [*lines, ""]
