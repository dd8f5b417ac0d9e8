"""Training pipeline: load → features → grouped CV → fit → calibrate → evaluate → bundle + model card.

The same function runs locally (`readmit train`), in CI and inside SageMaker (our training image), so a
retrained model is built by exactly the code that was tested.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from chalicelib.data.dataset import content_sha256
from chalicelib.data.schema import COLUMN_BY_NAME, EXCLUDED_DISPOSITIONS
from chalicelib.data.tabular import Table, read_table
from chalicelib.features import drift
from chalicelib.features.encoding import encode
from chalicelib.features.history import history_in_file
from chalicelib.features.table import FEATURE_NAMES, FEATURES
from chalicelib.model import calibration, capacity, evaluation, tracking
from chalicelib.model import card as model_card
from chalicelib.model.bundle import dmatrix, probe_rows, write_bundle

# Risk may only rise with prior-year inpatient stays, all else equal (a clinical sanity constraint that
# costs ~0.001 CV AUC and makes the directional behaviour test an invariant, not a hope).
MONOTONE_INCREASING = ("number_inpatient", "total_visits", "any_inpatient", "inpatient_x_los", "age_x_inpatient")
MONOTONE = "(" + ",".join("1" if name in MONOTONE_INCREASING else "0" for name in FEATURE_NAMES) + ")"
# From `readmit tune` (5-fold grouped CV on training data, within the serving budget; docs/tuning.md has the grid,
# the scores and why rank 2 is pinned: 0.0002 AUC below rank 1 with a third fewer trees, i.e. faster SHAP).
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "tree_method": "hist",
    "max_bin": 128,
    "max_depth": 5,
    "eta": 0.1,
    "min_child_weight": 20,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "reg_lambda": 5.0,
    "monotone_constraints": MONOTONE,
}
DEFAULT_TREES = 100
# The original system's configuration, kept as a reported baseline.
ORIGINAL_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "tree_method": "hist",
    "max_depth": 3,
    "eta": 0.1,
    "scale_pos_weight": 8,
}
ORIGINAL_TREES = 200
PRODUCTION, ORIGINAL, LACE = "production", "original config", "LACE"


@dataclass
class TrainConfig:
    """Everything that shapes a model, with the defaults `readmit train` uses."""

    params: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    n_estimators: int = DEFAULT_TREES
    folds: int = 5
    seed: int = 20260601
    calibration_methods: tuple[str, ...] = ("isotonic", "platt")
    high_share: float = 0.20  # top 20% of training risk = high tier (the operating threshold)
    medium_share: float = 0.30  # the next 30% = medium
    holdout_frac: float = 0.0  # share of patients set aside for a holdout evaluation (0 = train on all)
    baselines: bool = True
    nthread: int = 0  # 0 = all cores


@dataclass
class Prepared:
    """Feature matrix and labels of the cohort, with the subgroup columns evaluation needs."""

    X: np.ndarray
    y: np.ndarray
    patients: np.ndarray
    groups: dict[str, np.ndarray]
    table: Table
    cohort: np.ndarray  # mask over the table's valid rows

    def subset(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        return self.X[mask], self.y[mask], self.patients[mask], {k: v[mask] for k, v in self.groups.items()}


@dataclass
class TrainResult:
    bundle_dir: Path
    version: str
    metrics: dict[str, Any]
    meta: dict[str, Any]
    holdout: tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None = None  # (X, y, subgroups) when held out
    holdout_patients: np.ndarray | None = None  # the holdout rows' patient_nbr (the gate's bootstrap resamples them)


def subgroup_values(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Race, gender and age band as strings, for the fairness audit."""
    out = {}
    for name, column in (("race", "race"), ("gender", "gender"), ("age_band", "age")):
        allowed = np.array([*COLUMN_BY_NAME[column].allowed, "Unknown"], dtype=object)
        out[name] = allowed[cols[column]]
    return out


def prepare(table: Table) -> Prepared:
    """Features for every valid row (history counts excluded encounters too: they happened), then the cohort."""
    history = history_in_file(table.patient_nbr.tolist(), table.encounter_id.tolist(), table.cols)
    X = encode(table.cols, history)
    cohort = ~np.isin(table.cols["discharge_disposition_id"], list(EXCLUDED_DISPOSITIONS))
    groups = {k: v[cohort] for k, v in subgroup_values(table.cols).items()}
    return Prepared(X[cohort], table.labels[cohort], table.patient_nbr[cohort], groups, table, cohort)


def grouped_folds(y: np.ndarray, patients: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold id per row, grouped by patient (no patient in two folds) and stratified by whether the patient
    has any readmission. (scikit-learn's StratifiedGroupKFold does the same but takes ~15 s on 70k patients.)"""
    from sklearn.model_selection import StratifiedKFold

    unique, inverse = np.unique(patients, return_inverse=True)
    any_positive = np.zeros(len(unique), dtype=np.int8)
    np.maximum.at(any_positive, inverse, y.astype(np.int8))
    patient_fold = np.empty(len(unique), dtype=np.int8)
    splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
    for i, (_, test) in enumerate(splitter.split(any_positive, any_positive)):
        patient_fold[test] = i
    return patient_fold[inverse]


def holdout_split(patients: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Mask of holdout rows: a random share of patients, with all of their encounters."""
    unique = np.unique(patients)
    chosen = np.random.default_rng(seed).choice(unique, size=round(len(unique) * frac), replace=False)
    return np.isin(patients, chosen)


@contextlib.contextmanager
def progress_bar(progress: Callable[[str], None] | None, total: int, desc: str, unit: str) -> Iterator[Callable]:
    """An ``update(n)`` for a long loop: the reporter's bar if it has one (the CLI's: tqdm on a terminal, a step
    line otherwise), else nothing."""
    bar = getattr(progress, "bar", None)
    if bar is None:
        yield lambda _n=1: None
        return
    with bar(total, desc, unit) as update:
        yield update


class _Rounds(xgb.callback.TrainingCallback):
    """Reports each boosting round (the final fit takes minutes on the full data with no other sign of life)."""

    def __init__(self, update: Callable[[int], object]) -> None:
        super().__init__()
        self.update = update

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        self.update(1)
        return False  # never stop early


def fit_booster(
    X: np.ndarray,
    y: np.ndarray,
    params: dict[str, Any],
    trees: int,
    seed: int,
    nthread: int,
    on_round: Callable[[int], object] | None = None,
) -> xgb.Booster:
    dtrain = dmatrix(X, y)
    callbacks = [_Rounds(on_round)] if on_round else None
    return xgb.train({**params, "seed": seed, "nthread": nthread}, dtrain, num_boost_round=trees, callbacks=callbacks)


def predict_raw(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    return booster.inplace_predict(X, validate_features=False).astype(np.float64)


def out_of_fold(
    X: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    params: dict[str, Any],
    trees: int,
    cfg: TrainConfig,
    tick: Callable[[str], None] = lambda _s: None,
) -> np.ndarray:
    """Out-of-fold raw probabilities: each row scored by a model that never saw its patient."""
    oof = np.empty(len(y), dtype=np.float64)
    k_all = np.unique(folds)
    for k in k_all:
        test = folds == k
        booster = fit_booster(X[~test], y[~test], params, trees, cfg.seed + int(k), cfg.nthread)
        oof[test] = predict_raw(booster, X[test])
        tick(f"grouped CV fold {k + 1}/{len(k_all)}")
    return oof


def _lace(X: np.ndarray) -> np.ndarray:
    return X[:, FEATURE_NAMES.index("lace_score")].astype(np.float64)


def _top_share_threshold(p: np.ndarray, share: float) -> float:
    return float(np.quantile(p, 1 - share))


def _section(
    y: np.ndarray,
    scored: dict[str, tuple[np.ndarray, float]],
    groups: dict[str, np.ndarray],
    patients: np.ndarray | None = None,
) -> dict:
    """Metrics of several models on one evaluation set; subgroups for the production model only, and with
    ``patients`` its patient-clustered bootstrap intervals and fairness gaps (the primary evaluation set only:
    ~1 s on a 20k-row holdout, ~4 s on the 80k-row CV set)."""
    models = {
        name: evaluation.evaluate(y, p, thr, groups, patients) if name == PRODUCTION else evaluation.evaluate(y, p, thr)
        for name, (p, thr) in scored.items()
    }
    curves = {name: {**evaluation.curves(y, p), "auc": models[name]["roc_auc"]} for name, (p, _) in scored.items()}
    return {"models": models, "prevalence_brier": float(y.mean() * (1 - y.mean())), "curves": curves}


def _code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"readmit {version('readmit')}"
    except PackageNotFoundError:
        return "unknown"


def train(
    data_path: Path,
    out_dir: Path,
    cfg: TrainConfig | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    tracking_settings: tracking.TrackingSettings | None = None,
    run_tags: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train, calibrate and evaluate a model on ``data_path``; write a bundle under ``out_dir``. The run is tracked
    in MLflow (``tracking_settings``, default from the environment; see chalicelib/model/tracking.py) when it can be:
    tracking never stops training."""
    cfg = cfg or TrainConfig()
    with tracking.run("train", tracking_settings, tags={tracking.TAG_SOURCE: "train", **(run_tags or {})}) as run:
        return _train(data_path, out_dir, cfg, progress, run)


def _train(
    data_path: Path,
    out_dir: Path,
    cfg: TrainConfig,
    progress: Callable[[str], None] | None,
    run: tracking.Run,
) -> TrainResult:
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def tick(step: str) -> None:
        timings[step] = round(time.perf_counter() - t0, 2)
        say(f"[{timings[step]:5.1f}s] {step}")

    table = read_table(data_path, require_target=True)
    data_sha = content_sha256(data_path)
    tick(f"read and validated {table.n_rows:,} rows ({len(table.errors)} invalid)")
    prep = prepare(table)
    tick(f"built {len(FEATURES)} features for {len(prep.y):,} cohort encounters")

    holdout = holdout_split(prep.patients, cfg.holdout_frac, cfg.seed) if cfg.holdout_frac > 0 else None
    X, y, patients, groups = prep.subset(~holdout if holdout is not None else np.ones(len(prep.y), dtype=bool))
    folds = grouped_folds(y, patients, cfg.folds, cfg.seed)
    oof = out_of_fold(X, y, folds, cfg.params, cfg.n_estimators, cfg, tick)

    # Calibration: candidates compared on cross-fitted out-of-fold risk; the winner is refit on all of it.
    candidates = {m: calibration.cross_fit(m, oof, y, folds) for m in cfg.calibration_methods}
    scores = {m: (evaluation.binary_metrics(y, p, 0.5)["brier"], evaluation.ece(y, p)) for m, p in candidates.items()}
    method = min(scores, key=lambda m: scores[m])
    calibrator = calibration.fit(method, oof, y)
    cv_risk = candidates[method]
    high = _top_share_threshold(cv_risk, cfg.high_share)
    medium = _top_share_threshold(cv_risk, cfg.high_share + cfg.medium_share)
    thresholds = {"high": high, "medium": medium, "high_share": cfg.high_share, "medium_share": cfg.medium_share}
    tick(f"calibrated ({method})")

    with progress_bar(progress, cfg.n_estimators, "final fit", "trees") as update:
        booster = fit_booster(X, y, cfg.params, cfg.n_estimators, cfg.seed, cfg.nthread, update)
    tick("fitted the final model on all training encounters")

    cv_scored = {PRODUCTION: (cv_risk, high)}
    if cfg.baselines:
        with progress_bar(progress, cfg.folds, "baselines' grouped CV", "folds") as update:

            def baseline_tick(step: str) -> None:
                say(f"baseline {step}")
                update(1)

            orig_oof = out_of_fold(X, y, folds, ORIGINAL_PARAMS, ORIGINAL_TREES, cfg, baseline_tick)
        lace_cv = calibration.cross_fit("isotonic", _lace(X), y, folds)
        cv_scored[ORIGINAL] = (orig_oof, _top_share_threshold(orig_oof, cfg.high_share))
        cv_scored[LACE] = (lace_cv, _top_share_threshold(lace_cv, cfg.high_share))
        tick("baselines (original config, LACE) cross-validated")
    # intervals on the primary evaluation set: the holdout when there is one, else the out-of-fold predictions
    metrics: dict[str, Any] = {"cv": _section(y, cv_scored, groups, patients if holdout is None else None)}
    eval_X, eval_y, eval_risk = X, y, cv_risk

    if holdout is not None:
        hX, hy, h_patients, h_groups = prep.subset(holdout)
        h_risk = calibrator(predict_raw(booster, hX))
        h_scored = {PRODUCTION: (h_risk, high)}
        if cfg.baselines:
            orig = fit_booster(X, y, ORIGINAL_PARAMS, ORIGINAL_TREES, cfg.seed, cfg.nthread)
            lace_cal = calibration.fit("isotonic", _lace(X), y)
            h_scored[ORIGINAL] = (predict_raw(orig, hX), _top_share_threshold(predict_raw(orig, X), cfg.high_share))
            h_scored[LACE] = (lace_cal(_lace(hX)), _top_share_threshold(lace_cal(_lace(X)), cfg.high_share))
        metrics["holdout"] = _section(hy, h_scored, h_groups, h_patients)
        eval_X, eval_y, eval_risk = hX, hy, h_risk
        tick(f"evaluated on the patient-grouped holdout ({len(hy):,} encounters)")

    evaluation_name = "holdout" if holdout is not None else "cv"
    primary = metrics[evaluation_name]["models"][PRODUCTION]
    aucs = [r["roc_auc"] for t in primary["subgroups"].values() for r in t.values() if r["roc_auc"] is not None]
    metrics["worst_subgroup_auc"] = min(aucs) if aucs else None
    sample = np.random.default_rng(cfg.seed).choice(len(eval_X), size=min(2000, len(eval_X)), replace=False)
    contribs = booster.predict(dmatrix(eval_X[sample]), pred_contribs=True)
    metrics["importance"] = model_card.shap_importance(contribs, FEATURE_NAMES)
    metrics["reliability"] = evaluation.reliability(eval_y, eval_risk)
    metrics["dca"] = evaluation.decision_curve(eval_y, eval_risk, evaluation.DCA_GRID)
    metrics["data_quality"] = {
        "missing": evaluation.missing_counts(table.cols, prep.cohort),
        "not_measured": evaluation.not_measured(table.cols, prep.cohort),
        "positives": int(prep.y.sum()),
        "train_positives": int(y.sum()),
        "train_patients": len(np.unique(patients)),
    }
    tick("SHAP importance")

    meta: dict[str, Any] = {
        "task": "readmitted within 30 days (readmitted == '<30')",
        "thresholds": thresholds,
        "params": cfg.params,
        "n_estimators": cfg.n_estimators,
        "cv": {"folds": cfg.folds, "seed": cfg.seed, "calibration_scores": scores},
        "holdout_frac": cfg.holdout_frac,
        "evaluation": evaluation_name,
        "summary": {k: primary[k] for k in ("n", "roc_auc", "pr_auc", "brier", "ece", "precision", "recall", "f1")},
        "capacity": capacity.capture_curve(eval_y, eval_risk, evaluation_name),
        "data": {
            "sha256": data_sha,
            "rows": table.n_rows,
            "invalid_rows": len(table.errors),
            "excluded_rows": int((~prep.cohort).sum()),
            "cohort_rows": len(prep.y),
            "cohort_patients": len(np.unique(prep.patients)),
            "prevalence": float(prep.y.mean()),
            "train_rows": len(y),
        },
        "code_version": _code_version(),
        "timings": timings,
    }

    def render(final_meta: dict[str, Any]) -> dict[str, bytes]:
        files = model_card.plots(
            metrics[evaluation_name]["curves"], metrics["reliability"], metrics["importance"], metrics["dca"]
        )
        files["model_card.md"] = model_card.render(final_meta, metrics).encode()
        files["metrics.json"] = json.dumps(metrics, indent=1).encode()
        report = {"invalid_rows": [{"line": e.line, "reason": e.reason} for e in table.errors]}
        files["data_report.json"] = json.dumps(report, indent=1).encode()
        files.update(drift.build_profile(X, cv_risk, high, cfg.seed))  # the reference drift is measured against
        return files

    if run.reference:  # the bundle names its MLflow run (model.json, covered by the manifest)
        meta[tracking.META_KEY] = run.reference
    timings["before_write_s"] = round(time.perf_counter() - t0, 2)
    # Probes (column quantiles of the training features, no encounter's row) let every process that takes this
    # bundle check, in a separate process, that its model still gives the outputs it gave here (model_check).
    bundle_dir = write_bundle(out_dir, booster, calibrator, meta, render, probes=probe_rows(X, seed=cfg.seed))
    tick("wrote the bundle and model card")
    final_meta = json.loads((bundle_dir / "model.json").read_text())
    if run.active:
        run.log_training(
            config=cfg,
            meta=final_meta,
            metrics=metrics,
            bundle_dir=bundle_dir,
            data_path=data_path,
            fold_aucs=tracking.fold_auc(y, oof, folds),
        )
        tick(f"logged MLflow run {run.run_id}")
    held = (eval_X, eval_y, h_groups) if holdout is not None else None
    held_patients = h_patients if holdout is not None else None
    return TrainResult(bundle_dir, final_meta["version"], metrics, final_meta, held, held_patients)
