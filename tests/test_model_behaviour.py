"""Model-behaviour tests on the full pipeline trained on the real data (a patient-grouped 20% holdout).

Quality floors sit a little under the targets in the issue, so that a real regression fails here while
seed-level noise does not; the exact figures are printed by benchmarks/train_pipeline.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from chalicelib.data.schema import columns_from_records, parse_encounter
from chalicelib.features.encoding import encode
from chalicelib.features.table import FEATURE_NAMES
from chalicelib.model.bundle import ModelBundle
from chalicelib.model.train import TrainConfig, TrainResult, train

pytestmark = pytest.mark.slow  # trains on the full data set (about 10 minutes on a loaded machine)


@pytest.fixture(scope="module")
def full(data_path: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(data_path, tmp_path_factory.mktemp("full"), TrainConfig(holdout_frac=0.2))


@pytest.fixture(scope="module")
def model(full: TrainResult) -> ModelBundle:
    return ModelBundle.load(full.bundle_dir)


@pytest.fixture(scope="module")
def holdout_records(raw_frame, full: TrainResult) -> list[dict]:  # type: ignore[no-untyped-def]
    rows = raw_frame.sample(400, random_state=3).to_dict("records")
    return [parse_encounter(r)[0] for r in rows]


def risk_of(model: ModelBundle, records: list[dict]) -> np.ndarray:
    return model.risk(encode(columns_from_records(records)))


def test_holdout_quality_clears_the_floors(full: TrainResult) -> None:
    h = full.metrics["holdout"]
    prod = h["models"]["production"]
    assert prod["roc_auc"] >= 0.67
    assert prod["ece"] <= 0.02
    assert prod["brier"] < h["prevalence_brier"]  # better than predicting the prevalence for everyone


def test_the_production_model_beats_both_baselines_where_it_should(full: TrainResult) -> None:
    models = full.metrics["holdout"]["models"]
    assert models["production"]["roc_auc"] > models["LACE"]["roc_auc"] + 0.05
    # the original configuration ranks about as well but its probabilities are far off (scale_pos_weight 8)
    assert models["production"]["brier"] < models["original config"]["brier"] / 2


def test_more_prior_inpatient_stays_never_lower_risk(model: ModelBundle, holdout_records: list[dict]) -> None:
    base = risk_of(model, holdout_records)
    for extra in (1, 3, 6):
        bumped = [{**r, "number_inpatient": r["number_inpatient"] + extra} for r in holdout_records]
        assert np.all(risk_of(model, bumped) >= base - 1e-9)


def test_identifiers_and_the_outcome_do_not_move_the_prediction(model: ModelBundle, holdout_records: list) -> None:
    base = risk_of(model, holdout_records)
    changed = [{**r, "encounter_id": 1, "patient_nbr": 2, "readmitted": "<30"} for r in holdout_records]
    np.testing.assert_array_equal(risk_of(model, changed), base)


def test_a_frail_frequently_admitted_patient_ranks_above_a_healthy_elective_one(
    model: ModelBundle, holdout_records: list[dict]
) -> None:
    template = holdout_records[0]
    frail = {
        **template,
        "age": "[80-90)",
        "number_inpatient": 5,
        "number_emergency": 3,
        "admission_type_id": 1,
        "discharge_disposition_id": 3,
        "time_in_hospital": 9,
        "number_diagnoses": 9,
        "diag_1": "428",
        "diag_2": "585",
        "diag_3": "250.4",
    }
    healthy = {
        **template,
        "age": "[30-40)",
        "number_inpatient": 0,
        "number_emergency": 0,
        "number_outpatient": 0,
        "admission_type_id": 3,
        "discharge_disposition_id": 1,
        "time_in_hospital": 1,
        "number_diagnoses": 3,
        "diag_1": "715",
        "diag_2": "V45",
        "diag_3": None,
    }
    frail_risk, healthy_risk = risk_of(model, [frail, healthy])
    assert frail_risk > 2 * healthy_risk


def test_the_model_card_reports_what_a_reviewer_needs(full: TrainResult) -> None:
    card = (full.bundle_dir / "model_card.md").read_text()
    assert "patient-grouped holdout" in card and "no patient is on both sides" in card
    assert "original config" in card and "LACE" in card
    assert "| race | AfricanAmerican |" in card and "| age_band | [70-80) |" in card
    meta = json.loads((full.bundle_dir / "model.json").read_text())
    assert meta["feature_names"] == list(FEATURE_NAMES)
    assert meta["data"]["excluded_rows"] > 2000  # hospice/expired encounters were excluded
