"""`readmit tune` with Optuna: a stored, resumable study; a pruner on fold scores; the serving budget; the holdout
never seen. Tiny budgets (2–3 folds, ≤ 10 trees) on the 6,000-patient sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from chalicelib.data.dataset import content_sha256
from chalicelib.data.tabular import read_table
from chalicelib.model import tune as tuning
from chalicelib.model.train import TrainConfig, holdout_split, prepare

pytestmark = pytest.mark.slow  # Optuna studies that train per trial (30 s together)

TINY = {
    "max_depth": tuning.Range(low=2, high=3, integer=True),
    "trees": tuning.Range(low=5, high=10, integer=True, step=5),
    "eta": tuning.Range(low=0.1, high=0.3, log=True),
}


def _storage(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def test_the_study_is_stored_under_home_and_a_second_run_resumes_it(
    sample_csv: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("READMIT_HOME", str(tmp_path / "home"))
    lines: list[str] = []
    first = tuning.tune(sample_csv, folds=2, trials=2, space=TINY, progress=lines.append, nthread=1)
    db = tmp_path / "home" / tuning.STUDY_FILE
    assert db.is_file()
    tuning.tune(sample_csv, folds=2, trials=2, space=TINY, progress=lines.append, nthread=1)
    (summary,) = optuna.get_all_study_summaries(_storage(db))
    assert summary.n_trials == 4  # resumed: the second run added to the first run's trials
    assert [line for line in lines if line.startswith("trial")] == ["trial 1 of 2", "trial 2 of 2"] * 2
    assert "| rank | trial | max_depth | eta |" in first and first.count("\n| 1 |") == 1
    trial = optuna.load_study(study_name=summary.study_name, storage=_storage(db)).best_trial
    assert len(trial.user_attrs["fold_auc"]) == 2 and trial.user_attrs["shap_ms_estimate"] > 0
    assert 1 <= trial.user_attrs["leaves_per_tree"] <= 2 ** trial.params["max_depth"]


def test_the_pruner_stops_a_hopeless_trial_before_its_last_fold(sample_csv: Path, tmp_path: Path) -> None:
    space = {**TINY, "min_child_weight": tuning.Range(low=1, high=1e7, log=True)}
    db = tmp_path / "study.db"
    name = tuning.study_name(content_sha256(sample_csv), 3, TrainConfig.seed, tuning.PIPELINE_HOLDOUT, None)
    study = optuna.create_study(storage=_storage(db), study_name=name, direction="maximize")
    good = {"max_depth": 3, "trees": 10, "eta": 0.3, "min_child_weight": 1.0}
    for params in (good, good, {**good, "min_child_weight": 1e7}):  # no split can hold 1e7 weight: AUC 0.5
        study.enqueue_trial(params)
    text = tuning.tune(sample_csv, folds=3, trials=3, space=space, study_path=db, pruner_startup=2, nthread=1)
    trials = optuna.load_study(study_name=name, storage=_storage(db)).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED]
    assert len(trials[2].user_attrs["fold_auc"]) == 2  # judged on the running mean of two folds, third never fit
    assert "3 trials (1 pruned)" in text


def test_the_pinned_model_is_trial_zero_of_a_new_study(sample_csv: Path, tmp_path: Path) -> None:
    text = tuning.tune(sample_csv, folds=2, trials=1, study_path=tmp_path / "s.db", nthread=1)
    study = optuna.load_study(study_name=None, storage=_storage(tmp_path / "s.db"))
    assert study.trials[0].params == tuning.PINNED
    assert "| 1 | 0 (pinned) |" in text


@pytest.mark.parametrize(
    ("space", "grid"),
    [
        ({**TINY, "max_depth": tuning.Range(low=3, high=6, integer=True)}, None),
        (None, {"max_depth": [4], "trees": [100, 300]}),
    ],
)
def test_a_search_beyond_the_serving_budget_is_refused(
    sample_csv: Path, space: dict | None, grid: dict | None, tmp_path: Path
) -> None:
    with pytest.raises(tuning.OverBudget, match="serving budget"):
        tuning.tune(sample_csv, folds=2, trials=1, space=space, grid=grid, study_path=tmp_path / "s.db")
    assert not (tmp_path / "s.db").exists()  # refused before any work


def test_tuning_never_scores_the_pipelines_holdout(
    sample_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prep = prepare(read_table(sample_csv, require_target=True))
    held = holdout_split(prep.patients, tuning.PIPELINE_HOLDOUT, TrainConfig.seed)
    allowed = {row.tobytes() for row in prep.X[~held]}
    seen: list[np.ndarray] = []
    real_fit, real_predict = tuning.fit_booster, tuning.predict_raw
    monkeypatch.setattr(tuning, "fit_booster", lambda X, *a, **k: (seen.append(X), real_fit(X, *a, **k))[1])
    monkeypatch.setattr(tuning, "predict_raw", lambda b, X: (seen.append(X), real_predict(b, X))[1])
    text = tuning.tune(sample_csv, folds=2, grid={"max_depth": [2], "trees": [5]}, study_path=tmp_path / "s.db")
    rows = np.concatenate(seen)
    assert len(rows) == 2 * int((~held).sum())  # each fold: train on the others, score itself
    assert all(row.tobytes() in allowed for row in rows)
    assert f"{int((~held).sum()):,} cohort encounters" in text


def test_each_completed_trial_is_a_nested_mlflow_run_under_one_tune_run(
    sample_csv: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    monkeypatch.setenv("READMIT_MLFLOW_TRACKING_URI", store)
    tuning.tune(sample_csv, folds=2, trials=2, space=TINY, study_path=tmp_path / "s.db", progress=lambda _: None)
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("readmit.source") == "tune"]
    assert len(parents) == 1 and parents[0].data.params["trials"] == "2"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 2 and all(0.5 < c.data.metrics["cv_auc_mean"] < 1 for c in children)
    assert parents[0].data.metrics["best_cv_auc_mean"] == max(c.data.metrics["cv_auc_mean"] for c in children)
