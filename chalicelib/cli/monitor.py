"""Watching a model in use: `readmit drift`, `simulate-drift`, `monitor`, `outcomes`, `performance`,
`shadow-report`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from chalicelib.cli.common import Reporter, Subcommands, emit, err
from chalicelib.core import settings


def cmd_drift(args: argparse.Namespace) -> int:
    import numpy as np

    from chalicelib.batch.local import score_table
    from chalicelib.data.tabular import read_table
    from chalicelib.features import drift
    from chalicelib.model.bundle import ModelBundle
    from chalicelib.monitoring import drift_report
    from chalicelib.registry.loader import bundle_path
    from chalicelib.registry.model_check import require_valid

    folder = bundle_path(args.reference or settings.registry_uri())
    require_valid(folder)  # loaded in a separate process first: a broken file must not crash this one
    model = ModelBundle.load(folder)
    profile, sample = drift.load_reference(folder)
    current = Path(args.current)
    if current.is_dir():  # a prediction log: the features and risks the API actually saw
        from chalicelib.core.audit import LocalPredictionLog

        records = list(LocalPredictionLog(current).read())
        X = np.array([[np.nan if v is None else v for v in r.features] for r in records], dtype=np.float32)
        risk = np.array([r.risk for r in records])
    else:
        scored = score_table(model, read_table(current, require_target=False))
        X, risk = scored.X[~scored.excluded], scored.risk[~scored.excluded]
    report = drift.compare(profile, sample, X, risk, drift.DriftThresholds())
    print(drift_report.table(report))
    out = drift_report.write(report, profile, X, risk, Path(args.out))
    err(f"report: {out} (+ .html, drift.png)")
    return 1 if report.drifted else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from chalicelib.data.dataset import locate
    from chalicelib.data.simulate import shift_file

    n = shift_file(locate(args.data), Path(args.out), args.shift, rows=args.rows, seed=args.seed)
    err(f"wrote {n:,} rows shifted by {args.shift!r} to {args.out}")
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """What the scheduled monitor does on AWS, here: drift of the recent prediction log vs. the champion; with
    --retrain, drift starts a retraining run (trigger "drift"), as the alarm's EventBridge rule does on AWS."""
    from datetime import timedelta

    from chalicelib.core.audit import open_prediction_log
    from chalicelib.monitoring import monitor
    from chalicelib.registry.registry import Registry

    registry = Registry.open(settings.registry_uri(args.registry))
    result = monitor.run(registry, open_prediction_log(args.log), window=timedelta(hours=args.hours))
    emit(args, result)
    if result["status"] == "drift" and args.retrain:
        from chalicelib.data.dataset import locate
        from chalicelib.lifecycle.retrain import retrain

        err("drift detected: starting a retraining run (trigger drift)")
        run = retrain(locate(args.data), registry, trigger="drift", progress=Reporter())
        emit(args, {"retrain": "promoted" if run.decision.promote else "rejected", "challenger": run.version,
                          "champion": run.champion, "reasons": run.decision.reasons})  # fmt: skip
    return 1 if result["status"] == "drift" else 0


def cmd_outcomes(args: argparse.Namespace) -> int:
    from chalicelib.monitoring.outcomes import OutcomeStore, read_outcome_file

    outcomes, bad = read_outcome_file(Path(args.file))
    n = OutcomeStore(settings.home() / "outcomes.jsonl").add(outcomes)
    emit(args, {"recorded": n, "rejected": len(bad), "problems": bad[:20]})
    return 1 if bad and not n else 0


def cmd_performance(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from chalicelib.core.audit import open_prediction_log
    from chalicelib.monitoring.outcomes import OutcomeStore, realized

    now = datetime.now(UTC)
    labels = OutcomeStore(settings.home() / "outcomes.jsonl").labels()
    report = realized(open_prediction_log(args.log), labels, now - timedelta(days=args.days), now, now)
    emit(args, report)
    return 0


def _utc_time(text: str) -> Any:
    """--since: an ISO 8601 time; without a zone it is taken as UTC (what the prediction log stores)."""
    from datetime import UTC, datetime

    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r} (e.g. 2026-11-30T08:00:00Z)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def cmd_shadow_report(args: argparse.Namespace) -> int:
    """The shadow model against the champion on the same requests: agreement, churn of the high-risk list, risk
    shift, and realized AUC/ECE of both once labels have matured (the JSON GET /model/shadow returns)."""
    from datetime import UTC, datetime, timedelta

    from chalicelib.core.audit import open_prediction_log
    from chalicelib.monitoring.shadow_report import current_report, outcome_labels
    from chalicelib.registry.registry import Registry

    now = datetime.now(UTC)
    since = args.since
    if args.hours is not None:
        if not args.hours > 0:
            err("readmit shadow-report: --hours must be more than 0")
            return 2
        since = now - timedelta(hours=args.hours)
    registry = Registry.open(settings.registry_uri(args.registry), validate=False)
    log = open_prediction_log(args.log)
    emit(args, current_report(registry, log, since=since, outcomes=outcome_labels(args.outcomes), now=now))
    return 0


def register(sub: Subcommands) -> None:
    """drift, simulate-drift, monitor, outcomes, performance, shadow-report"""
    s = sub.add_parser("drift", help="compare a file or a prediction log with a model's training reference")
    s.add_argument("--reference", help="bundle folder or registry (default: local champion)")
    s.add_argument("--current", required=True, help="UCI-format file, or a prediction-log folder")
    s.add_argument("--out", default="drift-report", help="folder for the Markdown/HTML report and plots")
    s.set_defaults(func=cmd_drift)

    s = sub.add_parser("simulate-drift", help="write a shifted sample of the data (to exercise monitoring)")
    s.add_argument("--data")
    s.add_argument("--out", required=True)
    s.add_argument("--shift", choices=("none", "older", "utilisation"), default="older")
    s.add_argument("--rows", type=int, default=5000)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("monitor", help="drift of the recent prediction log vs. the champion (exit 1 on drift)")
    s.add_argument("--log", help="prediction log (default: $READMIT_PREDICTION_LOG or the local log)")
    s.add_argument("--registry")
    s.add_argument("--hours", type=float, default=24.0)
    s.add_argument("--retrain", action="store_true", help="on drift, run a retraining (trigger drift)")
    s.add_argument("--data", help="training data for --retrain")
    s.set_defaults(func=cmd_monitor)

    s = sub.add_parser("outcomes", help="record observed outcomes (CSV/JSONL: encounter_id, readmitted)")
    s.add_argument("--file", required=True)
    s.set_defaults(func=cmd_outcomes)

    s = sub.add_parser("performance", help="realized performance of matured predictions (estimate before that)")
    s.add_argument("--days", type=int, default=90, help="window of predictions to look at")
    s.add_argument("--log", help="prediction log (default: $READMIT_PREDICTION_LOG or the local log)")
    s.set_defaults(func=cmd_performance)

    s = sub.add_parser("shadow-report", help="the shadow model vs. the champion on the same requests")
    when = s.add_mutually_exclusive_group()
    when.add_argument("--since", type=_utc_time, help="ISO time (default: when the shadow alias was set)")
    when.add_argument("--hours", type=float, help="the last N hours instead")
    s.add_argument("--log", help="prediction log (default: $READMIT_PREDICTION_LOG or the local log)")
    s.add_argument("--outcomes", help="outcome uploads, folder or s3:// (default: the local `readmit outcomes` store)")
    s.add_argument("--registry")
    s.set_defaults(func=cmd_shadow_report)
