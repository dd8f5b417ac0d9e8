"""`readmit`: the command line over the domain modules (each command parses, calls, prints)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chalicelib.core import settings


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Reporter:
    """Progress on stderr: tqdm bars when stderr is a terminal, plain step lines when it is not (logs, CI).

    Callable with a step line (what ``train``/``retrain``/``tune`` take as ``progress``); ``bar`` is found by
    ``train.progress_bar`` for long loops (boosting rounds, folds, trials)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, msg: str) -> None:
        _err(msg)

    @contextlib.contextmanager
    def bar(self, total: int, desc: str, unit: str = "it") -> Iterator[Callable[[int], None]]:
        if not self.tty:
            _err(f"{desc}: {total} {unit}…")
            yield lambda _n=1: None
            return
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False) as progress:
            yield progress.update


def text_lines(value: Any, indent: int = 0) -> list[str]:
    """A summary as aligned ``key  value`` lines; nested mappings indented under their key."""
    pad = " " * indent
    if not isinstance(value, dict):
        return [pad + _scalar(value)]
    width = max((len(str(k)) for k in value), default=0)
    lines = []
    for key, item in value.items():
        if isinstance(item, dict) and item:
            lines.append(f"{pad}{key}")
            lines.extend(text_lines(item, indent + 2))
        elif isinstance(item, list) and item and all(isinstance(i, dict) for i in item):
            lines.append(f"{pad}{key}")
            lines.extend(f"{pad}  " + ", ".join(f"{k}={_scalar(v)}" for k, v in i.items()) for i in item)
        else:
            lines.append(f"{pad}{str(key).ljust(width)}  {_scalar(item)}")
    return lines


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value) or "-"
    if isinstance(value, dict):
        return "-"
    return str(value)


def emit(args: argparse.Namespace, summary: Any) -> None:
    """Print a summary: JSON with --json or when stdout is not a terminal (pipes and scripts keep parsing it as
    before), aligned text on a terminal."""
    if getattr(args, "json", False) or not sys.stdout.isatty():
        print(json.dumps(summary, indent=2))
    elif isinstance(summary, list):
        print("\n".join(line for item in summary for line in [*text_lines(item), ""]))
    else:
        print("\n".join(text_lines(summary)))


def cmd_data(args: argparse.Namespace) -> int:
    from chalicelib.data.dataset import CONTENT_SHA256, content_sha256, keep_in_cache, locate
    from chalicelib.data.tabular import read_table

    path = locate(args.data, download=not args.offline)
    digest = content_sha256(path)
    table = read_table(path, require_target=True)
    report = {
        "path": str(path),
        "cached_at": str(keep_in_cache(path)) if digest == CONTENT_SHA256 else None,
        "sha256": digest,
        "official_copy": digest == CONTENT_SHA256,
        "rows": table.n_rows,
        "invalid_rows": len(table.errors),
        "first_errors": [{"line": e.line, "reason": e.reason} for e in table.errors[:20]],
    }
    emit(args, report)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from chalicelib.features.encoding import feature_spec_markdown

    text = feature_spec_markdown()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        _err(f"wrote {args.out}")
    else:
        print(text)
    return 0


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
            _err(f"readmit predict: {exc}")
            return 2
    if data_error is not None:
        raise data_error
    counts = predict_file(model, data, Path(args.out), table=table)
    done = ", ".join(f"{n:,} {status}" for status, n in counts.items())
    _err(f"{done} in {time.perf_counter() - started:.2f}s with model {model.version} → {args.out}")
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
        oof = out_of_fold(model.meta, data, _err)
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
            _err(f"readmit evaluate: warning: cannot tell whether {data.name} overlaps the training patients "
                 "(the training file is not available here); if it does, these metrics are optimistic")  # fmt: skip
        elif overlap > 0:
            hint = "; omit --data to evaluate on the model's own holdout" if held is not None and held.any() else ""
            _err(f"readmit evaluate: WARNING: {overlap:.1%} of these encounters belong to patients model "
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
        _err(f"wrote {args.out}")
    else:
        print(report)
    return 0


def _local_user() -> str:
    """Who, for the registry history: the local user name (an e-mail-like name is hashed, as AWS identities are)."""
    import getpass

    from chalicelib.registry.sagemaker import actor

    with contextlib.suppress(Exception):
        return actor({"UserProfileName": f"local:{getpass.getuser()}"})
    return "local:unknown"


def cmd_registry(args: argparse.Namespace) -> int:
    from chalicelib.lifecycle import promotion
    from chalicelib.registry.model_check import InvalidModel
    from chalicelib.registry.registry import Registry, UnknownVersionError

    registry = Registry.open(settings.registry_uri(args.registry))
    if args.action == "list":
        aliases = {a: registry.get_alias(a) for a in ("champion", "challenger", "shadow")}
        emit(args, {"versions": registry.list_versions(), "states": registry.states(), "aliases": aliases})
    elif args.action == "history":
        emit(args, registry.history())
    elif args.action == "shadow":  # an approved challenger scored beside the champion (README "Shadow")
        from chalicelib.registry.registry import APPROVED, SHADOW

        if not args.version or not (args.reason or "").strip():
            _err("readmit registry shadow: needs a VERSION and --reason")
            return 2
        if registry.state(args.version) != APPROVED:
            _err(f"readmit registry shadow: {args.version} is {registry.state(args.version)}; only an approved one")
            return 2
        registry.set_alias(SHADOW, args.version, f"{args.reason.strip()} (by {_local_user()})", event="shadow")
        emit(args, {"shadow": args.version, "champion": registry.champion()})
    elif args.action in ("promote", "approve", "reject"):
        if not args.version:
            _err(f"{args.action} needs a VERSION")
            return 2
        if args.action in ("approve", "reject") and not (args.reason or "").strip():
            _err(f"readmit registry {args.action}: --reason is required (it is recorded with who and when)")
            return 2
        try:  # the stored model is loaded and scored in a separate process first (promote, approve)
            if args.action == "promote":
                registry.promote(args.version, args.reason or "manual promotion", by=_local_user())
                emit(args, {"champion": registry.champion()})
            else:
                if args.action == "approve":
                    from chalicelib.core.audit import open_prediction_log

                    log = open_prediction_log(None) if promotion.shadow_required() else None
                    result = promotion.approve(registry, args.version, args.reason.strip(), by=_local_user(), log=log)
                    emit(args, result)
                else:
                    emit(args, promotion.reject(registry, args.version, args.reason.strip(), by=_local_user()))
        except InvalidModel as exc:
            _err(f"readmit registry {args.action}: {exc}; refused, the champion is unchanged")
            return 2
        except UnknownVersionError:
            known = ", ".join(registry.list_versions()) or "none"
            where = registry.storage.uri
            _err(f"readmit registry: no model version {args.version!r} in registry {where}; known: {known}")
            return 2
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from chalicelib.data.dataset import locate
    from chalicelib.lifecycle.gate import GateConfig
    from chalicelib.lifecycle.retrain import retrain
    from chalicelib.registry.registry import Registry

    if args.remote:
        return _start_remote(args)
    registry = Registry.open(settings.registry_uri(args.registry))
    gate = GateConfig(min_auc=args.min_auc, max_auc_drop=args.max_auc_drop, max_ece=args.max_ece)
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
    import os

    import boto3

    arn = args.state_machine or os.environ.get("READMIT_STATE_MACHINE")
    if not arn or not args.data or not args.data.startswith("s3://"):
        _err("readmit retrain --remote needs --state-machine ARN (or $READMIT_STATE_MACHINE) and --data s3://…")
        return 2
    payload = {"trigger": args.trigger, "data_uri": args.data, "registry_uri": settings.registry_uri(args.registry)}
    if args.policy:  # the state machine can add manual approval, never remove what the stack requires
        payload["policy"] = args.policy
    response = boto3.client("stepfunctions").start_execution(stateMachineArn=arn, input=json.dumps(payload))
    emit(args, {"executionArn": response["executionArn"], "input": payload})
    return 0


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
    _err(f"report: {out} (+ .html, drift.png)")
    return 1 if report.drifted else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from chalicelib.data.dataset import locate
    from chalicelib.data.simulate import shift_file

    n = shift_file(locate(args.data), Path(args.out), args.shift, rows=args.rows, seed=args.seed)
    _err(f"wrote {n:,} rows shifted by {args.shift!r} to {args.out}")
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

        _err("drift detected: starting a retraining run (trigger drift)")
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
    from chalicelib.monitoring.shadow import current_report, outcome_labels
    from chalicelib.registry.registry import Registry

    now = datetime.now(UTC)
    since = args.since
    if args.hours is not None:
        if not args.hours > 0:
            _err("readmit shadow-report: --hours must be more than 0")
            return 2
        since = now - timedelta(hours=args.hours)
    registry = Registry.open(settings.registry_uri(args.registry), validate=False)
    log = open_prediction_log(args.log)
    emit(args, current_report(registry, log, since=since, outcomes=outcome_labels(args.outcomes), now=now))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Index the labelled encounters of a file for similar-patient search (the local twin of the embedder Lambda)."""
    if args.queue:
        return _enqueue_backfill(args)
    from tqdm import tqdm

    from chalicelib.data.dataset import locate
    from chalicelib.data.tabular import read_table
    from chalicelib.similar.embedding import open_embedder
    from chalicelib.similar.indexing import index_rows, select, take
    from chalicelib.similar.vectors import open_vector_store

    started = time.perf_counter()
    table = read_table(locate(args.data), require_target=True)
    assert table.target is not None
    chosen = select(table.cols, table.target)
    rows = chosen.keep.nonzero()[0]
    embedder, store = open_embedder(args.embedder), open_vector_store(args.store)
    if args.rebuild:
        store.reset()
    with tqdm(total=len(rows), unit="enc", desc="indexing", file=sys.stderr, disable=args.quiet) as bar:
        n = index_rows(
            take(table.cols, rows),
            table.encounter_id[rows].tolist(),
            table.target[rows].tolist(),
            embedder,
            store,
            progress=bar.update,
        )
    report = {
        "indexed": n,
        "points_in_store": store.count(),
        "excluded_from_cohort": chosen.excluded,
        "unlabelled": chosen.unlabelled,
        "invalid_rows": len(table.errors),
        "embedder": embedder.name,
        "dimension": embedder.dimension,
        "store": type(store).__name__,
        "seconds": round(time.perf_counter() - started, 1),
    }
    emit(args, report)
    return 0


def _enqueue_backfill(args: argparse.Namespace) -> int:
    """The backfill path on AWS: one message asks the embedder to index an S3 object; it fans out into chunks."""
    import boto3

    if not (args.data or "").startswith("s3://"):
        _err("readmit index --queue URL needs --data s3://bucket/key")
        return 2
    bucket, _, key = args.data.removeprefix("s3://").partition("/")
    body = json.dumps({"backfill": {"bucket": bucket, "key": key}})
    response = boto3.client("sqs").send_message(QueueUrl=args.queue, MessageBody=body)
    emit(args, {"backfill": {"bucket": bucket, "key": key}, "message_id": response["MessageId"]})
    return 0


def project_dir() -> Path:
    """The folder holding app.py and .chalice/ (this package's parent)."""
    return Path(__file__).resolve().parents[2]


def _set_auth(mode: str) -> None:
    """$READMIT_AUTH for the server and its workers; dev mode makes its secret now and says how to get a token."""
    import os

    from chalicelib.serving import auth

    os.environ[auth.ENV_AUTH] = mode
    if mode == "dev":
        auth.dev_secret(create=True)
        _err("authentication: dev tokens (`readmit token --scope predict` prints one; send Authorization: Bearer …)")
    auth.from_env()  # an incomplete setting (jwks without an issuer, say) stops here with its reason


def cmd_token(args: argparse.Namespace) -> int:
    """A dev-mode access token for `readmit serve --auth dev` (shaped like a Cognito access token)."""
    from chalicelib.serving import auth

    scopes = tuple(dict.fromkeys(args.scope or auth.SCOPES))
    token = auth.DevAuth(auth.dev_secret()).issue(args.subject, scopes, ttl_seconds=args.ttl)
    print(token)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from chalice.cli.factory import CLIFactory

    factory = CLIFactory(project_dir=str(project_dir()), environ=os.environ)
    config = factory.create_config_obj(chalice_stage_name=args.stage)
    # As `chalice local` does: app.py importable from any cwd, and .chalice/config.json's variables for the stage
    # in os.environ (the workers inherit them); explicit flags below win over them.
    factory.load_chalice_app(config.environment_variables)
    if args.model:
        from chalicelib.registry.loader import bundle_path
        from chalicelib.registry.model_check import require_valid

        require_valid(bundle_path(args.model))  # a wrong path or broken model stops here, not as `ready: false`
        os.environ[settings.ENV_MODEL] = args.model
    if args.registry:
        os.environ[settings.ENV_REGISTRY] = args.registry
    if args.check_interval is not None:
        os.environ["READMIT_CHECK_INTERVAL"] = str(args.check_interval)
    if args.auth is not None:
        _set_auth(args.auth)
    if args.dev:
        from app import local_server  # app.py, which load_chalice_app imported from the project folder

        server = local_server(config, args.host, args.port)  # like template.yaml's catch-all: unknown paths get 404
        _err(f"readmit API (Chalice dev server) on http://{args.host}:{args.port} (stage {args.stage}); Ctrl-C stops")
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
        return 0
    from chalicelib.serving.wsgi import ServerConfig, serve

    workers = {"workers": args.workers} if args.workers is not None else {}
    server_config = ServerConfig(host=args.host, port=args.port, **workers)
    _err(
        f"readmit API on http://{args.host}:{args.port} (stage {args.stage}, gunicorn, {server_config.workers} workers"
        " each loading the champion); Ctrl-C stops it"
    )
    serve(server_config, args.stage)
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    """`sam local invoke` without Docker: the response JSON on stdout, START/END/REPORT lines on stderr."""
    import os
    import uuid

    from chalicelib.cli import local_invoke
    from chalicelib.cli.sam_template import DevDependencyMissing, Template, TemplateError

    template_path = Path(args.template or ("template.yaml" if Path("template.yaml").exists() else project_dir()))
    template_path = template_path / "template.yaml" if template_path.is_dir() else template_path
    try:
        pairs = dict(_pairs(args.env, "--env"))
        template = Template(template_path, parameters=dict(_pairs(args.parameter, "--parameter")))
        logical_id = args.logical_id or (template.fixture_target(Path(args.event)) if args.event else None)
        if not logical_id:
            _err("readmit invoke: name the function (LogicalId), or pass a fixture that maps to one")
            return 2
        spec = template.function(logical_id)
    except (DevDependencyMissing, TemplateError, ValueError) as exc:
        _err(f"readmit invoke: {exc}")
        return 2
    event = json.loads(Path(args.event).read_text()) if args.event else {}
    unset = [k for k in spec.unresolved if k not in pairs and k not in os.environ]
    if unset:
        _err(local_invoke.unset_message(spec, unset))
    request_id = str(uuid.uuid4())
    _err(f"START RequestId: {request_id} Version: $LATEST")
    started = time.perf_counter()
    try:
        result = local_invoke.invoke(spec, event, pairs, request_id=request_id)
        text, status = json.dumps(result.response), 0
    except Exception as exc:  # the runtime reports any unhandled error as a payload; so do we
        text, status = json.dumps(local_invoke.error_payload(exc, request_id)), 1
    duration = (time.perf_counter() - started) * 1000
    _err(f"END RequestId: {request_id}")
    _err(f"REPORT RequestId: {request_id}\tDuration: {duration:.2f} ms\tMemory Size: {spec.memory} MB")
    if duration > spec.timeout * 1000:
        _err(f"readmit invoke: took longer than the function's Timeout ({spec.timeout} s): Lambda would stop it")
    print(text)
    return status


def cmd_smoke(args: argparse.Namespace) -> int:
    """After a deploy: one call of each of the stack's services, and what passed (chalicelib/cli/smoke.py)."""
    from chalicelib.cli.smoke import SmokeOptions, main

    options = SmokeOptions(
        stack=args.stack, retrain=not args.no_retrain, batch=not args.no_batch, wait_seconds=args.wait
    )
    return main(options, args.region, args.json)


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _pairs(items: list[str] | None, flag: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{flag} takes NAME=VALUE, got {item!r}")
        pairs.append((name, value))
    return pairs


class _VersionAction(argparse.Action):
    """`readmit --version`: the installed package's version and, when a local registry has one, its champion
    (read from the alias file: no model is loaded, so no xgboost)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            line = f"readmit {version('readmit')}"
        except PackageNotFoundError:
            line = "readmit (not installed as a package)"
        uri = settings.registry_uri()
        if not uri.startswith("s3://") and Path(uri).expanduser().is_dir():
            from chalicelib.registry.registry import Registry

            with contextlib.suppress(Exception):  # an unreadable registry only leaves the champion out
                champion = Registry.open(Path(uri).expanduser(), validate=False).champion()
                line += f"\nchampion: {champion or 'none'} (registry {uri})"
        print(line)  # on stdout, as `--version` conventionally is (argparse.exit writes to stderr)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="readmit", description="30-day readmission risk for diabetic patients.")
    p.add_argument("--version", action=_VersionAction, help="print the package version (and the local champion)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors ($READMIT_DEBUG=1)")
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common = argparse.ArgumentParser(add_help=False, parents=[debug])
    common.add_argument("--json", action="store_true", help="print the summary as JSON (default when piped)")
    subparsers = p.add_subparsers(dest="command", required=True)

    class _Sub:  # every subcommand takes --debug; all but smoke (which has its own) take --json
        @staticmethod
        def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
            return subparsers.add_parser(name, parents=[debug if name == "smoke" else common], **kwargs)

    sub = _Sub()

    s = sub.add_parser("data", help="find, verify and validate the UCI data set")
    s.add_argument("--data", help="UCI zip, .csv or .csv.gz (default: $READMIT_DATA, cache, download)")
    s.add_argument("--offline", action="store_true", help="never download")
    s.set_defaults(func=cmd_data)

    s = sub.add_parser("features", help="print or write the feature-spec document")
    s.add_argument("--out", help="write Markdown here (e.g. docs/features.md)")
    s.set_defaults(func=cmd_features)

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
    s.add_argument("--min-auc", type=float, default=0.65)
    s.add_argument("--max-auc-drop", type=float, default=0.005)
    s.add_argument("--max-ece", type=float, default=0.02)
    s.add_argument("--remote", action="store_true", help="start the AWS state machine instead of running here")
    s.add_argument("--state-machine", help="ARN of the retraining state machine (with --remote)")
    s.add_argument(
        "--policy",
        choices=settings.PROMOTION_POLICIES,
        help="auto: a gate pass is promoted; manual: it waits for `readmit registry approve` "
        "(default $READMIT_PROMOTION_POLICY, else auto)",
    )
    s.set_defaults(func=cmd_retrain)

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

    s = sub.add_parser("index", help="index labelled encounters for similar-patient search (progress bar)")
    s.add_argument("--data", help="labelled UCI-format file (default: as for `readmit data`)")
    s.add_argument("--store", choices=("numpy", "qdrant", "opensearch"), help="default: $READMIT_VECTOR_STORE or numpy")
    s.add_argument("--embedder", choices=("local", "bedrock"), help="default: $READMIT_EMBEDDER or local")
    s.add_argument("--rebuild", action="store_true", help="drop the existing index first")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--queue", help="on AWS: ask the embedder Lambda (its ingest queue URL) to index --data s3://…")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("serve", help="serve the API over HTTP (gunicorn; --dev: Chalice's local server)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--model", help="bundle folder or URI to serve instead of the registry's champion")
    s.add_argument("--registry", help="registry URI (default: $READMIT_REGISTRY or the local registry)")
    s.add_argument("--check-interval", type=float, help="seconds between champion checks (default 300)")
    s.add_argument("--stage", default="local")
    s.add_argument("--workers", type=int, help="processes, each with its own model (default $WEB_CONCURRENCY or 2)")
    s.add_argument("--dev", action="store_true", help="Chalice's single-process development server instead")
    s.add_argument(
        "--auth",
        choices=("none", "dev", "jwks"),
        help="none (default locally); dev: local tokens from `readmit token`; jwks: Cognito access tokens "
        "($READMIT_AUTH_ISSUER, $READMIT_AUTH_CLIENT_IDS)",
    )
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("token", help="print a dev access token for `readmit serve --auth dev`")
    s.add_argument("--scope", action="append", choices=("predict", "admin"), help="repeatable (default: both)")
    s.add_argument("--subject", default="dev-user", help="the token's sub claim (audit records keep only its hash)")
    s.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (default 3600)")
    s.set_defaults(func=cmd_token)

    s = sub.add_parser("registry", help="list versions and states, history, approve, reject, promote")
    s.add_argument("action", choices=("list", "history", "approve", "reject", "shadow", "promote"))
    s.add_argument("version", nargs="?")
    s.add_argument("--reason", help="why (required for approve and reject; recorded with who and when)")
    s.add_argument("--registry")
    s.set_defaults(func=cmd_registry)

    s = sub.add_parser("invoke", help="run a template.yaml function on an event here, without Docker")
    s.add_argument("logical_id", nargs="?", help="e.g. ApiFunction (default: the function the --event maps to)")
    s.add_argument("--event", "-e", help="event JSON file, e.g. events/api_health.json (default: {})")
    s.add_argument("--env", action="append", metavar="NAME=VALUE", help="set an environment variable (repeatable)")
    s.add_argument("--parameter", action="append", metavar="NAME=VALUE", help="override a template parameter")
    s.add_argument("--template", help="template.yaml (default: ./template.yaml, else the project's)")
    s.set_defaults(func=cmd_invoke)

    s = sub.add_parser("smoke", help="after a deploy: call the API, start a retraining, score a list; say what works")
    s.add_argument("--stack", required=True, help="the CloudFormation stack, e.g. readmit-dev")
    s.add_argument("--region", help="default: the AWS CLI's (AWS_REGION, the profile)")
    s.add_argument("--no-retrain", action="store_true", help="do not start a retraining")
    s.add_argument("--no-batch", action="store_true", help="do not upload a list for batch scoring")
    s.add_argument("--wait", type=_seconds, default=0.0, metavar="SECONDS", help="wait for both runs (default 0)")
    s.add_argument("--json", action="store_true", help="print the checks as JSON")
    s.set_defaults(func=cmd_smoke)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception classes that mean a user mistake (one line, exit 2), from the modules already imported: a module
    that was never imported cannot have raised, and importing it here would cost the fast start."""
    found: list[type[BaseException]] = [FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError]
    for module, names in (
        ("chalicelib.data.dataset", ("DatasetError",)),
        ("chalicelib.model.bundle", ("BundleError",)),
        ("chalicelib.registry.registry", ("RegistryError",)),
        ("chalicelib.registry.loader", ("NoChampion",)),
        ("chalicelib.registry.model_check", ("InvalidModel",)),
        ("chalicelib.core.storage", ("StorageError",)),
        ("chalicelib.serving.auth", ("AuthConfigError",)),
    ):
        loaded = sys.modules.get(module)
        found.extend(getattr(loaded, name) for name in names if loaded is not None and hasattr(loaded, name))
    return tuple(found)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc.args[0]) if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    return text.strip().replace("\n", " ") or type(exc).__name__


def _quiet_broken_pipe() -> int:
    """stdout's reader went away (`readmit features | head -3`): stop quietly, as Unix tools do. Python's recipe:
    point stdout at devnull so the interpreter's final flush does not raise again
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


def main(argv: list[str] | None = None) -> int:
    """Parse, run one command, and keep user mistakes to one line on stderr (exit 2): no traceback unless
    --debug or READMIT_DEBUG=1, and then only for what is not a user mistake."""
    import os

    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("READMIT_DEBUG", "") not in ("", "0")
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        _err("readmit: interrupted")
        return 130
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            _err(f"readmit {args.command}: {_message(exc)}")
            return 2
        if debug:
            raise
        _err(
            f"readmit {args.command}: unexpected error ({type(exc).__name__}: {_message(exc)}); "
            "run with --debug or READMIT_DEBUG=1 for the traceback"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
