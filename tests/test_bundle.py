"""A bundle loads only when complete, untampered and built for this code's features."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from chalicelib.features.table import FEATURE_NAMES
from chalicelib.model.bundle import CorruptBundle, IncompatibleBundle, ModelBundle
from chalicelib.model.calibration import Calibrator


@pytest.fixture
def bundle_copy(small_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(small_bundle, tmp_path / small_bundle.name))


def test_a_bundle_round_trips_and_scores_calibrated_probabilities(small_bundle: Path) -> None:
    model = ModelBundle.load(small_bundle)
    X = np.zeros((3, len(FEATURE_NAMES)), dtype=np.float32)
    risk = model.risk(X)
    assert model.version == small_bundle.name
    assert risk.shape == (3,)
    assert np.all((risk >= 0) & (risk <= 1))
    assert set(model.tiers(np.array([0.0, model.thresholds["medium"], model.threshold]))) == {"low", "medium", "high"}


def test_shap_contributions_add_up_to_the_raw_margin(small_bundle: Path) -> None:
    model = ModelBundle.load(small_bundle)
    X = np.random.default_rng(0).integers(0, 3, size=(5, len(FEATURE_NAMES))).astype(np.float32)
    contribs = model.contributions(X)
    margin = np.log(model.raw(X) / (1 - model.raw(X)))
    assert contribs.shape == (5, len(FEATURE_NAMES) + 1)
    np.testing.assert_allclose(contribs.sum(axis=1), margin, atol=1e-4)


def test_a_tampered_booster_is_refused(bundle_copy: Path) -> None:
    data = bytearray((bundle_copy / "model.ubj").read_bytes())
    data[100] ^= 0xFF
    (bundle_copy / "model.ubj").write_bytes(bytes(data))
    with pytest.raises(CorruptBundle, match="sha256"):
        ModelBundle.load(bundle_copy)


def test_a_missing_manifest_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(CorruptBundle, match="manifest"):
        ModelBundle.load(bundle_copy)


def test_a_bundle_for_other_features_is_refused_even_with_matching_hashes(bundle_copy: Path) -> None:
    import hashlib

    meta = json.loads((bundle_copy / "model.json").read_text())
    meta["feature_names"] = meta["feature_names"][:-1]
    (bundle_copy / "model.json").write_text(json.dumps(meta))
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["files"]["model.json"] = hashlib.sha256((bundle_copy / "model.json").read_bytes()).hexdigest()
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleBundle, match="features"):
        ModelBundle.load(bundle_copy)


def test_a_malformed_calibrator_is_rejected() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Calibrator.from_dict({"method": "isotonic", "x": [0.5, 0.1], "y": [0.1, 0.2]})
    with pytest.raises(ValueError, match="unknown"):
        Calibrator.from_dict({"method": "magic"})


def test_isotonic_calibration_is_monotone_and_clipped() -> None:
    cal = Calibrator.from_dict({"method": "isotonic", "x": [0.1, 0.5, 0.9], "y": [0.02, 0.1, 0.4]})
    out = cal(np.array([0.0, 0.1, 0.3, 0.5, 0.95, 1.0]))
    assert np.all(np.diff(out) >= 0)
    assert out[0] == pytest.approx(0.02) and out[-1] == pytest.approx(0.4)


def test_risk_from_the_shap_walk_equals_the_direct_prediction(small_bundle: Path) -> None:
    model = ModelBundle.load(small_bundle)
    X = np.random.default_rng(1).integers(0, 4, size=(50, len(FEATURE_NAMES))).astype(np.float32)
    risk, contribs = model.risk_and_contributions(X)
    np.testing.assert_allclose(risk, model.risk(X), atol=1e-5)
    assert contribs.shape == (50, len(FEATURE_NAMES) + 1)


def test_a_large_batch_scored_on_many_threads_matches_row_by_row_scoring(small_bundle: Path) -> None:
    model = ModelBundle.load(small_bundle)
    X = np.random.default_rng(2).integers(0, 4, size=(200, len(FEATURE_NAMES))).astype(np.float32)
    risk, contribs = model.risk_and_contributions(X)  # 200 rows: the multi-threaded copy when cores allow
    one_by_one = np.vstack([model.contributions(X[i : i + 1]) for i in range(len(X))])
    np.testing.assert_allclose(contribs, one_by_one, atol=1e-5)
    np.testing.assert_allclose(risk, np.concatenate([model.risk(X[i : i + 1]) for i in range(len(X))]), atol=1e-6)
