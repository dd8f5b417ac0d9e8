"""The training pipeline and its command line, on a real sample of the data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chalicelib.model.bundle import ModelBundle
from chalicelib.model.train import grouped_folds, holdout_split

README_SECTIONS = ("## Data", "## Evaluation protocol", "## Performance", "## Subgroups", "## Limitations")


def run_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "chalicelib.cli.main", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_grouped_folds_never_put_a_patient_on_both_sides() -> None:
    rng = np.random.default_rng(1)
    patients = rng.integers(0, 3000, size=10000)
    y = (rng.random(10000) < 0.11).astype(np.int8)
    folds = grouped_folds(y, patients, 5, seed=3)
    frame = pd.DataFrame({"p": patients, "f": folds})
    assert frame.groupby("p")["f"].nunique().max() == 1
    rates = [y[folds == k].mean() for k in range(5)]
    assert max(rates) - min(rates) < 0.03  # stratified: similar prevalence per fold


def test_the_holdout_takes_whole_patients() -> None:
    patients = np.repeat(np.arange(1000), 3)
    mask = holdout_split(patients, 0.2, seed=0)
    assert mask.mean() == pytest.approx(0.2, abs=0.001)
    assert set(patients[mask]).isdisjoint(set(patients[~mask]))


def test_a_trained_bundle_carries_card_plots_metrics_and_provenance(small_bundle: Path, data_path: Path) -> None:
    card = (small_bundle / "model_card.md").read_text()
    for section in README_SECTIONS:
        assert section in card
    assert small_bundle.name in card  # the card names the version it describes
    for plot in ("roc", "pr", "calibration", "importance"):
        assert (small_bundle / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((small_bundle / "model.json").read_text())
    assert meta["evaluation"] == "holdout"
    assert len(meta["data"]["sha256"]) == 64
    assert meta["thresholds"]["high"] > meta["thresholds"]["medium"]
    metrics = json.loads((small_bundle / "metrics.json").read_text())
    subgroups = metrics["holdout"]["models"]["production"]["subgroups"]
    assert set(subgroups) == {"race", "gender", "age_band"}
    assert 0.5 < meta["summary"]["roc_auc"] < 1.0


def test_thresholds_flag_about_the_top_fifth_of_training_risk(small_bundle: Path) -> None:
    metrics = json.loads((small_bundle / "metrics.json").read_text())
    assert metrics["cv"]["models"]["production"]["flagged_share"] == pytest.approx(0.20, abs=0.01)


@pytest.mark.slow
def test_cli_predict_keeps_every_row_and_marks_invalid_and_excluded(
    small_bundle: Path, sample_csv: Path, tmp_path: Path
) -> None:
    frame = pd.read_csv(sample_csv, dtype=str, keep_default_na=False).head(300).copy()
    frame = frame.drop(columns=["readmitted"])
    frame.loc[5, "age"] = "[200-210)"
    frame.loc[9, "discharge_disposition_id"] = "11"  # expired
    source = tmp_path / "in.csv"
    frame.to_csv(source, index=False)
    out = tmp_path / "out.csv"
    done = run_cli("predict", "--model", str(small_bundle), "--data", str(source), "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 300
    assert [r["encounter_id"] for r in rows] == frame["encounter_id"].tolist()
    assert rows[5]["status"] == "invalid" and "age" in rows[5]["reason"] and rows[5]["risk"] == ""
    assert rows[9]["status"] == "excluded" and rows[9]["risk"] == ""
    excluded = frame["discharge_disposition_id"].isin(["11", "13", "14", "19", "20", "21"]).to_numpy().copy()
    excluded[5] = False  # invalid wins over excluded
    assert [r["status"] == "excluded" for r in rows] == excluded.tolist()
    scored = [r for r in rows if r["status"] == "scored"]
    assert len(scored) == 300 - 1 - excluded.sum()
    assert all(0 < float(r["risk"]) < 1 and r["risk_tier"] in ("low", "medium", "high") for r in scored)


@pytest.mark.slow
def test_cli_evaluate_prints_metrics_as_json(small_bundle: Path, sample_csv: Path) -> None:
    done = run_cli("evaluate", "--model", str(small_bundle), "--data", str(sample_csv))
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    assert metrics["model_version"] == small_bundle.name
    assert 0.5 < metrics["roc_auc"] < 1 and 0 <= metrics["ece"] < 0.1
    assert metrics["n"] > 8000


@pytest.mark.slow
def test_cli_train_registers_the_first_model_as_champion(sample_csv: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    done = run_cli(
        "train",
        "--data",
        str(sample_csv),
        "--out",
        str(tmp_path / "b"),
        "--registry",
        str(registry),
        "--trees",
        "30",
        "--folds",
        "3",
        "--no-baselines",
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert "promoted to champion" in summary["registry"]
    assert "grouped CV fold 3/3" in done.stderr  # progress is shown
    listing = json.loads(run_cli("registry", "list", "--registry", str(registry)).stdout)
    assert listing["aliases"]["champion"] == summary["version"]
    # and predict resolves the registry's champion
    out = tmp_path / "p.csv"
    assert run_cli("predict", "--model", str(registry), "--data", str(sample_csv), "--out", str(out)).returncode == 0
    assert next(csv.DictReader(out.open()))["model_version"] == summary["version"]


@pytest.mark.slow
def test_cli_reports_a_missing_data_file_clearly(tmp_path: Path) -> None:
    done = run_cli("data", "--data", str(tmp_path / "nope.zip"))
    assert done.returncode == 2  # a user mistake
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_cli_predict_without_a_champion_says_what_to_do(tmp_path: Path, sample_csv: Path) -> None:
    done = run_cli("predict", "--model", str(tmp_path / "empty-registry"), "--data", str(sample_csv), "--out", "x.csv")
    assert done.returncode == 2  # a user mistake
    assert "readmit train" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_sagemaker_entry_point_trains_from_the_channel_into_the_model_dir(sample_csv: Path, tmp_path: Path) -> None:
    channel = tmp_path / "input" / "data" / "train"
    channel.mkdir(parents=True)
    (channel / "encounters.csv").write_bytes(sample_csv.read_bytes())
    env = {
        "SM_CHANNEL_TRAIN": str(channel),
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "SM_OUTPUT_DATA_DIR": str(tmp_path / "output"),
        "SM_HPS": json.dumps({"n_estimators": 30, "folds": 3, "baselines": "false"}),
    }
    script = Path(__file__).resolve().parent.parent / "chalicelib" / "model" / "sagemaker_train.py"
    import os

    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "readmit-metric roc_auc=" in done.stdout
    model = ModelBundle.load(tmp_path / "model")  # the model dir is itself a loadable bundle
    summary = json.loads((tmp_path / "output" / "summary.json").read_text())
    assert summary["version"] == model.version


# ---- intervals, fairness gaps and per-group out-of-fold metrics (issue #19) ----------------------------------------
def test_the_bundle_stores_intervals_fairness_gaps_and_the_decision_curve(small_bundle: Path) -> None:
    metrics = json.loads((small_bundle / "metrics.json").read_text())
    prod = metrics["holdout"]["models"]["production"]
    assert prod["bootstrap"]["unit"] == "patient" and prod["bootstrap"]["resamples"] == 1000
    lo, hi = prod["intervals"]["roc_auc"]
    assert lo < prod["roc_auc"] < hi
    assert set(prod["fairness"]) == {"race", "gender", "age_band"}
    assert "intervals" not in metrics["cv"]["models"]["production"]  # the holdout is the primary evaluation
    judged = [r for t in prod["subgroups"].values() for r in t.values() if r["judgeable"]]
    assert judged and all(r["intervals"]["recall"] is not None for r in judged)
    assert all(r["roc_auc"] is None for t in prod["subgroups"].values() for r in t.values() if not r["judgeable"])
    assert [round(r["threshold"], 2) for r in metrics["dca"]][:2] == [0.05, 0.06]
    assert metrics["data_quality"]["missing"]["weight"] > 0


@pytest.mark.slow
def test_cli_evaluate_by_group_prints_points_with_intervals(small_bundle: Path, sample_csv: Path) -> None:
    done = run_cli("evaluate", "--model", str(small_bundle), "--data", str(sample_csv), "--by", "age_band")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["by"] == "age_band" and set(out["fairness"]) == {"roc_auc", "recall", "fpr", "calibration_in_the_large"}
    point, lo, hi = out["overall"]["roc_auc"]
    assert lo < point < hi
    for row in out["groups"].values():
        assert row.get("note") == "too few to judge" or row["recall"][1] <= row["recall"][0] <= row["recall"][2]


@pytest.mark.slow
def test_cli_evaluate_oof_re_creates_the_out_of_fold_predictions_of_training(
    small_bundle: Path, sample_csv: Path
) -> None:
    done = run_cli("evaluate", "--model", str(small_bundle), "--data", str(sample_csv), "--by", "age_band", "--oof")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert "out-of-fold" in out["evaluated_on"]
    cv = json.loads((small_bundle / "metrics.json").read_text())["cv"]["models"]["production"]
    # the same folds, seeds and calibration as training: the stored CV metrics come back
    assert out["overall"]["roc_auc"][0] == pytest.approx(cv["roc_auc"], abs=1e-9)
    assert sum(r["n"] for r in out["groups"].values()) == cv["n"]
    assert out["overall"]["roc_auc"][1] < out["overall"]["roc_auc"][0] < out["overall"]["roc_auc"][2]
