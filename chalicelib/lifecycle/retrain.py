"""Retraining: train a challenger, score it and the champion on the same patient-grouped evaluation set,
gate, then (policy auto) promote or reject, or (policy manual) leave a passing candidate pending a person's
approval, recording the decision, its metrics and its reasons in the registry.

`readmit retrain` runs these steps in-process; on AWS the Step Functions workflow runs the same functions
from Lambda (evaluate, promote, reject), with training in SageMaker.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalicelib.core.settings import promotion_policy
from chalicelib.data.tabular import read_table
from chalicelib.lifecycle.gate import GateConfig, decide
from chalicelib.lifecycle.promotion import TRIGGERS, Decision, apply_decision, record_candidate
from chalicelib.model import tracking
from chalicelib.model.bundle import ModelBundle
from chalicelib.model.train import PRODUCTION, TrainConfig, holdout_split, prepare, train
from chalicelib.registry.model_check import require_valid
from chalicelib.registry.registry import Registry
from chalicelib.registry.sagemaker import PENDING_MANUAL_APPROVAL


@dataclass
class EvaluationSet:
    """The patient-grouped evaluation set both models are scored on."""

    X: Any
    y: Any
    groups: dict[str, Any]
    patients: Any = None  # patient_nbr per row: the gate's bootstrap resamples patients, not rows


def evaluation_set(data_path: Path, frac: float, seed: int) -> EvaluationSet:
    """The held-out patients of ``data_path`` (the same split `train(holdout_frac=frac, seed=seed)` keeps out)."""
    prep = prepare(read_table(data_path, require_target=True))
    X, y, patients, groups = prep.subset(holdout_split(prep.patients, frac, seed))
    return EvaluationSet(X, y, groups, patients)


def evaluate_challenger(
    registry: Registry, challenger: ModelBundle, evalset: EvaluationSet, cfg: GateConfig | None = None
) -> Decision:
    """Gate the challenger against the registry's champion (if any) on ``evalset``."""
    champion_version = registry.champion()
    champion_risk = champion_threshold = None
    if champion_version and champion_version != challenger.version:
        with tempfile.TemporaryDirectory() as tmp:
            folder = registry.download(champion_version, Path(tmp))
            require_valid(folder)  # a champion file broken since its promotion must not crash the gate
            champion = ModelBundle.load(folder)
            champion_risk, champion_threshold = champion.risk(evalset.X), champion.threshold
    return decide(
        evalset.y, challenger.risk(evalset.X), challenger.threshold, evalset.groups,
        champion_risk, champion_threshold, cfg, patients=evalset.patients,
    )  # fmt: skip


def cv_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The production model's cross-validated figures from a bundle's metrics (metrics.json), for the registry."""
    cv = (metrics.get("cv") or {}).get("models", {}).get(PRODUCTION, {})
    return {k: cv[k] for k in ("n", "roc_auc", "pr_auc", "brier", "ece") if k in cv}


@dataclass
class RetrainResult:
    version: str
    decision: Decision
    champion: str
    seconds: float
    state: str = ""  # the challenger's registry state afterwards: champion, rejected or pending


def retrain(
    data_path: Path,
    registry: Registry,
    *,
    trigger: str = "manual",
    policy: str | None = None,
    eval_frac: float = 0.2,
    seed: int = TrainConfig.seed,
    train_cfg: TrainConfig | None = None,
    gate_cfg: GateConfig | None = None,
    work_dir: Path | None = None,
    progress: Callable[[str], None] = lambda _m: None,
) -> RetrainResult:
    """The whole loop in-process, against any registry (a folder or s3://). ``policy`` auto or manual (default
    $READMIT_PROMOTION_POLICY, else auto)."""
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger must be one of {TRIGGERS}, got {trigger!r}")
    policy = promotion_policy(policy)
    started = time.perf_counter()
    cfg = train_cfg or TrainConfig()
    cfg.holdout_frac, cfg.seed = eval_frac, seed
    with tempfile.TemporaryDirectory() as tmp:
        result = train(data_path, work_dir or Path(tmp), cfg, progress)
        version = registry.register(result.bundle_dir)
        progress(f"registered challenger {version}")
        challenger = ModelBundle.load(result.bundle_dir)
    # train() already built the held-out patients' features; score both models on exactly those
    evalset = (
        EvaluationSet(*result.holdout, patients=result.holdout_patients)
        if result.holdout
        else evaluation_set(data_path, eval_frac, seed)
    )
    progress(f"gating challenger {version} against the champion on {len(evalset.y):,} held-out encounters")
    decision = evaluate_challenger(registry, challenger, evalset, gate_cfg)
    before = registry.champion()
    recorded = record_candidate(
        registry,
        version,
        decision,
        trigger=trigger,
        policy=policy,
        champion=before,
        cv=cv_summary(result.metrics),
        mlflow_run_id=(tracking.run_reference(result.meta) or {}).get("run_id"),
    )
    tracking.record_registration(registry, version, result.meta)
    if recorded["approval"] == PENDING_MANUAL_APPROVAL:
        progress(f"decision: {version} passed the gate; pending approval (`readmit registry approve {version}`)")
        champion = before or ""
    else:
        progress(f"decision: {'promote' if decision.promote else 'reject'} {version}")
        champion = apply_decision(registry, version, decision, trigger=trigger, champion=before)
    return RetrainResult(version, decision, champion, time.perf_counter() - started, registry.state(version))
