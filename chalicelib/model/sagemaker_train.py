"""SageMaker training entry point: the same `train()` as `readmit train`, wired to SageMaker's folders.

Our image (deploy/training/Dockerfile) has ``ENTRYPOINT ["python", "-m", "chalicelib.model.sagemaker_train"]`` and
SageMaker runs a bring-your-own training image as ``docker run IMAGE train``, without the sagemaker-training
toolkit, so no ``SM_*`` variables are set: the container reads the documented files instead
(https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-algo-running-container.html):

- ``/opt/ml/input/config/hyperparameters.json``: CreateTrainingJob's HyperParameters, every value a string;
- ``/opt/ml/input/data/train/``: the ``train`` channel's files (File input mode);

and writes the bundle flat into ``/opt/ml/model`` (packed into model.tar.gz, so the registry takes it as is) and
other output to ``/opt/ml/output/data``
(https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-algo-output.html). On failure it writes
the reason to ``/opt/ml/output/failure`` and exits non-zero: SageMaker then reports the job Failed with that
reason (https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-signal-success-failure.html).

When a framework image's toolkit runs it (``python chalicelib/model/sagemaker_train.py``), the toolkit's variables win:
``SM_CHANNEL_TRAIN``, ``SM_MODEL_DIR``, ``SM_OUTPUT_DATA_DIR``, ``SM_OUTPUT_DIR`` and ``SM_HPS`` (JSON).
``READMIT_ML_ROOT`` replaces ``/opt/ml``: for tests only (SageMaker always mounts ``/opt/ml``).

The run is tracked in MLflow only when the job's Environment names a tracking server (``READMIT_MLFLOW_TRACKING_URI``:
the stack's ``MlflowTrackingServerArn``); ``READMIT_TRAINING_JOB_NAME`` tags the run with the job.

Up to the Python check below this module runs on any Python 3: an image with the wrong Python then fails with a
FailureReason that says so, not with a TypeError from deep inside the training stack (``slots=True`` on 3.9).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

REQUIRES_PYTHON = (3, 11)  # = pyproject.toml's requires-python (tests/test_sagemaker_container.py checks it)
# Literal, not settings.ENV_ML_ROOT: up to the Python check this module imports only the standard library (the
# variable is declared in chalicelib/core/settings.py; tests/test_settings.py checks the two agree).
ML_ROOT_ENV = "READMIT_ML_ROOT"  # test only
DEFAULT_ML_ROOT = "/opt/ml"
COMMAND = "train"  # SageMaker's argument to a training image
CHANNEL = "train"  # the channel name chalicelib/lifecycle/sagemaker_jobs.py gives CreateTrainingJob
FAILURE_LIMIT = 1024  # DescribeTrainingJob's FailureReason: max 1024 (botocore data/sagemaker/2017-07-24)
DATA_SUFFIXES = (".zip", ".csv", ".gz")
# Hyperparameters SageMaker, its SDK or a tuning job may add on their own (sagemaker_program, _tuning_objective_metric).
RESERVED_PREFIXES = ("sagemaker_", "_")


def ml_root(env: Mapping[str, str]) -> Path:
    return Path(env.get(ML_ROOT_ENV) or DEFAULT_ML_ROOT)


def write_failure(env: Mapping[str, str], reason: str) -> None:
    """Leave the reason where SageMaker looks for it; a failure to do so must not mask the original error."""
    path = Path(env.get("SM_OUTPUT_DIR") or ml_root(env) / "output") / "failure"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(reason[:FAILURE_LIMIT])
    except OSError as exc:
        print(f"could not write {path}: {exc}", file=sys.stderr)


def _refuse_old_python() -> None:
    if tuple(sys.version_info[:2]) >= REQUIRES_PYTHON:
        return
    need, have = ".".join(map(str, REQUIRES_PYTHON)), ".".join(map(str, sys.version_info[:3]))
    reason = (
        f"readmit needs Python >= {need}, this image runs Python {have}: "
        "use the image built from deploy/training/Dockerfile (make training-image)"
    )
    if __name__ == "__main__":
        print(reason, file=sys.stderr)
        write_failure(os.environ, reason)
        sys.exit(1)
    raise ImportError(reason)


_refuse_old_python()

if __package__ in (None, ""):  # run as a script: make `chalicelib` importable from the source dir
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pydantic import BaseModel, ConfigDict, Field, ValidationError  # noqa: E402 - after the Python check

from chalicelib.core import settings as app_settings  # noqa: E402
from chalicelib.model import tracking  # noqa: E402
from chalicelib.model.train import DEFAULT_TREES, TrainConfig, train  # noqa: E402

# Set on the job's Environment by chalicelib/lifecycle/sagemaker_jobs.py (CreateTrainingJob Environment: at most 100
# variables, values up to 512 characters; botocore shape TrainingEnvironmentMap). No tracking URI means no
# tracking here: a job's container has no local store worth writing to.
ENV_JOB_NAME = app_settings.ENV_TRAINING_JOB_NAME


class HyperParameters(BaseModel):
    """What the pipeline sends (chalicelib/lifecycle/pipeline.py: holdout_frac, seed) and tests
    use; values arrive as strings
    in hyperparameters.json and as JSON values in SM_HPS, and lax mode parses both."""

    model_config = ConfigDict(extra="forbid")

    n_estimators: int = Field(DEFAULT_TREES, ge=1)
    folds: int = Field(TrainConfig.folds, ge=2)
    holdout_frac: float = Field(0.0, ge=0, lt=1)
    seed: int = Field(TrainConfig.seed, ge=0)  # also the holdout split's seed: the gate re-draws it with this one
    baselines: bool = True

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            n_estimators=self.n_estimators,
            folds=self.folds,
            holdout_frac=self.holdout_frac,
            seed=self.seed,
            baselines=self.baselines,
        )


class HyperParameterError(ValueError):
    """A hyperparameter that is unknown or does not parse; the message names it."""


def parse_hyperparameters(raw: Mapping[str, object]) -> HyperParameters:
    given = {k: v for k, v in raw.items() if not k.startswith(RESERVED_PREFIXES)}
    try:
        return HyperParameters.model_validate(given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(part) for part in err["loc"])
            if err["type"] == "extra_forbidden":
                known = ", ".join(HyperParameters.model_fields)
                problems.append(f"unknown hyperparameter {name!r} (known: {known})")
            else:
                problems.append(f"bad hyperparameter {name}={given.get(name)!r}: {err['msg']}")
        raise HyperParameterError("; ".join(problems)) from None


def read_hyperparameters(env: Mapping[str, str]) -> dict[str, object]:
    """SM_HPS (the toolkit's JSON) if set, else the container's hyperparameters.json, else none."""
    if env.get("SM_HPS"):
        return json.loads(env["SM_HPS"])
    path = ml_root(env) / "input" / "config" / "hyperparameters.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def tracking_config(env: Mapping[str, str]) -> tuple[tracking.TrackingSettings, dict[str, str]]:
    """MLflow settings and run tags for a job: the tracking server the job names (READMIT_MLFLOW_TRACKING_URI,
    the stack's MlflowTrackingServerArn) or none; tagged with the job's name when it is known."""
    tags = {tracking.TAG_SOURCE: "sagemaker"}
    if job := app_settings.Settings.from_env(env).training_job_name:
        tags["sagemaker.training_job"] = job
    return tracking.TrackingSettings.from_env(env, local_default=False), tags


def find_input(channel: Path) -> Path:
    files = sorted(p for p in channel.rglob("*") if p.is_file() and p.name.lower().endswith(DATA_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no .zip/.csv/.csv.gz in the training channel {channel}")
    return files[0]


def main(env: Mapping[str, str] = os.environ) -> Path:
    """Train from the channel into the model dir; raises on any problem (cli() turns it into the failure file)."""
    import shutil

    root = ml_root(env)
    channel = Path(env.get("SM_CHANNEL_TRAIN") or root / "input" / "data" / CHANNEL)
    model_dir = Path(env.get("SM_MODEL_DIR") or root / "model")
    output_dir = Path(env.get("SM_OUTPUT_DATA_DIR") or root / "output" / "data")
    cfg = parse_hyperparameters(read_hyperparameters(env)).train_config()
    settings, tags = tracking_config(env)
    result = train(
        find_input(channel),
        output_dir / "bundles",
        cfg,
        progress=lambda m: print(m, flush=True),
        tracking_settings=settings,
        run_tags=tags,
    )
    model_dir.mkdir(parents=True, exist_ok=True)
    for item in result.bundle_dir.iterdir():
        target = model_dir / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    run = {"version": result.version, "seed": cfg.seed, "holdout_frac": cfg.holdout_frac}
    if ref := tracking.run_reference(result.meta):
        run["mlflow_run_id"] = ref["run_id"]
    (output_dir / "summary.json").write_text(json.dumps({**run, **result.meta["summary"]}))
    # SageMaker reads metrics from the log with the training job's MetricDefinitions regexes: keep this format.
    print(f"readmit-metric roc_auc={result.meta['summary']['roc_auc']:.5f} ece={result.meta['summary']['ece']:.5f}")
    return model_dir


def cli(argv: list[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    """The process: ``train`` (SageMaker's argument to our image), or the toolkit's ``--name value`` arguments
    (a copy of SM_HPS, which is what is read). Exit code 0 = Completed, anything else = Failed."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if args and args[0] != COMMAND and not args[0].startswith("--"):
            raise ValueError(f"unknown command {args[0]!r}: SageMaker runs a training image with {COMMAND!r}")
        main(env)
    except Exception as exc:
        traceback.print_exc()
        write_failure(env, f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
