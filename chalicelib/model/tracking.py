"""Experiment tracking with MLflow, for training only: one run per `readmit train` / retraining, nested runs for
`readmit tune` trials. Tracking never decides whether training succeeds: when it is off, MLflow is not installed
or the server cannot be reached, one ``TrackingWarning`` says so and training goes on untracked.

Where runs go (``READMIT_MLFLOW_TRACKING_URI``):

- unset: ``sqlite:///$READMIT_HOME/mlflow.db`` with artifacts under ``$READMIT_HOME/mlartifacts``. MLflow 3 made a
  database the default backend and keeps the file store (``./mlruns``) in maintenance only, "to be deprecated
  soon" (https://mlflow.org/docs/latest/self-hosting/architecture/backend-store); ``mlflow ui --backend-store-uri
  sqlite:///…/mlflow.db`` shows the runs;
- ``off`` (or empty): no tracking, and MLflow is never imported;
- a SageMaker managed MLflow tracking server's ARN: the ``sagemaker-mlflow`` plugin takes the ARN as the tracking
  URI and signs every call with SigV4
  (https://docs.aws.amazon.com/sagemaker/latest/dg/mlflow-track-experiments.html). The caller's role needs the
  ``sagemaker-mlflow:*`` run actions on the server (Service Authorization Reference, "Amazon SageMaker with
  MLflow": resource type mlflow-tracking-server) and, since the plugin's S3 artifact repository uploads with the
  caller's credentials, s3:PutObject on the server's artifact store;
- any other MLflow tracking URI (``http://…``, another database).

MLflow is imported here only, and only inside functions: the API and batch packages, which never import this
module's callers, do not carry it. Nothing about a patient is logged: configuration, aggregate metrics, the
model card, its plots and the data set's fingerprint (sha256 and row counts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.core import settings

ENV_TRACKING_URI = settings.ENV_MLFLOW_TRACKING_URI  # unset: local SQLite under $READMIT_HOME; "off": no tracking
ENV_EXPERIMENT = settings.ENV_MLFLOW_EXPERIMENT  # experiment name (default: readmit)
OFF_VALUES = frozenset({"", "off", "none", "false", "0"})
DEFAULT_EXPERIMENT: str = settings.default("mlflow_experiment")
# The run's tags that tie it to the registry (read back by tests and by whoever looks at the run in the UI).
TAG_VERSION = "readmit.version"
TAG_REGISTRY_VERSION = "readmit.registry_version"
TAG_REGISTRY_URI = "readmit.registry_uri"
TAG_MODEL_PACKAGE_ARN = "readmit.model_package_arn"
TAG_SOURCE = "readmit.source"
TAG_CODE_VERSION = "readmit.code_version"
TAG_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's system tag for the commit (the UI links it)
TAG_PARENT = "mlflow.parentRunId"  # MLflow's system tag that nests a run under another
# The bundle's model.json keeps the run's reference under this key (covered by the manifest like all of model.json).
META_KEY = "mlflow"
# MLflow's limits (mlflow/utils/validation.py): 100 params or tags and 1,000 metrics per log_batch, param values
# up to 6,000 characters, tag values up to 8,000, a dataset digest up to 36.
BATCH_PARAMS, BATCH_METRICS, PARAM_VALUE_MAX, TAG_VALUE_MAX, DIGEST_MAX = 100, 1000, 6000, 8000, 36
# Connection check before a run starts: one attempt with a short timeout, so an unreachable server costs seconds,
# not MLflow's default 7 retries with backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT,
# mlflow/environment_variables.py). Later calls keep MLflow's retries: a reachable server's hiccups are retried.
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# Bundle files logged as artifacts: the card, its plots, the aggregate metrics and the metadata. Not the data
# report (it quotes invalid rows' values) nor the drift profile.
ARTIFACT_FILES = ("model_card.md", "metrics.json", "model.json", "manifest.json")
ARTIFACT_DIRS = ("plots",)
# The production model's measures logged per evaluation set, each with its 95% interval when it has one.
SUMMARY_MEASURES = ("roc_auc", "pr_auc", "brier", "ece", "calibration_in_the_large", "precision", "recall", "fpr")


class TrackingWarning(UserWarning):
    """Tracking is off for this run (MLflow missing, server unreachable, a logging call failed)."""


class TrackingSettings(BaseModel):
    """Where runs go; ``uri`` None means tracking is off."""

    model_config = ConfigDict(frozen=True)

    uri: str | None
    experiment: str = Field(DEFAULT_EXPERIMENT, min_length=1, max_length=500)
    artifact_location: str | None = None  # only for a new experiment in a local database

    @property
    def enabled(self) -> bool:
        return self.uri is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, *, local_default: bool = True) -> TrackingSettings:
        """From ``READMIT_MLFLOW_TRACKING_URI``; unset means the local SQLite store (``local_default``) or off."""
        s = settings.Settings.from_env(env)
        raw, experiment = s.mlflow_tracking_uri, s.mlflow_experiment  # raw: "" is off, None unset
        if raw is None and local_default:
            home = s.home.expanduser().resolve()
            return cls(uri=f"sqlite:///{home / 'mlflow.db'}", experiment=experiment, artifact_location=_artifacts(home))
        if raw is None or raw.strip().lower() in OFF_VALUES:
            return cls(uri=None, experiment=experiment)
        uri = raw.strip()
        location = None
        if uri.startswith("sqlite:"):  # a local database: artifacts beside the other local state, not in the cwd
            location = _artifacts(s.home.expanduser().resolve())
        return cls(uri=uri, experiment=experiment, artifact_location=location)


def _artifacts(home: Path) -> str:
    return (home / "mlartifacts").as_uri()


@contextlib.contextmanager
def _probe_env() -> Iterator[None]:
    """MLflow reads its HTTP retry settings from the environment on each request; shorten them for the probe only,
    unless the user set them."""
    added = {k: v for k, v in PROBE_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def git_commit() -> str | None:
    """The full commit of this source tree when it is a git checkout (not in the training image)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:limit]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def flat_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested configuration as MLflow params: ``{"params": {"eta": 0.1}}`` → ``{"params.eta": "0.1"}``."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = _text(value if not isinstance(value, tuple) else list(value), PARAM_VALUE_MAX)
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


def training_metrics(metrics: Mapping[str, Any], fold_auc: Sequence[float] | None = None) -> dict[str, float]:
    """The run's metrics from train()'s metrics document: per evaluation set (cv, holdout) the production model's
    measures with their interval bounds as ``<measure>_low`` / ``<measure>_high``, the baselines' AUC, the worst
    subgroup AUC, and the CV AUC's mean and sd over folds. Undefined values (None, NaN) are left out."""
    out: dict[str, float] = {}
    for section in ("cv", "holdout"):
        models = (metrics.get(section) or {}).get("models") or {}
        for model, row in models.items():
            if model != "production":
                if (value := _number(row.get("roc_auc"))) is not None:
                    out[f"{section}.{_slug(model)}.roc_auc"] = value
                continue
            intervals = row.get("intervals") or {}
            for measure in SUMMARY_MEASURES:
                if (value := _number(row.get(measure))) is not None:
                    out[f"{section}.{measure}"] = value
                bounds = intervals.get(measure) or ()
                for side, bound in zip(("low", "high"), bounds, strict=False):
                    if (value := _number(bound)) is not None:
                        out[f"{section}.{measure}_{side}"] = value
    if (worst := _number(metrics.get("worst_subgroup_auc"))) is not None:
        out["worst_subgroup_auc"] = worst
    if fold_auc:
        mean = sum(fold_auc) / len(fold_auc)
        out["cv_auc_mean"] = mean
        out["cv_auc_sd"] = math.sqrt(sum((a - mean) ** 2 for a in fold_auc) / len(fold_auc))  # as np.std (tune)
    return out


def fold_auc(y: Any, scores: Any, folds: Any) -> list[float]:
    """ROC-AUC of each CV fold's out-of-fold scores (the figure `readmit tune` ranks by)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    y, scores, folds = np.asarray(y), np.asarray(scores), np.asarray(folds)
    out = []
    for k in np.unique(folds):
        mask = folds == k
        if len(np.unique(y[mask])) == 2:
            out.append(float(roc_auc_score(y[mask], scores[mask])))
    return out


class Run:
    """One MLflow run, or a null run (``run_id`` None) when tracking is off. Every method logs or does nothing:
    the first failure warns once and turns the run off, so training never fails because of tracking."""

    def __init__(self, client: Any = None, run_id: str | None = None, where: TrackingSettings | None = None) -> None:
        self._client = client
        self.run_id = run_id
        self.settings = where
        self.experiment_id: str | None = None

    @property
    def active(self) -> bool:
        return self.run_id is not None

    @property
    def reference(self) -> dict[str, str] | None:
        """What the bundle records: enough to find the run again (the tracking URI it lives in, its ids)."""
        if self.run_id is None or self.settings is None or self.settings.uri is None:  # run_id None: not active
            return None
        return {"run_id": self.run_id, "experiment_id": self.experiment_id or "", "tracking_uri": self.settings.uri}

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.active:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # any tracking failure: warn once, stop tracking, keep training
            _warn(f"MLflow tracking stopped ({what} failed: {type(exc).__name__}: {exc}); training continues")
            self.run_id = None
            return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        def send() -> None:
            from mlflow.entities import Param

            items = [Param(k, _text(v, PARAM_VALUE_MAX)) for k, v in params.items()]
            for i in range(0, len(items), BATCH_PARAMS):
                self._client.log_batch(self.run_id, params=items[i : i + BATCH_PARAMS])

        self._call("log params", send)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        def send() -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, step) for k, v in metrics.items() if _number(v) is not None]
            for i in range(0, len(items), BATCH_METRICS):
                self._client.log_batch(self.run_id, metrics=items[i : i + BATCH_METRICS])

        self._call("log metrics", send)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        def send() -> None:
            from mlflow.entities import RunTag

            items = [RunTag(k, _text(v, TAG_VALUE_MAX)) for k, v in tags.items() if v is not None]
            for i in range(0, len(items), BATCH_PARAMS):
                self._client.log_batch(self.run_id, tags=items[i : i + BATCH_PARAMS])

        self._call("set tags", send)

    def log_files(self, root: Path, files: Sequence[str] = ARTIFACT_FILES, dirs: Sequence[str] = ARTIFACT_DIRS) -> None:
        """Copy the named files and folders of ``root`` (a bundle) into the run's artifacts, keeping their paths."""

        def send() -> None:
            with tempfile.TemporaryDirectory(prefix="readmit-mlflow-") as tmp:
                staged = Path(tmp)
                for name in files:
                    if (root / name).is_file():
                        shutil.copy2(root / name, staged / name)
                for name in dirs:
                    if (root / name).is_dir():
                        shutil.copytree(root / name, staged / name)
                self._client.log_artifacts(self.run_id, str(staged))

        self._call("log artifacts", send)

    def log_dataset(self, name: str, sha256: str, rows: int, source: str) -> None:
        """The data set as the run's input (the UI's "Datasets used"): its content sha256 and row count."""

        def send() -> None:
            from mlflow.entities import Dataset, DatasetInput, InputTag

            dataset = Dataset(
                name=name,
                digest=sha256[:DIGEST_MAX],  # the full sha256 is the param data.sha256
                source_type="local",
                source=json.dumps({"uri": source}),
                profile=json.dumps({"num_rows": rows, "sha256": sha256}),
            )
            self._client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])

        self._call("log dataset", send)

    def rename(self, name: str) -> None:
        self._call("rename run", lambda: self._client.update_run(self.run_id, name=name))

    def child(
        self, name: str, params: Mapping[str, Any], metrics: Mapping[str, float], tags: Mapping[str, Any] | None = None
    ) -> str | None:
        """A nested run under this one, logged and finished at once (one tuning trial); its run id, or None."""
        if not self.active:
            return None

        def create() -> str:
            run = self._client.create_run(
                self.experiment_id, run_name=name, tags={TAG_PARENT: self.run_id, **(tags or {})}
            )
            return run.info.run_id

        child_id = self._call("start a nested run", create)
        if child_id is None:
            return None
        nested = Run(self._client, child_id, self.settings)
        nested.experiment_id = self.experiment_id
        nested.log_params(params)
        nested.log_metrics(metrics)
        nested._call("end a nested run", self._client.set_terminated, child_id, "FINISHED")
        if not nested.active:  # a failure inside the child stops tracking for the parent too
            self.run_id = None
            return None
        return child_id

    def log_training(
        self,
        *,
        config: Any,
        meta: Mapping[str, Any],
        metrics: Mapping[str, Any],
        bundle_dir: Path,
        data_path: Path,
        fold_aucs: Sequence[float] | None = None,
    ) -> None:
        """Everything a training run records: the configuration, the chosen calibration, the data fingerprint,
        the metrics, the bundle's version and code version as tags, and the card and plots as artifacts."""
        if not self.active:
            return
        data = meta.get("data") or {}
        config_values = (
            dataclasses.asdict(config)
            if dataclasses.is_dataclass(config) and not isinstance(config, type)  # an instance, not the class
            else dict(config)
        )
        params = flat_params(config_values)
        params["calibration.method"] = str((meta.get("calibration") or {}).get("method", ""))
        fingerprint = ("sha256", "rows", "invalid_rows", "cohort_rows", "train_rows")
        params.update(flat_params({k: data[k] for k in fingerprint if k in data}, "data."))
        self.log_params(params)
        values = training_metrics(metrics, fold_aucs)
        counts = {f"data.{k}": _number(data.get(k)) for k in ("rows", "cohort_rows", "train_rows")}
        values.update({k: v for k, v in counts.items() if v is not None})
        self.log_metrics(values)
        self.set_tags(
            {
                TAG_VERSION: meta.get("version"),
                TAG_CODE_VERSION: meta.get("code_version"),
                TAG_GIT_COMMIT: git_commit(),
                "readmit.evaluation": meta.get("evaluation"),
                "data.sha256": data.get("sha256"),
            }
        )
        if data.get("sha256"):
            self.log_dataset(Path(data_path).name, data["sha256"], int(data.get("rows", 0)), str(data_path))
        self.log_files(bundle_dir)
        if meta.get("version"):
            self.rename(str(meta["version"]))


def _warn(message: str) -> None:
    warnings.warn(message, TrackingWarning, stacklevel=3)


def _client(tracking: TrackingSettings) -> tuple[Any, str]:
    """An MlflowClient for the settings and the experiment's id (created on first use); raises when the store
    cannot be reached."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.uri)
    with _probe_env():
        experiment = client.get_experiment_by_name(tracking.experiment)
        if experiment is not None:
            return client, experiment.experiment_id
        try:
            return client, client.create_experiment(tracking.experiment, artifact_location=tracking.artifact_location)
        except Exception:  # created meanwhile by another process: use theirs
            experiment = client.get_experiment_by_name(tracking.experiment)
            if experiment is None:
                raise
            return client, experiment.experiment_id


def open_run(name: str, tracking: TrackingSettings | None = None, tags: Mapping[str, Any] | None = None) -> Run:
    """Start a run (finish it with ``close_run``); a null run, after one warning, when tracking cannot start."""
    tracking = tracking or TrackingSettings.from_env()
    if not tracking.enabled:
        return Run()
    try:
        client, experiment_id = _client(tracking)
        started = client.create_run(
            experiment_id, run_name=name, tags={k: _text(v, TAG_VALUE_MAX) for k, v in (tags or {}).items() if v}
        )
    except ImportError as exc:
        _warn(f"MLflow tracking is off: MLflow is not installed ({exc}); training continues")
        return Run()
    except Exception as exc:  # unreachable server, bad credentials, a broken database: train untracked
        reason = f"{type(exc).__name__}: {exc}"
        _warn(f"MLflow tracking is off: {tracking.uri} cannot be used ({reason}); training continues")
        return Run()
    run = Run(client, started.info.run_id, tracking)
    run.experiment_id = experiment_id
    return run


def close_run(run: Run, failed: bool = False) -> None:
    run._call("end the run", lambda: run._client.set_terminated(run.run_id, "FAILED" if failed else "FINISHED"))


@contextlib.contextmanager
def run(name: str, tracking: TrackingSettings | None = None, tags: Mapping[str, Any] | None = None) -> Iterator[Run]:
    """``with tracking.run("tune") as parent: parent.child(...)``: the run ends FINISHED, or FAILED when the body
    raises (the exception goes on)."""
    current = open_run(name, tracking, tags)
    try:
        yield current
    except BaseException:
        close_run(current, failed=True)
        raise
    close_run(current)


def run_reference(meta: Mapping[str, Any]) -> dict[str, str] | None:
    """The MLflow run a bundle's metadata (model.json) names, or None (tracking was off, or an older bundle)."""
    ref = meta.get(META_KEY)
    return ref if isinstance(ref, dict) and ref.get("run_id") else None


def record_registration(
    registry: Any,
    version: str,
    meta: Mapping[str, Any],
    *,
    model_package_arn: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> str | None:
    """After ``version`` is registered: the registry version records the MLflow run id (``Registry.annotate``) and
    the run gets the registry version, the registry's URI and, when there is one, the SageMaker model package ARN
    as tags. Returns the run id, or None when the bundle names no run. Tagging uses the tracking URI the bundle
    recorded (where the run is) unless ``READMIT_MLFLOW_TRACKING_URI`` says off here; a tagging failure warns."""
    ref = run_reference(meta)
    if ref is None:
        return None
    metadata = {"mlflow_run_id": ref["run_id"]}
    if ref.get("experiment_id"):
        metadata["mlflow_experiment_id"] = ref["experiment_id"]
    registry.annotate(version, **metadata)
    here = TrackingSettings.from_env(env)
    if not here.enabled:
        return ref["run_id"]
    tags = {
        TAG_REGISTRY_VERSION: version,
        TAG_REGISTRY_URI: getattr(getattr(registry, "storage", None), "uri", None),
        TAG_MODEL_PACKAGE_ARN: model_package_arn,
    }
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=ref["tracking_uri"])
    except Exception as exc:
        _warn(f"MLflow run {ref['run_id']} not tagged with its registry version: {type(exc).__name__}: {exc}")
        return ref["run_id"]
    tagged = Run(client, ref["run_id"], here)
    with _probe_env():  # one call: an unreachable server costs seconds, not MLflow's retries
        tagged.set_tags(tags)
    return ref["run_id"]
