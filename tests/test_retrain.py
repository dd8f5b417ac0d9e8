"""`readmit retrain` end to end on a real sample: a promotion, then a rejection, both recorded with reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from chalicelib.lifecycle.gate import GateConfig
from chalicelib.lifecycle.retrain import retrain
from chalicelib.model.train import TrainConfig
from chalicelib.registry.registry import Registry


def small() -> TrainConfig:
    return TrainConfig(n_estimators=60, folds=3, baselines=False)


@pytest.mark.slow
def test_first_retrain_promotes_and_a_worse_gate_outcome_keeps_the_champion(sample_csv: Path, tmp_path: Path) -> None:
    registry = Registry.open(tmp_path / "registry")

    first = retrain(sample_csv, registry, trigger="schedule", train_cfg=small(), gate_cfg=GateConfig(min_auc=0.55))
    assert first.decision.promote and registry.champion() == first.version
    assert first.state == "champion"  # policy auto (the default): no one is asked

    # the challenger must now beat the champion by 0.05 AUC, which a retrain on the same data cannot
    strict = GateConfig(min_auc=0.55, max_auc_drop=-0.05)
    second = retrain(sample_csv, registry, trigger="drift", train_cfg=small(), gate_cfg=strict)
    assert not second.decision.promote
    assert registry.champion() == first.version  # the champion is untouched
    events = [e for e in registry.history() if e["event"] in ("promoted", "rejected")]
    assert [e["event"] for e in events] == ["promoted", "rejected"]
    assert events[1]["trigger"] == "drift" and "trails the champion" in events[1]["reason"]
    assert events[1]["version"] == second.version and events[1]["champion_metrics"]["roc_auc"] > 0.55
    assert second.state == "rejected" and not [e for e in registry.history() if e["event"] == "pending"]
    assert registry.states() == {first.version: "champion", second.version: "rejected"}


def test_a_bad_trigger_is_refused(sample_csv: Path, tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError, match="trigger"):
        retrain(sample_csv, Registry.open(tmp_path / "r"), trigger="cron")


def test_retrain_remote_starts_the_state_machine_with_a_valid_input(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    import boto3
    from moto import mock_aws

    from chalicelib.cli.main import main
    from chalicelib.lifecycle.pipeline import RetrainInput

    with mock_aws():
        role = "arn:aws:iam::123456789012:role/readmit-sfn"
        definition = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}})
        sfn = boto3.client("stepfunctions")
        arn = sfn.create_state_machine(name="readmit-retrain-dev", definition=definition, roleArn=role)[
            "stateMachineArn"
        ]
        args = ["retrain", "--remote", "--state-machine", arn, "--data", "s3://data/training/diabetic_data.csv",
                "--registry", "s3://models/registry", "--trigger", "manual", "--policy", "manual"]  # fmt: skip
        assert main(args) == 0
        [execution] = sfn.list_executions(stateMachineArn=arn)["executions"]
        payload = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    run = RetrainInput.model_validate(payload)
    assert run.trigger == "manual" and run.registry_uri == "s3://models/registry" and run.policy == "manual"


def test_an_execution_can_require_approval_but_never_skip_the_stacks() -> None:
    from chalicelib.lifecycle.pipeline import effective_policy

    assert effective_policy(None, {}) == "auto"  # today's behaviour
    assert effective_policy("manual", {}) == "manual"
    assert effective_policy("auto", {"READMIT_PROMOTION_POLICY": "manual"}) == "manual"
    import pytest

    with pytest.raises(ValueError, match="READMIT_PROMOTION_POLICY"):
        effective_policy(None, {"READMIT_PROMOTION_POLICY": "sometimes"})


def test_retrain_remote_without_a_state_machine_says_what_is_missing(capsys) -> None:  # type: ignore[no-untyped-def]
    from chalicelib.cli.main import main

    assert main(["retrain", "--remote", "--data", "s3://d/x.csv"]) == 2
    assert "--state-machine" in capsys.readouterr().err


@pytest.mark.slow
def test_the_evaluation_set_is_exactly_the_patients_training_held_out(sample_csv: Path, tmp_path: Path) -> None:
    import numpy as np

    from chalicelib.lifecycle.retrain import evaluation_set
    from chalicelib.model.train import train

    cfg = TrainConfig(n_estimators=20, folds=3, baselines=False, holdout_frac=0.2, seed=7)
    held = train(sample_csv, tmp_path, cfg).holdout
    rebuilt = evaluation_set(sample_csv, 0.2, 7)
    assert held is not None
    np.testing.assert_array_equal(held[0], rebuilt.X)
    np.testing.assert_array_equal(held[1], rebuilt.y)
