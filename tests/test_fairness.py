"""Subgroup metrics with patient-clustered bootstrap intervals, the size below which a group is not judged, and the
fairness gaps: checked against explicit resampling and scikit-learn on small synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from chalicelib.model import bootstrap
from chalicelib.model.evaluation import TOO_FEW, ece, evaluate


def synthetic(n_patients: int = 600, seed: int = 0) -> dict[str, np.ndarray]:
    """Patients with 1-4 encounters each; risk carries signal; scores rounded so ties occur."""
    rng = np.random.default_rng(seed)
    visits = rng.integers(1, 5, size=n_patients)
    patients = np.repeat(np.arange(1000, 1000 + n_patients), visits)
    latent = np.repeat(rng.normal(size=n_patients), visits) + 0.5 * rng.normal(size=len(patients))
    y = (rng.random(len(patients)) < 1 / (1 + np.exp(-(-2.0 + latent)))).astype(int)
    p = np.round(1 / (1 + np.exp(-(-2.0 + 0.8 * latent))), 2)
    groups = {"race": rng.choice(["A", "B", "C"], size=len(patients), p=[0.6, 0.3, 0.1])}
    return {"y": y, "p": p, "patients": patients, "race": groups["race"]}


def test_each_replicate_equals_the_metrics_of_its_explicitly_resampled_patients() -> None:
    d = synthetic()
    y, p, patients, race = d["y"], d["p"], d["patients"], d["race"]
    reps = bootstrap.replicates(y, p, 0.2, patients, {"race": race}, resamples=4, seed=11)
    # the same draws, done by hand: patients with replacement, every encounter of a drawn patient comes along
    _, pidx = np.unique(patients, return_inverse=True)
    counts = bootstrap._counts(np.random.default_rng(11), 4, pidx.max() + 1)
    for b in range(4):
        rows = np.repeat(np.arange(len(y)), counts[b, pidx].astype(int))
        yb, pb, gb = y[rows], p[rows], race[rows]
        assert reps.overall["roc_auc"][b] == pytest.approx(roc_auc_score(yb, pb), abs=1e-12)
        assert reps.overall["brier"][b] == pytest.approx(brier_score_loss(yb, pb), abs=1e-12)
        assert reps.overall["ece"][b] == pytest.approx(ece(yb, pb), abs=1e-12)
        assert reps.overall["calibration_in_the_large"][b] == pytest.approx(pb.mean() - yb.mean(), abs=1e-12)
        for i, value in enumerate(reps.group_values["race"]):
            m = gb == value
            flagged = pb[m] >= 0.2
            assert reps.groups["race"]["roc_auc"][b, i] == pytest.approx(roc_auc_score(yb[m], pb[m]), abs=1e-12)
            assert reps.groups["race"]["recall"][b, i] == pytest.approx(flagged[yb[m] == 1].mean(), abs=1e-12)
            assert reps.groups["race"]["fpr"][b, i] == pytest.approx(flagged[yb[m] == 0].mean(), abs=1e-12)


def test_intervals_resample_patients_not_encounters() -> None:
    """Encounters of a patient share their outcome here, so resampling rows would understate the uncertainty."""
    rng = np.random.default_rng(3)
    n_patients, visits = 400, 5
    patients = np.repeat(np.arange(n_patients), visits)
    y = np.repeat((rng.random(n_patients) < 0.2).astype(int), visits)
    p = np.clip(0.2 + 0.1 * (y - 0.2) + 0.15 * np.repeat(rng.normal(size=n_patients), visits), 0.01, 0.99)
    by_patient = evaluate(y, p, 0.3, None, patients)["intervals"]["roc_auc"]
    by_row = evaluate(y, p, 0.3, None, np.arange(len(y)))["intervals"]["roc_auc"]
    assert by_patient[1] - by_patient[0] > 1.8 * (by_row[1] - by_row[0])  # ~sqrt(5) wider


def test_every_subgroup_metric_has_a_point_an_interval_and_its_size() -> None:
    d = synthetic(1500)
    out = evaluate(d["y"], d["p"], 0.2, {"race": d["race"]}, d["patients"], resamples=300)
    json.dumps(out, allow_nan=False)  # metrics travel as JSON (metrics.json, Step Functions)
    assert out["bootstrap"]["unit"] == "patient" and out["bootstrap"]["resamples"] == 300
    for key in ("roc_auc", "brier", "ece", "calibration_in_the_large"):
        lo, hi = out["intervals"][key]
        assert lo <= out[key] <= hi
    for value, row in out["subgroups"]["race"].items():
        assert row["judgeable"], value
        assert row["n"] == int((d["race"] == value).sum()) and row["positives"] == int(d["y"][d["race"] == value].sum())
        for key in bootstrap.GROUP_MEASURES:
            lo, hi = row["intervals"][key]
            assert lo < hi and lo <= row[key] <= hi, (value, key)
    # smaller groups have wider AUC intervals
    width = {
        v: r["intervals"]["roc_auc"][1] - r["intervals"]["roc_auc"][0] for v, r in out["subgroups"]["race"].items()
    }
    assert width["C"] > width["A"]


def test_a_group_below_the_minimum_is_too_few_to_judge_and_carries_no_interval() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    y = (rng.random(n) < 0.15).astype(int)
    p = np.clip(0.15 + 0.2 * (y - 0.15) + 0.1 * rng.normal(size=n), 0, 1)
    group = np.array(["big"] * n, dtype=object)
    small = np.flatnonzero(y == 0)[: bootstrap.JUDGEABLE.encounters - 1]  # 99 encounters, no readmission
    group[small] = "small"
    few_events = np.concatenate([np.flatnonzero(y == 1)[:9], np.flatnonzero(y == 0)[200:400]])  # 209, 9 events
    group[few_events] = "few"
    edge = np.concatenate([np.flatnonzero(y == 1)[20:30], np.flatnonzero(y == 0)[500:590]])  # exactly 100, 10 events
    group[edge] = "edge"
    out = evaluate(y, p, 0.2, {"g": group}, np.arange(n), resamples=200)
    for name in ("small", "few"):
        row = out["subgroups"]["g"][name]
        assert row["note"] == TOO_FEW and row["judgeable"] is False and row["intervals"] is None
        assert row["roc_auc"] is None and row["recall"] is None and row["fpr"] is None
    edge_row = out["subgroups"]["g"]["edge"]
    assert (edge_row["n"], edge_row["positives"]) == (100, 10) and edge_row["judgeable"]
    assert edge_row["intervals"]["roc_auc"] is not None
    # the gaps compare judgeable groups only
    assert {out["fairness"]["g"]["recall"]["highest"], out["fairness"]["g"]["recall"]["lowest"]} <= {"big", "edge"}


def test_the_fairness_gap_is_max_minus_min_with_an_interval_from_the_same_resamples() -> None:
    rng = np.random.default_rng(8)
    n = 6000
    group = rng.choice(["A", "B"], size=n)
    y = (rng.random(n) < 0.15).astype(int)
    signal = np.where(group == "A", 0.25, 0.08)  # the model separates group B's patients far less
    p = np.clip(0.15 + signal * (y - 0.15) / 0.85 + 0.05 * rng.normal(size=n), 0, 1)
    out = evaluate(y, p, 0.2, {"race": group}, np.arange(n) // 2, resamples=400)
    rows = out["subgroups"]["race"]
    gap = out["fairness"]["race"]["recall"]
    assert gap["gap"] == pytest.approx(rows["A"]["recall"] - rows["B"]["recall"])
    assert (gap["highest"], gap["lowest"]) == ("A", "B")
    lo, hi = gap["interval"]
    assert 0 < lo <= gap["gap"] <= hi  # a real difference: the interval excludes no gap
    for key in bootstrap.GROUP_MEASURES:
        assert out["fairness"]["race"][key]["groups"] == 2


def test_without_patients_there_are_only_point_estimates() -> None:
    d = synthetic(200)
    out = evaluate(d["y"], d["p"], 0.2, {"race": d["race"]})
    assert "intervals" not in out and "fairness" not in out
    assert out["roc_auc"] == pytest.approx(roc_auc_score(d["y"], d["p"]))
