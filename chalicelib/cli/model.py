"""A model's life on this machine: `readmit train`, `predict`, `evaluate`, `tune`, `retrain` (the gate, here or
on AWS)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from chalicelib.cli.common import Reporter, Subcommands, emit, err
from chalicelib.core import settings

# The gate thresholds `readmit retrain` takes as flags. Their defaults are GateConfig's field defaults
# (chalicelib/lifecycle/gate.py), the one place they are written: a flag left out is not passed to it.
GATE_FLAGS = {
    "min_auc": "the challenger's AUC floor",
    "max_auc_drop": "how far the challenger's AUC may trail the champion's",
    "max_ece": "the challenger's largest expected calibration error",
}


def cmd_train(args: argparse.Namespace) -> int:
    from chalicelib.data.dataset import locate
    from chalicelib.model import tracking
    from chalicelib.model.train import TrainConfig, train
    from chalicelib.registry.registry import Registry

    started = time.perf_counter()
    data = locate(args.data)
    cfg = TrainConfig(holdout_frac=args.holdout_frac, folds=args.folds, baselines=not args.no_baselines)
    if args.trees:
        cfg.n_estimators = args.trees
    out = Path(args.out) if args.out else settings.home() / "bundles"
    result = train(data, out, cfg, progress=Reporter())
    summary: dict[str, Any] = {
        "version": result.version,
        "bundle": str(result.bundle_dir),
        "model_card": str(result.bundle_dir / "model_card.md"),
        "evaluation": result.meta["evaluation"],
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.meta["summary"].items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.registry is not None:
        registry = Registry.open(settings.registry_uri(args.registry or None))
        registry.register(result.bundle_dir)
        if run_id := tracking.record_registration(registry, result.version, result.meta):
            summary["mlflow_run"] = run_id
        if registry.champion() is None:
            registry.promote(result.version, "first model: no champion to compare with (floors only)")
            summary["registry"] = f"{registry.storage.uri}: registered and promoted to champion"
        else:
            registry.set_alias("challenger", result.version, "trained; awaiting the champion/challenger gate")
            summary["registry"] = f"{registry.storage.uri}: registered as challenger (champion unchanged)"
    emit(args, summary)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from chalicelib.batch.local import import_xgboost_lean, predict_file

    import_xgboost_lean()  # before anything imports xgboost: scoring needs no scikit-learn (~0.7 s of start-up)
    from chalicelib.data.dataset import locate
    from chalicelib.model.bundle import BundleError
    from chalicelib.registry.loader import load_model
    from chalicelib.registry.model_check import InvalidModel

    started = time.perf_counter()
    # The model is validated in a separate process first (a broken model file is an error message, not a
    # segfault); the file is read and validated meanwhile. Model errors still win over data errors, as before.
    with ThreadPoolExecutor(max_workers=1) as pool:
        loading = pool.submit(load_model, args.model or settings.registry_uri())
        table, data_error = None, None
        try:
            from chalicelib.data.tabular import read_table

            data = locate(args.data)
            table = read_table(data, require_target=False)
        except Exception as exc:  # re-raised below, once the model's verdict is known
            data_error = exc
        try:
            model = loading.result()
        except (InvalidModel, BundleError) as exc:
            err(f"readmit predict: {exc}")
            return 2
    if data_error is not None:
        raise data_error
    counts = predict_file(model, data, Path(args.out), table=table)
    done = ", ".join(f"{n:,} {status}" for status, n in counts.items())
    err(f"{done} in {time.perf_counter() - started:.2f}s with model {model.version} → {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from chalicelib.batch.local import labelled_cohort
    from chalicelib.data.dataset import content_sha256, locate
    from chalicelib.model.evaluation import evaluate, group_report, holdout_mask, out_of_fold
    from chalicelib.model.train import subgroup_values
    from chalicelib.registry.loader import load_model

    model = load_model(args.model or settings.registry_uri())
    data = locate(args.data)
    if args.oof:  # error analysis: the bundle's configuration cross-validated on its training patients
        oof = out_of_fold(model.meta, data, err)
        metrics = evaluate(oof["y"], oof["risk"], oof["threshold"], oof["groups"], oof["patients"])
        scope = "out-of-fold predictions (grouped CV of this configuration) on the training patients"
        emit(args, {"model_version": model.version, "evaluated_on": scope, "by": args.by,
                    **group_report(metrics, args.by)})  # fmt: skip
        return 0
    y, risk, scored, keep = labelled_cohort(model, data)
    groups = {k: v[keep] for k, v in subgroup_values(scored.table.cols).items()}
    patients = scored.table.patient_nbr[keep]
    held = holdout_mask(model.meta, content_sha256(data), patients)
    if held is not None and args.data is None and held.any():  # the bundle's own holdout: patients it never saw
        y, risk, groups, patients = y[held], risk[held], {k: v[held] for k, v in groups.items()}, patients[held]
        scope = f"the model's holdout: {len(np.unique(patients)):,} patients it never saw"
        overlap: float | None = 0.0
    else:
        scope = f"every labelled cohort row of {data.name}"
        overlap = _training_overlap(model.meta, patients, held, args.data is None)
        if overlap is None:
            err(f"readmit evaluate: warning: cannot tell whether {data.name} overlaps the training patients "
                 "(the training file is not available here); if it does, these metrics are optimistic")  # fmt: skip
        elif overlap > 0:
            hint = "; omit --data to evaluate on the model's own holdout" if held is not None and held.any() else ""
            err(f"readmit evaluate: WARNING: {overlap:.1%} of these encounters belong to patients model "
                 f"{model.version} was trained on: the metrics are in-sample and optimistic{hint}")  # fmt: skip
    metrics = evaluate(y, risk, model.threshold, groups, patients)  # 95% intervals resample patients
    if args.by:
        metrics = {"by": args.by, **group_report(metrics, args.by)}
    emit(args, {"model_version": model.version, "evaluated_on": scope, "training_overlap": overlap, **metrics})
    return 0


def _training_overlap(meta: dict[str, Any], patients: Any, held: Any, default_data: bool) -> float | None:
    """Share of rows whose patient trained the model; None when the training file cannot be found to tell."""
    from chalicelib.data.dataset import DatasetError, content_sha256, locate
    from chalicelib.data.tabular import read_table
    from chalicelib.model.evaluation import holdout_mask, overlap_share
    from chalicelib.model.train import prepare

    if held is not None:  # this is the training file
        return overlap_share(patients, patients[~held])
    if default_data:
        return None
    try:  # the file the bundle was trained on, if it is the one found by default (the UCI data set)
        training_file = locate(download=False)
    except DatasetError:
        return None
    sha = (meta.get("data") or {}).get("sha256")
    if content_sha256(training_file) != sha:
        return None
    trained = prepare(read_table(training_file, require_target=True)).patients
    mask = holdout_mask(meta, sha, trained)
    return overlap_share(patients, trained if mask is None else trained[~mask])


def cmd_tune(args: argparse.Namespace) -> int:
    from chalicelib.data.dataset import locate
    from chalicelib.model.tune import tune

    study = Path(args.study) if args.study else None
    report = tune(
        locate(args.data),
        folds=args.folds,
        progress=Reporter(),
        trials=args.trials,
        timeout=args.timeout,
        study_path=study,
    )
    if args.out:
        Path(args.out).write_text(report)
        err(f"wrote {args.out}")
    else:
        print(report)
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from chalicelib.data.dataset import locate
    from chalicelib.lifecycle.gate import GateConfig
    from chalicelib.lifecycle.retrain import retrain
    from chalicelib.registry.registry import Registry

    if args.remote:
        return _start_remote(args)
    registry = Registry.open(settings.registry_uri(args.registry))
    gate = GateConfig(**{k: getattr(args, k) for k in GATE_FLAGS if getattr(args, k) is not None})
    result = retrain(
        locate(args.data),
        registry,
        trigger=args.trigger,
        policy=args.policy,
        eval_frac=args.eval_frac,
        gate_cfg=gate,
        progress=Reporter(),
    )
    d = result.decision
    emit(
        args,
        {
            "decision": {"champion": "promoted", "pending": "pending approval"}.get(result.state, "rejected"),
            "challenger": result.version,
            "state": result.state,
            "champion": result.champion,
            "reasons": d.reasons,
            "challenger_auc": d.challenger["roc_auc"],
            "champion_auc": d.champion["roc_auc"] if d.champion else None,
            "seconds": round(result.seconds, 1),
        },
    )
    return 0


def _start_remote(args: argparse.Namespace) -> int:
    """Start the retraining state machine on AWS (its ARN from --state-machine or $READMIT_STATE_MACHINE)."""

    import boto3

    arn = args.state_machine or settings.raw(settings.ENV_STATE_MACHINE)
    if not arn or not args.data or not args.data.startswith("s3://"):
        err("readmit retrain --remote needs --state-machine ARN (or $READMIT_STATE_MACHINE) and --data s3://…")
        return 2
    payload = {"trigger": args.trigger, "data_uri": args.data, "registry_uri": settings.registry_uri(args.registry)}
    if args.policy:  # the state machine can add manual approval, never remove what the stack requires
        payload["policy"] = args.policy
    response = boto3.client("stepfunctions").start_execution(stateMachineArn=arn, input=json.dumps(payload))
    emit(args, {"executionArn": response["executionArn"], "input": payload})
    return 0


def register(sub: Subcommands) -> None:
    """train, predict, evaluate, tune, retrain"""
    s = sub.add_parser("train", help="train, calibrate, evaluate; write a bundle and model card")
    s.add_argument("--data")
    s.add_argument("--out", help="folder for the bundle (default: $READMIT_HOME/bundles)")
    s.add_argument(
        "--registry", nargs="?", const="", default=None, help="register the bundle (default URI: $READMIT_REGISTRY)"
    )
    s.add_argument("--holdout-frac", type=float, default=0.0, help="share of patients held out for evaluation")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--trees", type=int, default=0, help="override the tuned number of trees")
    s.add_argument("--no-baselines", action="store_true", help="skip the original-config and LACE baselines")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("predict", help="score a UCI-format file")
    s.add_argument("--model", help="bundle folder, registry folder or s3:// URI (default: local champion)")
    s.add_argument("--data", help="UCI-format zip/csv/csv.gz (default: as for `readmit data`)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("evaluate", help="metrics of a model on a labelled file, as JSON")
    s.add_argument("--model")
    s.add_argument("--data", help="labelled UCI-format file (default: as for `readmit data`)")
    s.add_argument(
        "--by", choices=("race", "gender", "age_band"), help="only this grouping: each measure as [point, low, high]"
    )
    s.add_argument("--oof", action="store_true", help="with --by: out-of-fold metrics of a grouped CV re-run")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("tune", help="grouped-CV hyper-parameter search on training data (Optuna)")
    s.add_argument("--data")
    s.add_argument("--out", help="write the Markdown report here")
    s.add_argument("--trials", type=int, default=40, help="trials to add to the study (a rerun resumes it)")
    s.add_argument("--timeout", type=float, help="start no trial after this many seconds")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--study", help="Optuna SQLite file (default: $READMIT_HOME/optuna.db)")
    s.set_defaults(func=cmd_tune)

    s = sub.add_parser("retrain", help="train a challenger, gate it against the champion, promote or reject")
    s.add_argument("--data")
    s.add_argument("--registry")
    s.add_argument("--trigger", choices=("schedule", "drift", "manual"), default="manual")
    s.add_argument("--eval-frac", type=float, default=0.2, help="share of patients in the shared evaluation set")
    for field, what in GATE_FLAGS.items():  # default None: GateConfig's own default applies (importing it is numpy)
        s.add_argument(f"--{field.replace('_', '-')}", type=float, help=f"{what} (default: GateConfig.{field})")
    s.add_argument("--remote", action="store_true", help="start the AWS state machine instead of running here")
    s.add_argument("--state-machine", help="ARN of the retraining state machine (with --remote)")
    s.add_argument(
        "--policy",
        choices=settings.PROMOTION_POLICIES,
        help="auto: a gate pass is promoted; manual: it waits for `readmit registry approve` "
        "(default $READMIT_PROMOTION_POLICY, else auto)",
    )
    s.set_defaults(func=cmd_retrain)
