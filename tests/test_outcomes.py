"""Late labels: outcomes join to the prediction log by hashed encounter id; only matured predictions count."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from chalicelib.core.audit import AuditRecord, LocalPredictionLog
from chalicelib.core.identifiers import hash_id
from chalicelib.monitoring.outcomes import MATURITY, OutcomeStore, parse_outcomes, read_outcome_file, realized

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def predictions(log: LocalPredictionLog, n: int, days_ago: int, seed: int) -> list[tuple[int, float]]:
    rng = np.random.default_rng(seed)
    rows = [(10_000 * seed + i, float(rng.beta(2, 14))) for i in range(n)]
    at = (NOW - timedelta(days=days_ago)).isoformat()
    log.append(
        [
            AuditRecord(request_id=f"r{eid}", at=at, model_version="v1", risk=risk,
                        risk_tier="high" if risk > 0.2 else "low", encounter_hash=hash_id(eid, kind="encounter"),
                        features=[0.0], source="api")
            for eid, risk in rows
        ]
    )  # fmt: skip
    return rows


def test_only_matured_predictions_with_labels_are_scored_and_the_rest_is_an_estimate(tmp_path: Path) -> None:
    log = LocalPredictionLog(tmp_path / "log")
    old = predictions(log, 400, days_ago=45, seed=1)
    recent = predictions(log, 100, days_ago=5, seed=2)
    rng = np.random.default_rng(3)
    # outcomes drawn from the risks (so the model is calibrated), for 300 of the 400 matured encounters
    labels = {hash_id(eid, kind="encounter"): bool(rng.random() < risk) for eid, risk in old[:300]}
    labels.update({hash_id(eid, kind="encounter"): True for eid, _ in recent})  # early labels do not count yet

    report = realized(log, labels, NOW - timedelta(days=90), NOW, NOW)

    assert report["predictions"] == 500 and report["matured"] == 400
    assert report["label_coverage"] == pytest.approx(0.75)
    assert report["realized"]["n"] == 300 and 0.5 < report["realized"]["roc_auc"] <= 1
    assert report["realized"]["ece"] < 0.1
    assert report["estimate"]["n"] == 100 and "ESTIMATE" in report["estimate"]["note"]
    assert report["estimate"]["expected_readmissions"] == pytest.approx(sum(r for _, r in recent))


def test_a_window_with_nothing_matured_has_no_realized_block(tmp_path: Path) -> None:
    log = LocalPredictionLog(tmp_path / "log")
    predictions(log, 50, days_ago=int(MATURITY.days / 2), seed=4)
    report = realized(log, {}, NOW - timedelta(days=90), NOW, NOW)
    assert "realized" not in report and report["label_coverage"] is None and report["estimate"]["n"] == 50


def test_outcome_files_accept_uci_and_boolean_labels_and_report_bad_rows(tmp_path: Path) -> None:
    good, bad = parse_outcomes(
        [{"encounter_id": "1", "readmitted": "<30"}, {"encounter_id": 2, "readmitted": "NO"},
         {"encounter_id": 3, "readmitted": "1"}, {"encounter_id": "", "readmitted": "<30"},
         {"encounter_id": 5, "readmitted": "maybe"}]
    )  # fmt: skip
    assert [o.readmitted_30d for o in good] == [True, False, True]
    assert len(bad) == 2 and bad[0].startswith("row 4")
    jsonl = tmp_path / "o.jsonl"
    jsonl.write_text("\n".join(json.dumps({"encounter_id": i, "readmitted": ">30"}) for i in range(3)))
    assert len(read_outcome_file(jsonl)[0]) == 3


def test_the_outcome_store_keeps_only_hashes_and_the_last_label_wins(tmp_path: Path) -> None:
    store = OutcomeStore(tmp_path / "outcomes.jsonl")
    store.add(parse_outcomes([{"encounter_id": 424242, "readmitted": "NO"}])[0])
    store.add(parse_outcomes([{"encounter_id": 424242, "readmitted": "<30"}])[0])
    assert store.labels() == {hash_id(424242, kind="encounter"): True}
    assert "424242" not in (tmp_path / "outcomes.jsonl").read_text()


def test_realized_auc_is_scikit_learns_without_scikit_learn() -> None:
    """The drift monitor's Lambda package has no scikit-learn: the realized AUC is computed by ranks, ties included."""
    from sklearn.metrics import roc_auc_score

    from chalicelib.model.calibration import roc_auc

    rng = np.random.default_rng(7)
    y = rng.random(500) < 0.2
    p = np.round(rng.beta(2, 8, 500) + 0.2 * y, 2)  # rounded: many ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert roc_auc(np.zeros(5, dtype=bool), p[:5]) is None


@pytest.mark.slow
def test_realized_needs_no_scikit_learn(tmp_path: Path) -> None:
    code = (
        "import sys\nsys.modules['sklearn'] = None\n"  # import sklearn now raises ImportError, as on Lambda
        "from datetime import UTC, datetime, timedelta\n"
        "from chalicelib.core.audit import LocalPredictionLog\n"
        "from chalicelib.monitoring.outcomes import realized\n"
        f"log = LocalPredictionLog({str(tmp_path / 'log')!r})\n"
        "now = datetime.now(UTC)\n"
        "print(realized(log, {}, now - timedelta(days=60), now)['predictions'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
