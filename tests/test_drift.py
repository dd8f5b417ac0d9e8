"""Drift statistics against known distributions, the reference written into every bundle, and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.features import drift
from chalicelib.features.table import FEATURE_NAMES

F = len(FEATURE_NAMES)
AGE = FEATURE_NAMES.index("age_years")
INPATIENT = FEATURE_NAMES.index("number_inpatient")


def synthetic(n: int, seed: int, age_shift: float = 0.0, inpatient_rate: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 2, size=(n, F)).astype(np.float32)  # binary features: categorical
    X[:, AGE] = rng.normal(65 + age_shift, 12, n)  # continuous: numeric
    X[:, INPATIENT] = rng.poisson(inpatient_rate, n)
    risk = np.clip(rng.beta(2, 15, n) + 0.02 * X[:, INPATIENT], 0, 1)
    return X, risk


@pytest.fixture(scope="module")
def reference() -> tuple[dict, np.ndarray]:
    X, risk = synthetic(20_000, seed=1)
    files = drift.build_profile(X, risk, high_threshold=float(np.quantile(risk, 0.8)))
    import io
    import json

    return json.loads(files[drift.PROFILE]), np.load(io.BytesIO(files[drift.SAMPLE]), allow_pickle=False)


@pytest.mark.slow
def test_the_same_distribution_shows_no_drift(reference: tuple[dict, np.ndarray]) -> None:
    X, risk = synthetic(5_000, seed=2)
    report = drift.compare(*reference, X, risk)
    assert not report.drifted, report.alerts
    assert report.max_feature_psi < 0.05 and report.risk_psi < 0.05


def test_an_older_population_is_flagged_on_age_by_psi_and_ks(reference: tuple[dict, np.ndarray]) -> None:
    X, risk = synthetic(5_000, seed=3, age_shift=10)
    report = drift.compare(*reference, X, risk)
    age = next(f for f in report.features if f.feature == "age_years")
    assert age.drifted and age.test == "ks" and age.p_value < 1e-6
    assert report.drifted and "age_years" in report.alerts[0]


def test_more_admissions_move_the_risk_and_the_high_risk_rate(reference: tuple[dict, np.ndarray]) -> None:
    X, risk = synthetic(5_000, seed=4, inpatient_rate=3.0)
    report = drift.compare(*reference, X, risk)
    inpatient = next(f for f in report.features if f.feature == "number_inpatient")
    assert inpatient.drifted
    assert report.high_risk_rate > report.reference_high_risk_rate + 0.1
    assert any("high-risk rate" in a for a in report.alerts)


def test_a_categorical_shift_is_tested_with_chi_square(reference: tuple[dict, np.ndarray]) -> None:
    X, risk = synthetic(5_000, seed=5)
    j = FEATURE_NAMES.index("insulin_on")
    X[:, j] = (np.random.default_rng(6).random(5_000) < 0.95).astype(np.float32)  # from 50% to 95%
    row = next(f for f in drift.compare(*reference, X, risk).features if f.feature == "insulin_on")
    assert row.kind == "categorical" and row.test == "chi2" and row.p_value < 1e-6 and row.drifted


def test_too_few_rows_are_reported_not_judged(reference: tuple[dict, np.ndarray]) -> None:
    X, risk = synthetic(50, seed=7)
    report = drift.compare(*reference, X, risk)
    assert report.alerts == ["only 50 rows: too few to judge drift (min 200)"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=2, max_size=12), st.lists(st.floats(0.01, 1.0), min_size=2, max_size=12))
def test_psi_is_never_negative_and_zero_only_for_equal_distributions(a: list[float], b: list[float]) -> None:
    n = min(len(a), len(b))
    e, x = np.array(a[:n]), np.array(b[:n])
    assert drift._psi(e, x) >= -1e-12
    assert drift._psi(e, e) == pytest.approx(0.0, abs=1e-12)


def test_every_bundle_carries_its_drift_reference(small_bundle: Path) -> None:
    profile, sample = drift.load_reference(small_bundle)
    assert set(profile["features"]) == set(FEATURE_NAMES)
    assert sample.shape[1] == F and 0.15 < profile["high_risk_rate"] < 0.25


@pytest.mark.slow
def test_cli_drift_exits_1_on_a_shifted_file_and_0_on_a_plain_one(
    small_bundle: Path, data_path: Path, tmp_path: Path
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chalicelib.cli.main", *args], capture_output=True, text=True, timeout=300
        )

    for shift in ("none", "utilisation"):
        assert run("simulate-drift", "--data", str(data_path), "--out", str(tmp_path / f"{shift}.csv"),
                   "--shift", shift, "--rows", "3000").returncode == 0  # fmt: skip
    plain = run("drift", "--reference", str(small_bundle), "--current", str(tmp_path / "none.csv"),
                "--out", str(tmp_path / "r0"))  # fmt: skip
    shifted = run("drift", "--reference", str(small_bundle), "--current", str(tmp_path / "utilisation.csv"),
                  "--out", str(tmp_path / "r1"))  # fmt: skip
    assert plain.returncode == 0, plain.stdout
    assert shifted.returncode == 1 and "number_inpatient" in shifted.stdout
    report = (tmp_path / "r1" / "drift_report.md").read_text()
    assert "**DRIFT**" in report and (tmp_path / "r1" / "drift.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "r1" / "drift_report.html").exists()


def test_the_original_rule_fires_when_over_a_fifth_of_risks_exceed_point_six(
    reference: tuple[dict, np.ndarray],
) -> None:
    X, risk = synthetic(5_000, seed=8)
    risk = risk.copy()
    risk[:1500] = 0.7  # 30% of predictions above 0.6
    report = drift.compare(*reference, X, risk)
    assert report.over_original_probability == pytest.approx(0.3)
    assert any("original rule" in a for a in report.alerts)
    assert not any("original rule" in a for a in drift.compare(*reference, *synthetic(5_000, seed=9)).alerts)
