"""Probability calibration that serves without scikit-learn: a piecewise-linear map stored as JSON.

Fitted on out-of-fold predictions at training time (isotonic via scikit-learn, or Platt scaling);
applied with ``numpy.interp`` / a logistic at serving time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Calibrator:
    """Maps the booster's raw probability to a calibrated risk."""

    method: str  # "isotonic" | "platt" | "identity"
    x: tuple[float, ...] = field(default=())
    y: tuple[float, ...] = field(default=())
    a: float = 1.0
    b: float = 0.0
    _xy: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # As arrays once: np.interp would convert the tuples (hundreds of knots) on every call.
        object.__setattr__(self, "_xy", (np.asarray(self.x, dtype=np.float64), np.asarray(self.y, dtype=np.float64)))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(p, *self._xy)
        if self.method == "platt":
            # np.clip's Python wrapper costs more than the arithmetic for one row
            logit = np.log(np.minimum(np.maximum(p, 1e-7), 1 - 1e-7) / np.minimum(np.maximum(1 - p, 1e-7), 1))
            return 1.0 / (1.0 + np.exp(-(self.a * logit + self.b)))
        return p

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "x": list(self.x), "y": list(self.y), "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        method = data["method"]
        if method not in ("isotonic", "platt", "identity"):
            raise ValueError(f"unknown calibration method {method!r}")
        x, y = tuple(float(v) for v in data.get("x", ())), tuple(float(v) for v in data.get("y", ()))
        if method == "isotonic" and (len(x) < 2 or len(x) != len(y) or any(np.diff(x) < 0)):
            raise ValueError("isotonic calibrator needs matching, increasing x and y")
        return cls(method, x, y, float(data.get("a", 1.0)), float(data.get("b", 0.0)))


def fit(method: str, p: np.ndarray, y: np.ndarray) -> Calibrator:
    """Fit on out-of-fold probabilities (training side: imports scikit-learn)."""
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p, y)
        return Calibrator("isotonic", tuple(np.round(iso.X_thresholds_, 7)), tuple(np.round(iso.y_thresholds_, 7)))
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        logit = np.log(np.clip(p, 1e-7, 1 - 1e-7) / np.clip(1 - p, 1e-7, 1)).reshape(-1, 1)
        lr = LogisticRegression(C=1e6).fit(logit, y)
        return Calibrator("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))
    if method == "identity":
        return Calibrator("identity")
    raise ValueError(f"unknown calibration method {method!r}")


def cross_fit(method: str, p: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Calibrated out-of-fold risk where each fold is calibrated by the other folds only, so the
    reported calibration is not measured on the data the calibrator saw."""
    out = np.empty_like(p, dtype=np.float64)
    for k in np.unique(folds):
        test = folds == k
        out[test] = fit(method, p[~test], y[~test])(p[test])
    return out


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins, weighted by bin size (here, not in
    evaluation.py, because the API's shadow report and the drift monitor need it without scikit-learn)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(total / len(y))


def roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic (ties count one half), equal to scikit-learn's roc_auc_score, for
    code that runs without scikit-learn (the API's shadow report, the drift monitor's realized performance).
    None when only one class is present."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(np.asarray(p, dtype=np.float64))
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))
