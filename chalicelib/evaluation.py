"""Metrics for the model card, `readmit evaluate` and the retraining gate (training side: scikit-learn)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

MIN_SUBGROUP = 100  # below this many encounters (or 10 positives) a subgroup's AUC is not reported


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins, weighted by bin size."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(total / len(y))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per equal-frequency bin: mean predicted risk vs. observed rate (for the calibration plot)."""
    order = np.argsort(p)
    rows = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            rows.append({"predicted": float(p[chunk].mean()), "observed": float(y[chunk].mean()), "n": len(chunk)})
    return rows


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    flagged = p >= threshold
    tp = int((flagged & (y == 1)).sum())
    precision = tp / flagged.sum() if flagged.any() else 0.0
    recall = tp / y.sum() if y.any() else 0.0
    both_classes = 0 < y.sum() < len(y)
    return {
        "n": len(y),
        "positives": int(y.sum()),
        "prevalence": float(y.mean()) if len(y) else 0.0,
        "roc_auc": float(roc_auc_score(y, p)) if both_classes else None,
        "pr_auc": float(average_precision_score(y, p)) if both_classes else None,
        "brier": float(brier_score_loss(y, p)) if len(y) else None,
        "ece": ece(y, p) if len(y) else None,
        "threshold": float(threshold),
        "flagged_share": float(flagged.mean()) if len(y) else 0.0,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0,
    }


def evaluate(
    y: np.ndarray, p: np.ndarray, threshold: float, groups: Mapping[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Overall metrics plus the same per subgroup (race, gender, age band)."""
    out = binary_metrics(y, p, threshold)
    out["subgroups"] = {}
    for name, values in (groups or {}).items():
        table = {}
        for value in sorted(set(values.tolist())):
            m = values == value
            row = binary_metrics(y[m], p[m], threshold)
            if row["n"] < MIN_SUBGROUP or row["positives"] < 10:
                row["roc_auc"] = row["pr_auc"] = None
                row["note"] = "too few encounters for a stable AUC"
            table[str(value)] = row
        out["subgroups"][name] = table
    return out


def curves(y: np.ndarray, p: np.ndarray, points: int = 200) -> dict[str, list[float]]:
    """ROC and PR curves, thinned to at most ``points`` points each (for plots and JSON)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)

    def thin(a: np.ndarray, b: np.ndarray) -> tuple[list[float], list[float]]:
        idx = np.unique(np.linspace(0, len(a) - 1, min(points, len(a))).astype(int))
        return [round(float(v), 5) for v in a[idx]], [round(float(v), 5) for v in b[idx]]

    fpr_, tpr_ = thin(fpr, tpr)
    rec_, prec_ = thin(recall, precision)
    return {"fpr": fpr_, "tpr": tpr_, "recall": rec_, "precision": prec_}


def holdout_mask(meta: Mapping[str, Any], data_sha256: str, patients: np.ndarray) -> np.ndarray | None:
    """Which cohort rows of the training file the bundle held out, recomputed from its recorded fraction and seed
    (``train.holdout_split`` is deterministic). ``patients`` are the file's cohort rows in file order, as training
    saw them. None when this file is not the one the bundle was trained on (so its split is unknown here)."""
    from .train import holdout_split

    if data_sha256 != (meta.get("data") or {}).get("sha256"):
        return None
    frac = float(meta.get("holdout_frac") or 0.0)
    if frac <= 0:
        return np.zeros(len(patients), dtype=bool)
    return holdout_split(patients, frac, int(meta["cv"]["seed"]))


def overlap_share(patients: np.ndarray, training_patients: np.ndarray) -> float:
    """Share of rows whose patient trained the model: those rows' metrics are in-sample, hence optimistic."""
    return float(np.isin(patients, training_patients).mean()) if len(patients) else 0.0
