"""Hyper-parameter search by patient-grouped CV on training data only (`readmit tune`), with Optuna.

A TPE sampler proposes XGBoost settings inside the serving budget; each trial is scored fold by fold on the same
patient-grouped folds, and a median pruner stops a trial whose running fold mean falls below the median of earlier
trials at the same fold (the folds are shared, so the comparison is paired). The study lives in SQLite beside the
MLflow runs (``$READMIT_HOME/optuna.db`` unless given), so a second `readmit tune` resumes it. The pipeline's
patient-disjoint holdout (``train.holdout_split`` with the pipeline's share and seed) is removed before anything
is scored: tuning never sees the patients the gate evaluates on.

Writes a Markdown report; the chosen parameters are then pinned as ``train.DEFAULT_PARAMS``, so that
`readmit train` stays inside its time budget and every retrain is reproducible. Training side only (Optuna is in
the ``train`` extra); the serving path never imports this module.

Optuna API used (create_study with storage URL / load_if_exists, TPESampler, MedianPruner, trial.report /
should_prune / TrialPruned, enqueue_trial, GridSampler): https://optuna.readthedocs.io/en/stable/reference/
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, model_validator
from sklearn.metrics import roc_auc_score

from chalicelib.core import settings
from chalicelib.data.dataset import content_sha256
from chalicelib.data.tabular import read_table
from chalicelib.model import tracking
from chalicelib.model.train import (
    DEFAULT_PARAMS,
    DEFAULT_TREES,
    MONOTONE_INCREASING,
    TrainConfig,
    fit_booster,
    grouped_folds,
    holdout_split,
    predict_raw,
    prepare,
)

# The serving budget bounds the search: single-row SHAP contributions cost about 0.155 µs per leaf (docs/tuning.md,
# "Serving cost": 0.350 ms for 100 trees × 22.3 leaves, 0.212 ms for 100 × 13.7), so /predict with factors inside
# its p50 ≤ 1 ms allows at most ~200 trees of depth ≤ 5 (≤ 0.7 ms of SHAP). An earlier unbounded search (depth 4–6,
# 300–500 trees) topped out at 0.6890 ± 0.0062: no better beyond noise, at 3–5× the latency.
MAX_DEPTH = 5
MAX_TREES = 200
SHAP_US_PER_LEAF = 0.155
PIPELINE_HOLDOUT = (
    0.2  # chalicelib/lifecycle/pipeline.py RunInput.eval_frac: the share the retraining pipeline holds out
)
STUDY_FILE = "optuna.db"  # beside mlflow.db (chalicelib/model/tracking.py) under $READMIT_HOME
SPACE_VERSION = "v1"  # part of the study name: a changed space starts a new study instead of mixing trials


class Range(BaseModel):
    """One searched hyper-parameter: integers (step) or floats (optionally log-uniform)."""

    low: float
    high: float
    integer: bool = False
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low <= self.high or (self.log and self.low <= 0):
            raise ValueError(f"bad range [{self.low}, {self.high}] (log={self.log})")
        return self


SPACE: dict[str, Range] = {
    "max_depth": Range(low=3, high=MAX_DEPTH, integer=True),
    "trees": Range(low=50, high=MAX_TREES, integer=True, step=10),
    "eta": Range(low=0.03, high=0.3, log=True),
    "min_child_weight": Range(low=5, high=100, log=True),
    "subsample": Range(low=0.6, high=1.0),
    "colsample_bytree": Range(low=0.5, high=1.0),
    "reg_lambda": Range(low=0.5, high=20, log=True),
}
# The pinned model is always trial 0 of a new study, so the report ranks every proposal against it.
PINNED = {"trees": DEFAULT_TREES, **{k: DEFAULT_PARAMS[k] for k in SPACE if k != "trees"}}


class OverBudget(ValueError):
    """A search space or grid that allows models beyond the serving budget (depth > 5 or > 200 trees)."""


def check_budget(space: Mapping[str, Range] | None, grid: Mapping[str, Sequence[Any]] | None) -> None:
    """Refuse a space or grid whose largest depth or tree count is over the serving budget."""
    highest: dict[str, float] = {}
    if space:
        highest.update({k: r.high for k, r in space.items()})
    if grid:
        highest.update({k: max(v) for k, v in grid.items()})
    for name, limit in (("max_depth", MAX_DEPTH), ("trees", MAX_TREES)):
        if highest.get(name, 0) > limit:
            raise OverBudget(f"{name} up to {highest[name]} is over the serving budget ({limit}); see docs/tuning.md")


@dataclass
class Cohort:
    """The training rows tuning may use (holdout removed), their labels and grouped folds."""

    X: np.ndarray
    y: np.ndarray
    folds: np.ndarray
    n_holdout: int


def training_rows(data_path: Path, folds: int, seed: int, holdout_frac: float) -> Cohort:
    prep = prepare(read_table(data_path, require_target=True))
    held = holdout_split(prep.patients, holdout_frac, seed) if holdout_frac > 0 else np.zeros(len(prep.y), dtype=bool)
    X, y, patients, _ = prep.subset(~held)
    return Cohort(X, y, grouped_folds(y, patients, folds, seed), int(held.sum()))


def leaves_per_tree(booster: Any) -> float:
    dump = booster.get_dump()
    return sum(tree.count("leaf=") for tree in dump) / max(len(dump), 1)


def objective(
    cohort: Cohort,
    space: Mapping[str, Range] | None,
    grid: Mapping[str, Sequence[Any]] | None,
    seed: int,
    nthread: int,
) -> Callable[[Any], float]:
    """The trial function: suggest, then fit fold by fold, reporting the running mean AUC for the pruner."""
    import optuna

    def suggest(trial: optuna.Trial) -> dict[str, Any]:
        if grid:
            return {name: trial.suggest_categorical(name, list(values)) for name, values in grid.items()}
        chosen: dict[str, Any] = {}
        for name, r in (space or SPACE).items():
            if r.integer:
                chosen[name] = trial.suggest_int(name, int(r.low), int(r.high), step=r.step, log=r.log)
            else:
                chosen[name] = trial.suggest_float(name, r.low, r.high, log=r.log)
        return chosen

    def run(trial: optuna.Trial) -> float:
        params = {**DEFAULT_PARAMS, **suggest(trial)}
        trees = int(params.pop("trees", DEFAULT_TREES))
        aucs: list[float] = []
        booster = None
        for k in np.unique(cohort.folds):
            test = cohort.folds == k
            booster = fit_booster(cohort.X[~test], cohort.y[~test], params, trees, seed + int(k), nthread)
            aucs.append(float(roc_auc_score(cohort.y[test], predict_raw(booster, cohort.X[test]))))
            trial.set_user_attr("fold_auc", aucs)
            trial.report(float(np.mean(aucs)), step=int(k))
            if trial.should_prune():
                raise optuna.TrialPruned()
        leaves = leaves_per_tree(booster)
        trial.set_user_attr("trees", trees)
        trial.set_user_attr("leaves_per_tree", leaves)
        trial.set_user_attr("shap_ms_estimate", trees * leaves * SHAP_US_PER_LEAF / 1000)
        trial.set_user_attr("auc_sd", float(np.std(aucs)))
        return float(np.mean(aucs))

    return run


def study_name(data_sha: str, folds: int, seed: int, holdout_frac: float, grid: Mapping[str, Any] | None) -> str:
    """Trials are comparable only on the same data, folds and holdout: those name the study."""
    kind = "grid-" + "-".join(sorted(grid)) if grid else f"tpe-{SPACE_VERSION}"
    return f"readmit-{data_sha[:12]}-f{folds}-s{seed}-h{holdout_frac:g}-{kind}"


def tune(
    data_path: Path,
    folds: int = 5,
    grid: dict[str, list[Any]] | None = None,
    progress: Callable[[str], None] = print,
    *,
    trials: int = 40,
    space: Mapping[str, Range] | None = None,
    study_path: Path | None = None,
    timeout: float | None = None,
    holdout_frac: float = PIPELINE_HOLDOUT,
    seed: int = TrainConfig.seed,
    nthread: int = 0,
    pruner_startup: int = 5,
) -> str:
    """Run (or resume) the study for ``trials`` more trials, or for every point of ``grid``; the Markdown report.

    ``grid`` (lists per parameter) runs Optuna's grid sampler instead of TPE, for a fixed comparison."""
    import optuna

    check_budget(space, grid)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress goes through ``progress``
    cohort = training_rows(data_path, folds, seed, holdout_frac)
    path = Path(study_path) if study_path else settings.home() / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    name = study_name(content_sha256(data_path), folds, seed, holdout_frac, grid)
    sampler = optuna.samplers.GridSampler(grid, seed=seed) if grid else optuna.samplers.TPESampler(seed=seed)
    # n_warmup_steps=1: a trial is judged from its second fold on, when a running mean of two folds exists
    pruner = optuna.pruners.MedianPruner(n_startup_trials=pruner_startup, n_warmup_steps=1)
    study = optuna.create_study(
        storage=f"sqlite:///{path.resolve()}",
        study_name=name,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    n_trials = math.prod(len(v) for v in grid.values()) if grid else trials
    if not grid and not study.trials and _within(PINNED, space or SPACE):
        study.enqueue_trial(PINNED)
    done = itertools.count(1)
    started = time.perf_counter()

    def announce(_study: Any, frozen: Any) -> None:
        took = time.perf_counter() - started
        values = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in frozen.params.items()}
        if frozen.state == optuna.trial.TrialState.COMPLETE:
            line = f"AUC {frozen.value:.4f} ± {frozen.user_attrs['auc_sd']:.4f}"
            parent.child(  # one nested MLflow run per trial (a no-op when tracking is off)
                f"trial {frozen.number}",
                frozen.params,
                {"cv_auc_mean": frozen.value, "cv_auc_sd": frozen.user_attrs["auc_sd"]},
            )
        else:
            line = f"{frozen.state.name.lower()} after {len(frozen.user_attrs.get('fold_auc', []))} folds"
        progress(f"{values}: {line} ({took:.0f}s)")

    def run(trial: Any) -> float:
        progress(f"trial {next(done)} of {n_trials}")
        return objective(cohort, space, grid, seed, nthread)(trial)

    with tracking.run("tune", tags={tracking.TAG_SOURCE: "tune"}) as parent:
        parent.log_params({"folds": folds, "trials": n_trials, "study": name, "data.sha256": content_sha256(data_path)})
        study.optimize(run, n_trials=n_trials, timeout=timeout, callbacks=[announce])
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
            parent.log_metrics({"best_cv_auc_mean": study.best_value})
            parent.set_tags({"readmit.best_params": json.dumps(study.best_params)})
    return report(study, cohort, folds, path)


def _within(params: Mapping[str, Any], space: Mapping[str, Range]) -> bool:
    return all(name in params and r.low <= params[name] <= r.high for name, r in space.items())


def report(study: Any, cohort: Cohort, folds: int, path: Path) -> str:
    """Completed trials ranked by mean fold AUC, with each shape's estimated single-row SHAP cost."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    complete.sort(key=lambda t: -t.value)
    columns = sorted({k for t in complete for k in t.params}, key=lambda k: (k != "max_depth", k != "eta", k))
    fixed = {k: v for k, v in DEFAULT_PARAMS.items() if k not in columns and k != "monotone_constraints"}
    lines = [
        "# Hyper-parameter search",
        "",
        f"Optuna study `{study.study_name}` in `{path}`: {len(study.trials)} trials ({pruned} pruned).",
        f"{folds}-fold patient-grouped CV on {len(cohort.y):,} cohort encounters (training data only; the pipeline's",
        f"holdout of {cohort.n_holdout:,} encounters removed), ranked by mean out-of-fold ROC-AUC. Fixed: "
        + ", ".join(f"`{k}={v}`" for k, v in fixed.items())
        + f", monotone increasing in {', '.join(f'`{n}`' for n in MONOTONE_INCREASING)}. Serving budget: depth ≤"
        f" {MAX_DEPTH}, ≤ {MAX_TREES} trees; SHAP cost estimated at {SHAP_US_PER_LEAF} µs per leaf.",
        "",
        "| rank | trial | " + " | ".join(columns) + " | leaves/tree | est. SHAP ms | AUC (mean ± sd over folds) |",
        "|---|---|" + "---|" * len(columns) + "---|---|---|",
    ]
    for i, t in enumerate(complete, 1):
        shown = " | ".join(_fmt(t.params.get(k, "")) for k in columns)
        pinned = " (pinned)" if _is_pinned(t.params) else ""
        lines.append(
            f"| {i} | {t.number}{pinned} | {shown} | {t.user_attrs['leaves_per_tree']:.1f} | "
            f"{t.user_attrs['shap_ms_estimate']:.3f} | {t.value:.4f} ± {t.user_attrs['auc_sd']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _is_pinned(params: Mapping[str, Any]) -> bool:
    return bool(params) and all(math.isclose(float(PINNED[k]), float(v)) for k, v in params.items() if k in PINNED)
