"""Metrics for the model card, `readmit evaluate` and the retraining gate (training side: scikit-learn).

Point estimates come from scikit-learn; their 95% intervals from a patient-clustered bootstrap
(``bootstrap.replicates``). A subgroup below ``bootstrap.JUDGEABLE`` is reported by size only ("too few to judge").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from chalicelib.model import bootstrap
from chalicelib.model.bootstrap import GROUP_MEASURES, JUDGEABLE, LEVEL, RESAMPLES, SEED, MinSize
from chalicelib.model.calibration import ece

MIN_SUBGROUP = JUDGEABLE.encounters  # kept for callers of the old name
TOO_FEW = "too few to judge"
# A group too small to judge keeps only its size and prevalence: every measure below is withheld.
JUDGED_FIELDS = (
    "roc_auc", "pr_auc", "brier", "ece", "calibration_in_the_large", "flagged_share", "precision", "recall", "fpr",
    "f1",
)  # fmt: skip
OVERALL_INTERVALS = ("roc_auc", "brier", "ece", "calibration_in_the_large", "recall", "fpr")
DCA_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 11))  # 0.05 … 0.50, the card's table
DCA_GRID = tuple(round(0.01 * k, 2) for k in range(5, 51))  # 0.05 … 0.50 by 0.01, stored and plotted


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per equal-frequency bin: mean predicted risk vs. observed rate (for the calibration plot)."""
    order = np.argsort(p)
    rows = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            rows.append({"predicted": float(p[chunk].mean()), "observed": float(y[chunk].mean()), "n": len(chunk)})
    return rows


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """Point estimates at the operating ``threshold`` (flagged = risk >= threshold)."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    flagged = p >= threshold
    tp = int((flagged & (y == 1)).sum())
    fp = int((flagged & (y == 0)).sum())
    precision = tp / flagged.sum() if flagged.any() else 0.0
    recall = tp / y.sum() if y.any() else 0.0
    negatives = len(y) - int(y.sum())
    both_classes = 0 < y.sum() < len(y)
    return {
        "n": len(y),
        "positives": int(y.sum()),
        "prevalence": float(y.mean()) if len(y) else 0.0,
        "roc_auc": float(roc_auc_score(y, p)) if both_classes else None,
        "pr_auc": float(average_precision_score(y, p)) if both_classes else None,
        "brier": float(brier_score_loss(y, p)) if len(y) else None,
        "ece": ece(y, p) if len(y) else None,
        # mean predicted risk minus observed rate: > 0 over-predicts, < 0 under-predicts
        "calibration_in_the_large": float(p.mean() - y.mean()) if len(y) else None,
        "threshold": float(threshold),
        "flagged_share": float(flagged.mean()) if len(y) else 0.0,
        "precision": float(precision),
        "recall": float(recall),
        "fpr": float(fp / negatives) if negatives else None,
        "f1": float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0,
    }


def _finite(v: float | None) -> float | None:
    """None for NaN or infinity: metrics travel as JSON (Step Functions and json.loads refuse NaN)."""
    return None if v is None or not math.isfinite(v) else float(v)


def evaluate(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    groups: Mapping[str, np.ndarray] | None = None,
    patients: np.ndarray | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    min_size: MinSize = JUDGEABLE,
) -> dict[str, Any]:
    """Overall metrics plus the same per subgroup (race, gender, age band).

    With ``patients`` (one id per row) every metric also gets a 95% patient-clustered bootstrap interval and each
    grouping its fairness gaps (``fairness``); without, point estimates only (the shape older bundles stored)."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    out = binary_metrics(y, p, threshold)
    out["subgroups"] = {}
    for name, values in (groups or {}).items():
        table = {}
        for value in sorted(set(values.tolist())):
            m = values == value
            row = binary_metrics(y[m], p[m], threshold)
            row["judgeable"] = min_size.judgeable(row["n"], row["positives"])
            if not row["judgeable"]:
                row.update(dict.fromkeys(JUDGED_FIELDS), note=TOO_FEW)
            table[str(value)] = row
        out["subgroups"][name] = table
    if patients is None or resamples <= 0 or len(y) == 0:
        return out

    reps = bootstrap.replicates(y, p, threshold, patients, groups, resamples, seed)
    out["intervals"] = {k: bootstrap.interval(reps.overall[k]) for k in OVERALL_INTERVALS}
    out["bootstrap"] = {
        "resamples": resamples,
        "seed": seed,
        "level": LEVEL,
        "unit": "patient",
        "patients": len(np.unique(patients)),
        "min_size": {"encounters": min_size.encounters, "readmissions": min_size.readmissions},
    }
    out["fairness"] = {}
    for name, table in out["subgroups"].items():
        labels = reps.group_values[name]
        judged = np.array([table[v]["judgeable"] for v in labels], dtype=bool)
        for i, v in enumerate(labels):
            row = table[v]
            row["intervals"] = (
                {k: bootstrap.interval(reps.groups[name][k][:, i]) for k in GROUP_MEASURES} if judged[i] else None
            )
        out["fairness"][name] = {k: _gap(table, labels, judged, reps.groups[name][k], k) for k in GROUP_MEASURES}
    return out


def _gap(
    table: dict[str, dict[str, Any]], labels: Sequence[str], judged: np.ndarray, samples: np.ndarray, measure: str
) -> dict[str, Any] | None:
    """Largest minus smallest value of ``measure`` over the judgeable groups, with the interval of that same
    difference taken within each resample (so it carries the groups' joint uncertainty)."""
    points = {
        v: table[v][measure] for v, ok in zip(labels, judged, strict=True) if ok and table[v][measure] is not None
    }
    if len(points) < 2:
        return None
    hi, lo = max(points, key=points.__getitem__), min(points, key=points.__getitem__)
    return {
        "gap": _finite(points[hi] - points[lo]),
        "interval": bootstrap.interval(bootstrap.gap_samples(samples, judged)),
        "highest": hi,
        "lowest": lo,
        "groups": len(points),
    }


def decision_curve(
    y: np.ndarray, p: np.ndarray, thresholds: Sequence[float] = DCA_THRESHOLDS
) -> list[dict[str, float]]:
    """Net benefit at each threshold probability pt (Vickers & Elkin, Med Decis Making 2006;26:565-74):
    NB = TP/n - FP/n x pt/(1 - pt), treating everyone with risk >= pt. Treat-all flags everyone; treat-none
    is 0 by definition. A model is useful at pt only where it beats both."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    n = len(y)
    prevalence = float(y.mean()) if n else 0.0
    rows = []
    for pt in thresholds:
        odds = pt / (1 - pt)
        flagged = p >= pt
        tp = int((flagged & (y == 1)).sum())
        fp = int((flagged & (y == 0)).sum())
        rows.append(
            {
                "threshold": float(pt),
                "model": tp / n - fp / n * odds if n else 0.0,
                "treat_all": prevalence - (1 - prevalence) * odds,
                "treat_none": 0.0,
            }
        )
    return rows


def missing_counts(cols: Mapping[str, np.ndarray], mask: np.ndarray) -> dict[str, int]:
    """Per input column, how many of the ``mask`` rows have it missing ('?' in the file; -1 / '' once parsed) or
    coded as unknown (an id whose IDs_mapping description is NULL, Not Available, Not Mapped or Unknown/Invalid,
    gender Unknown/Invalid). Lab results of "None" mean "not measured" and are counted separately by the card."""
    from chalicelib.data.schema import COLUMN_BY_NAME, FEATURE_INPUTS

    unknown_words = ("NULL", "Not Available", "Not Mapped", "Unknown/Invalid")
    out: dict[str, int] = {}
    for col in FEATURE_INPUTS:
        values = np.asarray(cols[col.name])[mask]
        if col.kind == "category":
            missing = values == -1
            if "Unknown/Invalid" in col.allowed:
                missing |= values == COLUMN_BY_NAME[col.name].allowed.index("Unknown/Invalid")
        elif col.kind == "icd9":
            missing = values == ""
        elif col.kind == "code":
            unknown = [code for code, text in (col.codes or {}).items() if text in unknown_words]
            missing = np.isnan(values) | np.isin(values, unknown)
        else:
            missing = np.isnan(values)
        out[col.name] = int(missing.sum())
    return out


def not_measured(cols: Mapping[str, np.ndarray], mask: np.ndarray) -> dict[str, int]:
    """Lab tests recorded as "None" (not performed): structural absence, not missing data."""
    from chalicelib.data.schema import COLUMN_BY_NAME

    out = {}
    for name in ("max_glu_serum", "A1Cresult"):
        code = COLUMN_BY_NAME[name].allowed.index("None")
        out[name] = int((np.asarray(cols[name])[mask] == code).sum())
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
    from chalicelib.model.train import holdout_split

    if data_sha256 != (meta.get("data") or {}).get("sha256"):
        return None
    frac = float(meta.get("holdout_frac") or 0.0)
    if frac <= 0:
        return np.zeros(len(patients), dtype=bool)
    return holdout_split(patients, frac, int(meta["cv"]["seed"]))


def overlap_share(patients: np.ndarray, training_patients: np.ndarray) -> float:
    """Share of rows whose patient trained the model: those rows' metrics are in-sample, hence optimistic."""
    return float(np.isin(patients, training_patients).mean()) if len(patients) else 0.0


def out_of_fold(meta: Mapping[str, Any], data_path: Any, progress: Any = None) -> dict[str, Any]:
    """Out-of-fold risk of a bundle's configuration on its training patients, re-created by the same grouped CV
    and cross-fitted calibration training used (its params, trees, folds, seed and calibration method): the
    predictions for error analysis by subgroup, each row scored by a model that never saw its patient.

    When ``data_path`` is the bundle's training file its holdout patients are left out, as in training; any other
    labelled file is cross-validated whole. Returns y, risk, patients, groups and the operating threshold."""
    from chalicelib.data.dataset import content_sha256
    from chalicelib.data.tabular import read_table
    from chalicelib.model import calibration
    from chalicelib.model.train import TrainConfig, grouped_folds, prepare
    from chalicelib.model.train import out_of_fold as oof_raw

    prep = prepare(read_table(data_path, require_target=True))
    held = holdout_mask(meta, content_sha256(data_path), prep.patients)
    keep = ~held if held is not None else np.ones(len(prep.y), dtype=bool)
    _, y, patients, groups = prep.subset(keep)
    X = prep.X[keep]
    cv = meta["cv"]
    cfg = TrainConfig(params=dict(meta["params"]), n_estimators=int(meta["n_estimators"]), folds=int(cv["folds"]))
    cfg.seed = int(cv["seed"])
    folds = grouped_folds(y, patients, cfg.folds, cfg.seed)
    raw = oof_raw(X, y, folds, cfg.params, cfg.n_estimators, cfg, progress or (lambda _s: None))
    risk = calibration.cross_fit(meta["calibration"]["method"], raw, y, folds)
    return {
        "y": y,
        "risk": risk,
        "patients": patients,
        "groups": groups,
        "threshold": float(meta["thresholds"]["high"]),
    }


def group_report(metrics: Mapping[str, Any], group: str) -> dict[str, Any]:
    """One grouping of ``evaluate``'s output, compact: per value its size and each measure as
    ``[point, low, high]`` (or "too few to judge"), plus that grouping's fairness gaps."""
    if group not in metrics["subgroups"]:
        raise KeyError(f"unknown group {group!r}; known: {', '.join(metrics['subgroups'])}")
    rows: dict[str, Any] = {}
    for value, row in metrics["subgroups"][group].items():
        entry: dict[str, Any] = {"n": row["n"], "positives": row["positives"]}
        if not row.get("judgeable", True):
            entry["note"] = TOO_FEW
        else:
            ci = row.get("intervals") or {}
            for k in GROUP_MEASURES:
                entry[k] = [row.get(k), *(ci.get(k) or [None, None])]
        rows[value] = entry
    overall = {k: [metrics.get(k), *((metrics.get("intervals") or {}).get(k) or [None, None])] for k in GROUP_MEASURES}
    return {"overall": overall, "groups": rows, "fairness": (metrics.get("fairness") or {}).get(group)}
