"""End to end, locally: shifted patients are scored through the real API path into the prediction log; the
monitor detects the drift and starts a retraining run, recorded in the registry with trigger "drift"."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from chalicelib.cli.main import main
from chalicelib.core.audit import LocalPredictionLog
from chalicelib.data.simulate import shift_file
from chalicelib.registry.provider import ModelProvider
from chalicelib.registry.registry import Registry
from chalicelib.serving.api import ReadmitAPI, Request
from chalicelib.serving.service import Predictor

pytestmark = pytest.mark.slow  # detects drift on real traffic and starts a retraining


def score_through_the_api(registry_dir: Path, log_dir: Path, csv: Path) -> int:
    api = ReadmitAPI(Predictor(ModelProvider(registry_uri=str(registry_dir)), None, LocalPredictionLog(log_dir)))
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False).to_dict("records")
    rows = [r for r in rows if r["discharge_disposition_id"] not in ("11", "13", "14", "19", "20", "21")]
    scored = 0
    for start in range(0, len(rows), 500):
        body = json.dumps({"encounters": rows[start : start + 500]}).encode()
        response = api.predict_batch(Request(body, {"Content-Type": "application/json"}, {"explain": "false"}))
        scored += response.body["scored"]
    return scored


@pytest.mark.parametrize("shift", ["utilisation"])
def test_shifted_traffic_is_detected_and_starts_a_drift_retraining(
    small_bundle: Path, data_path: Path, sample_csv: Path, tmp_path: Path, shift: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    registry = Registry.open(tmp_path / "registry")
    registry.register(small_bundle)
    registry.promote(small_bundle.name, "initial champion")
    shifted = tmp_path / "shifted.csv"
    shift_file(data_path, shifted, shift, rows=1500, seed=11)
    assert score_through_the_api(tmp_path / "registry", tmp_path / "log", shifted) > 1000

    code = main(["monitor", "--log", str(tmp_path / "log"), "--registry", str(tmp_path / "registry"),
                 "--retrain", "--data", str(sample_csv)])  # fmt: skip

    assert code == 1  # drift
    out = capsys.readouterr().out
    assert '"status": "drift"' in out and '"retrain"' in out
    runs = [e for e in registry.history() if e["event"] in ("promoted", "rejected") and e.get("trigger")]
    assert runs and runs[-1]["trigger"] == "drift"
