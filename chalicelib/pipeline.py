"""What the retraining workflow's Lambda functions do, given their event (handlers in functions/ only parse,
call these and return). Events and results are the state machine's JSON."""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from .promotion import TRIGGERS, Decision, apply_decision
from .registry import Registry
from .sagemaker_jobs import TrainingJobs, TrainingSettings, job_name
from .storage import open_storage

if TYPE_CHECKING:
    from .gate import GateConfig

DEFAULT_SEED = 20260601  # = TrainConfig.seed (not imported: the light steps must not import the training stack)
# The stack's gate thresholds (template parameters GateMinAuc, GateMaxAucDrop, GateMaxEce), set on the evaluate
# step so that every execution is judged by them, including one started without a `gate` (`readmit retrain
# --remote`, a console StartExecution); an execution's `gate` still overrides them field by field.
GATE_ENV = {
    "min_auc": "READMIT_GATE_MIN_AUC",
    "max_auc_drop": "READMIT_GATE_MAX_AUC_DROP",
    "max_ece": "READMIT_GATE_MAX_ECE",
}


class RetrainInput(BaseModel):
    """The execution input (EventBridge rules and `readmit retrain --remote` send it)."""

    trigger: str = Field(pattern="^(" + "|".join(TRIGGERS) + ")$")
    data_uri: str = Field(pattern="^s3://")
    registry_uri: str
    eval_frac: float = Field(default=0.2, gt=0, lt=1)
    seed: int = DEFAULT_SEED
    execution_name: str = "manual"
    gate: dict[str, Any] = Field(default_factory=dict)


def start_training(event: dict[str, Any], jobs: TrainingJobs | None = None) -> dict[str, Any]:
    run = RetrainInput.model_validate(event)
    jobs = jobs or TrainingJobs(TrainingSettings.from_env())
    # The job holds out the same patients the evaluation step scores both models on. The name derives from the
    # execution, so a retried start finds the job it already made (TrainingJobs.start).
    name = jobs.start(
        job_name(run.execution_name, run.trigger), run.data_uri, {"holdout_frac": run.eval_frac, "seed": run.seed}
    )
    return {"job_name": name}


def check_training(event: dict[str, Any], jobs: TrainingJobs | None = None) -> dict[str, Any]:
    jobs = jobs or TrainingJobs()  # polling needs no training settings (the step has none in template.yaml)
    return jobs.status(event["training"]["job_name"])


def _fetch(uri: str, dest: Path, s3_client: Any = None) -> Path:
    """Copy an s3:// object (or a local file) to ``dest``."""
    if uri.startswith("s3://"):
        bucket_prefix, _, key = uri[len("s3://") :].partition("/")
        folder, _, name = key.rpartition("/")
        storage = open_storage(f"s3://{bucket_prefix}/{folder}" if folder else f"s3://{bucket_prefix}", s3_client)
        dest.write_bytes(storage.read_bytes(name))
    else:
        dest.write_bytes(Path(uri).read_bytes())
    return dest


def gate_config(gate: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> GateConfig:
    """The gate for one execution: the code's defaults, then the stack's thresholds from the environment, then
    the execution's own ``gate``, each overriding the one before field by field."""
    from .gate import GateConfig

    stack: dict[str, Any] = {}
    for field, name in GATE_ENV.items():
        if env.get(name):
            try:
                stack[field] = float(env[name])
            except ValueError:
                raise ValueError(f"{name}={env[name]!r} is not a number") from None
    return GateConfig.from_dict({**stack, **gate})


def evaluate(event: dict[str, Any], s3_client: Any = None) -> dict[str, Any]:
    """Register the trained challenger, gate it against the champion on the shared evaluation set."""
    from .bundle import ModelBundle
    from .retrain import evaluate_challenger, evaluation_set

    run = RetrainInput.model_validate({k: v for k, v in event.items() if k in RetrainInput.model_fields})
    registry = Registry.open(run.registry_uri, s3_client=s3_client)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        archive = _fetch(event["training"]["model_artifact"], work / "model.tar.gz", s3_client)
        bundle_dir = work / "bundle"
        with tarfile.open(archive) as tar:
            tar.extractall(bundle_dir, filter="data")
        version = registry.register(bundle_dir)  # loads and scores it in a separate process first (model_check)
        challenger = ModelBundle.load(bundle_dir)
        data = _fetch(run.data_uri, work / Path(run.data_uri).name, s3_client)
        decision = evaluate_challenger(
            registry, challenger, evaluation_set(data, run.eval_frac, run.seed), gate_config(run.gate)
        )
    return {"challenger_version": version, "champion_version": registry.champion(), **decision.to_dict()}


def _decision(event: dict[str, Any]) -> Decision:
    d = event["decision"]
    return Decision(d["promote"], d["reasons"], d["challenger"], d.get("champion"), d.get("churn"), d.get("config", {}))


def promote(event: dict[str, Any], s3_client: Any = None) -> dict[str, Any]:
    """Promote the gate's winner once a separate process has loaded and scored its stored model (model_check):
    a model that would crash the API is refused (InvalidModel, the rejection recorded) and the champion stays."""
    registry = Registry.open(event["registry_uri"], s3_client=s3_client)
    decision = _decision(event)
    if not decision.promote:
        raise ValueError("promote called for a decision that did not pass the gate")
    version = event["decision"]["challenger_version"]
    champion = apply_decision(registry, version, decision, trigger=event["trigger"], champion=registry.champion())
    return {"champion": champion, "promoted": version}


def reject(event: dict[str, Any], s3_client: Any = None) -> dict[str, Any]:
    """Record the rejection and its reasons; the champion stays as it is."""
    registry = Registry.open(event["registry_uri"], s3_client=s3_client)
    decision = _decision(event)
    decision.promote = False  # whatever the input claims, this step never promotes
    version = event["decision"]["challenger_version"]
    champion = apply_decision(registry, version, decision, trigger=event["trigger"], champion=registry.champion())
    return {"champion": champion, "rejected": version}
