"""Drift between the training reference and what the model now sees: per-feature PSI (numeric and
categorical), KS for numeric features, chi-square for categorical ones, PSI of the risk score and the
high-risk rate. The reference profile is written into every bundle at training time.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from chalicelib.features.table import FEATURE_NAMES

PROFILE = "reference.json"
SAMPLE = "reference_sample.npy"  # a few thousand feature rows (no identifiers) for KS tests
MAX_CATEGORIES = 12  # features with at most this many distinct values are treated as categorical
EPS = 1e-4


@dataclass(frozen=True)
class DriftThresholds:
    """When drift alarms. The original system's signal (more than 20% of predictions 'high risk') is kept as
    one input, computed on calibrated risk against the training baseline."""

    max_feature_psi: float = 0.25
    max_risk_psi: float = 0.20
    max_high_risk_rate_change: float = 0.10  # absolute change of the high-tier share vs. training
    original_probability: float = 0.6  # the original system's rule: alarm when more than 20% of predictions
    original_share: float = 0.20  # have probability > 0.6 (kept as one input, on calibrated risk)
    p_value: float = 0.001  # KS / chi-square significance (reported; PSI decides)
    min_rows: int = 200


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.clip(expected, EPS, None)
    a = np.clip(actual, EPS, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def _numeric_edges(values: np.ndarray, bins: int = 10) -> list[float]:
    finite = values[np.isfinite(values)]
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])) if len(finite) else np.array([])
    return [float(e) for e in edges]


def bin_fractions(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Fractions per bin; the last slot holds missing values."""
    finite = np.isfinite(values)
    counts = np.bincount(np.searchsorted(edges, values[finite], side="right"), minlength=len(edges) + 1)
    out = np.append(counts, (~finite).sum()).astype(float)
    return out / max(len(values), 1)


def category_fractions(values: np.ndarray, categories: list[float]) -> np.ndarray:
    """Fractions per known category; the last slot holds unseen values and missing."""
    index = {c: i for i, c in enumerate(categories)}
    counts = np.zeros(len(categories) + 1)
    for v, n in zip(*np.unique(np.where(np.isfinite(values), values, np.inf), return_counts=True), strict=True):
        counts[index.get(float(v), len(categories))] += n
    return counts / max(len(values), 1)


def build_profile(X: np.ndarray, risk: np.ndarray, high_threshold: float, rng_seed: int = 0) -> dict[str, bytes]:
    """The reference files for a bundle: profile JSON and a row sample (numpy .npy, no pickle)."""
    features: dict[str, Any] = {}
    for j, name in enumerate(FEATURE_NAMES):
        col = X[:, j].astype(np.float64)
        distinct = np.unique(col[np.isfinite(col)])
        if len(distinct) <= MAX_CATEGORIES:
            cats = [float(v) for v in distinct]
            features[name] = {"kind": "categorical", "categories": cats,
                              "fractions": category_fractions(col, cats).tolist()}  # fmt: skip
        else:
            edges = _numeric_edges(col)
            features[name] = {"kind": "numeric", "edges": edges, "fractions": bin_fractions(col, edges).tolist()}
    risk_edges = _numeric_edges(risk)
    profile = {
        "n": len(X),
        "features": features,
        "risk": {"edges": risk_edges, "fractions": bin_fractions(risk, risk_edges).tolist()},
        "high_threshold": float(high_threshold),
        "high_risk_rate": float(np.mean(risk >= high_threshold)),
        "mean_risk": float(np.mean(risk)),
    }
    rng = np.random.default_rng(rng_seed)
    sample = X[rng.choice(len(X), size=min(3000, len(X)), replace=False)].astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, sample, allow_pickle=False)
    return {PROFILE: json.dumps(profile).encode(), SAMPLE: buf.getvalue()}


@dataclass
class FeatureDrift:
    feature: str
    kind: str
    psi: float
    test: str  # "ks" or "chi2"
    statistic: float
    p_value: float
    drifted: bool


@dataclass
class DriftReport:
    n: int
    features: list[FeatureDrift]
    risk_psi: float
    high_risk_rate: float
    reference_high_risk_rate: float
    mean_risk: float
    reference_mean_risk: float
    over_original_probability: float = 0.0  # share of predictions with calibrated risk > 0.6
    alerts: list[str] = field(default_factory=list)
    thresholds: dict[str, Any] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return bool(self.alerts)

    @property
    def max_feature_psi(self) -> float:
        return max((f.psi for f in self.features), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted, "max_feature_psi": self.max_feature_psi}


def compare(
    profile: dict[str, Any], sample: np.ndarray, X: np.ndarray, risk: np.ndarray, cfg: DriftThresholds | None = None
) -> DriftReport:
    """Drift of ``X`` (features) and ``risk`` (calibrated) against a bundle's reference."""
    from scipy import stats

    cfg = cfg or DriftThresholds()
    rows = []
    for j, name in enumerate(FEATURE_NAMES):
        ref = profile["features"][name]
        col = X[:, j].astype(np.float64)
        if ref["kind"] == "numeric":
            actual = bin_fractions(col, ref["edges"])
            current, reference = col[np.isfinite(col)], sample[:, j][np.isfinite(sample[:, j])]
            if len(current) and len(reference):
                result = stats.ks_2samp(current, reference)
                statistic, p = float(result.statistic), float(result.pvalue)
            else:
                statistic, p = 0.0, 1.0
            test = "ks"
        else:
            actual = category_fractions(col, ref["categories"])
            expected = np.array(ref["fractions"])
            observed = actual * len(col)
            keep = (expected > 0) | (observed > 0)
            exp_counts = np.clip(expected[keep], EPS, None)
            exp_counts = exp_counts / exp_counts.sum() * observed[keep].sum()
            if keep.sum() > 1 and observed.sum() > 0:
                statistic, p = (float(v) for v in stats.chisquare(observed[keep], exp_counts))
            else:
                statistic, p = 0.0, 1.0
            test = "chi2"
        psi = _psi(np.array(ref["fractions"]), actual)
        rows.append(FeatureDrift(name, ref["kind"], psi, test, statistic, p, psi > cfg.max_feature_psi))
    risk_psi = _psi(np.array(profile["risk"]["fractions"]), bin_fractions(risk, profile["risk"]["edges"]))
    high = float(np.mean(risk >= profile["high_threshold"])) if len(risk) else 0.0
    report = DriftReport(
        len(X), rows, risk_psi, high, profile["high_risk_rate"], float(np.mean(risk)) if len(risk) else 0.0,
        profile["mean_risk"], float(np.mean(risk > cfg.original_probability)) if len(risk) else 0.0,
        thresholds=asdict(cfg),
    )  # fmt: skip
    if len(X) < cfg.min_rows:
        report.alerts.append(f"only {len(X)} rows: too few to judge drift (min {cfg.min_rows})")
        return report
    worst = sorted((f for f in rows if f.drifted), key=lambda f: -f.psi)
    if worst:
        names = ", ".join(f"{f.feature} ({f.psi:.2f})" for f in worst[:5])
        report.alerts.append(f"feature PSI over {cfg.max_feature_psi}: {names}")
    if risk_psi > cfg.max_risk_psi:
        report.alerts.append(f"risk score PSI {risk_psi:.2f} over {cfg.max_risk_psi}")
    if abs(high - profile["high_risk_rate"]) > cfg.max_high_risk_rate_change:
        report.alerts.append(
            f"high-risk rate {high:.1%} vs {profile['high_risk_rate']:.1%} at training "
            f"(allowed change {cfg.max_high_risk_rate_change:.0%})"
        )
    if report.over_original_probability > cfg.original_share:
        report.alerts.append(
            f"{report.over_original_probability:.1%} of predictions have risk > {cfg.original_probability} "
            f"(original rule: more than {cfg.original_share:.0%})"
        )
    return report


def load_reference(bundle_dir: Any) -> tuple[dict[str, Any], np.ndarray]:
    from pathlib import Path

    folder = Path(bundle_dir)
    profile = json.loads((folder / PROFILE).read_text())
    sample = np.load(folder / SAMPLE, allow_pickle=False)
    return profile, sample
