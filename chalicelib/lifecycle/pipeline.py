"""What the retraining workflow's Lambda functions do, given their event (handlers in functions/ only parse,
call these and return). Events and results are the state machine's JSON; the promote and reject functions also
take SageMaker's "Model Package State Change" events (EventBridge), which a person's approval or rejection sends."""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from chalicelib.core.settings import (
    ENV_MODEL_PACKAGE_GROUP,
    ENV_PREDICTION_LOG,
    ENV_PROMOTION_POLICY,
    ENV_REGISTRY,
    PROMOTION_POLICIES,
    env_name,
    promotion_policy,
    raw,
)
from chalicelib.core.storage import open_storage
from chalicelib.lifecycle.errors import AwaitingApproval, GateNotPassed, InvalidGateSetting, ModelRefused
from chalicelib.lifecycle.promotion import (
    TRIGGERS,
    Decision,
    ShadowNotReady,
    apply_decision,
    promote_approved,
    record_candidate,
    shadow_required,
)
from chalicelib.lifecycle.sagemaker_jobs import TrainingJobs, TrainingSettings, job_name
from chalicelib.model import tracking
from chalicelib.registry import sagemaker as sm
from chalicelib.registry.model_check import InvalidModel
from chalicelib.registry.registry import GATE, REJECTED, SHADOW, Registry

if TYPE_CHECKING:
    from chalicelib.lifecycle.gate import GateConfig

DEFAULT_SEED = 20260601  # = TrainConfig.seed (not imported: the light steps must not import the training stack)
# The stack's gate thresholds (template parameters GateMinAuc, GateMaxAucDrop, GateMaxEce), set on the evaluate
# step so that every execution is judged by them, including one started without a `gate` (`readmit retrain
# --remote`, a console StartExecution); an execution's `gate` still overrides them field by field.
GATE_ENV = {field: env_name(f"gate_{field}") for field in ("min_auc", "max_auc_drop", "max_ece")}


class RetrainInput(BaseModel):
    """The execution input (EventBridge rules and `readmit retrain --remote` send it)."""

    trigger: str = Field(pattern="^(" + "|".join(TRIGGERS) + ")$")
    data_uri: str = Field(pattern="^s3://")
    registry_uri: str
    eval_frac: float = Field(default=0.2, gt=0, lt=1)
    seed: int = DEFAULT_SEED
    execution_name: str = "manual"
    gate: dict[str, Any] = Field(default_factory=dict)
    # An execution may ask for manual approval; it cannot loosen the stack's PromotionPolicy (effective_policy).
    policy: str | None = Field(default=None, pattern="^(" + "|".join(PROMOTION_POLICIES) + ")$")


def effective_policy(requested: str | None, env: Mapping[str, str] = os.environ) -> str:
    """The stack's policy ($READMIT_PROMOTION_POLICY), or manual when the execution asks for it: an execution
    input can add a person's approval, never skip one the stack requires."""
    stack = promotion_policy(env.get(ENV_PROMOTION_POLICY) or None)
    return "manual" if "manual" in (stack, requested) else "auto"


def start_training(event: dict[str, Any], jobs: TrainingJobs | None = None) -> dict[str, Any]:
    run = RetrainInput.model_validate(event)
    jobs = jobs or TrainingJobs(TrainingSettings.from_env())
    # The job holds out the same patients the evaluation step scores both models on. The name derives from the
    # execution, so a retried start finds the job it already made (TrainingJobs.start).
    name = jobs.start(
        job_name(run.execution_name, run.trigger), run.data_uri, {"holdout_frac": run.eval_frac, "seed": run.seed}
    )
    return {"job_name": name}


class TrainingRef(BaseModel):
    job_name: str = Field(min_length=1, max_length=63)  # botocore's TrainingJobName


class CheckTrainingInput(BaseModel):
    """The check step's input: StartTraining's result under ``training`` (an invalid one is an InvalidEvent at
    the handler, which the state machine does not retry)."""

    training: TrainingRef


def check_training(event: dict[str, Any], jobs: TrainingJobs | None = None) -> dict[str, Any]:
    ref = CheckTrainingInput.model_validate(event).training
    jobs = jobs or TrainingJobs()  # polling needs no training settings (the step has none in template.yaml)
    return jobs.status(ref.job_name)


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
    from chalicelib.lifecycle.gate import GateConfig

    stack: dict[str, Any] = {}
    for field, name in GATE_ENV.items():
        if env.get(name):
            try:
                stack[field] = float(env[name])
            except ValueError:
                raise InvalidGateSetting(f"{name}={env[name]!r} is not a number") from None
    return GateConfig.from_dict({**stack, **gate})


def evaluate(event: dict[str, Any], s3_client: Any = None, sagemaker_client: Any = None) -> dict[str, Any]:
    """Register the trained challenger, gate it against the champion on the shared evaluation set, and record the
    candidate: its metrics document, its model package in $READMIT_MODEL_PACKAGE_GROUP (approval status from the
    gate and the policy) and, under the manual policy, its pending state."""
    import json

    from chalicelib.lifecycle.retrain import cv_summary, evaluate_challenger, evaluation_set
    from chalicelib.model.bundle import ModelBundle

    run = RetrainInput.model_validate({k: v for k, v in event.items() if k in RetrainInput.model_fields})
    policy = effective_policy(run.policy)
    registry = Registry.open(run.registry_uri, s3_client=s3_client)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        archive = _fetch(event["training"]["model_artifact"], work / "model.tar.gz", s3_client)
        bundle_dir = work / "bundle"
        with tarfile.open(archive) as tar:
            tar.extractall(bundle_dir, filter="data")
        try:  # loads and scores it in a separate process first (model_check)
            version = registry.register(bundle_dir)
        except InvalidModel as exc:
            raise ModelRefused(str(exc)) from exc
        meta = json.loads((bundle_dir / "model.json").read_text())
        challenger = ModelBundle.load(bundle_dir)
        metrics_file = bundle_dir / "metrics.json"
        cv = cv_summary(json.loads(metrics_file.read_text())) if metrics_file.is_file() else {}
        data = _fetch(run.data_uri, work / Path(run.data_uri).name, s3_client)
        decision = evaluate_challenger(
            registry, challenger, evaluation_set(data, run.eval_frac, run.seed), gate_config(run.gate)
        )
    champion = registry.champion()
    group = raw(ENV_MODEL_PACKAGE_GROUP)
    recorded = record_candidate(
        registry,
        version,
        decision,
        trigger=run.trigger,
        policy=policy,
        champion=champion,
        packages=sm.ModelPackages(group, sagemaker_client) if group else None,
        artifact_uri=event["training"]["model_artifact"],
        image=raw(env_name("training_image")),
        cv=cv,
        mlflow_run_id=(tracking.run_reference(meta) or {}).get("run_id"),
    )
    tracking.record_registration(registry, version, meta, model_package_arn=recorded.get("model_package_arn"))
    return {"challenger_version": version, "champion_version": champion, **decision.to_dict(), **recorded}


def _decision(event: dict[str, Any]) -> Decision:
    d = event["decision"]
    return Decision(d["promote"], d["reasons"], d["challenger"], d.get("champion"), d.get("churn"), d.get("config", {}))


def promote(event: dict[str, Any], s3_client: Any = None, sagemaker_client: Any = None) -> dict[str, Any]:
    """Promote the gate's winner (the workflow's Promote step, policy auto) or an approved model package (SageMaker's
    state change event). Either way a separate process first loads and scores the stored model (model_check): a
    model that would crash the API is refused, the rejection recorded, and the champion stays."""
    if sm.is_package_event(event):
        return promote_package(event, s3_client, sagemaker_client)
    registry = Registry.open(event["registry_uri"], s3_client=s3_client)
    decision = _decision(event)
    if not decision.promote:
        raise GateNotPassed("promote called for a decision that did not pass the gate")
    if event["decision"].get("approval") == sm.PENDING_MANUAL_APPROVAL:
        raise AwaitingApproval("promote called for a candidate pending manual approval: a person approves it first")
    version = event["decision"]["challenger_version"]
    try:
        champion = apply_decision(registry, version, decision, trigger=event["trigger"], champion=registry.champion())
    except InvalidModel as exc:
        _reject_package(registry, version, f"refused at promotion: {exc}", sagemaker_client)
        raise ModelRefused(str(exc)) from exc
    return {"champion": champion, "promoted": version}


def reject(event: dict[str, Any], s3_client: Any = None, sagemaker_client: Any = None) -> dict[str, Any]:
    """Record the rejection and its reasons (the workflow's Reject step, or a rejected model package's state change
    event); the champion stays as it is."""
    if sm.is_package_event(event):
        return reject_package(event, s3_client, sagemaker_client)
    registry = Registry.open(event["registry_uri"], s3_client=s3_client)
    decision = _decision(event)
    decision.promote = False  # whatever the input claims, this step never promotes
    version = event["decision"]["challenger_version"]
    champion = apply_decision(registry, version, decision, trigger=event["trigger"], champion=registry.champion())
    return {"champion": champion, "rejected": version}


def _package_change(event: dict[str, Any], sagemaker_client: Any) -> tuple[sm.ModelPackages, sm.Package]:
    """The event's model package as DescribeModelPackage says it is now: SageMaker may send several events per
    change, so the event says which package to look at, not what to do."""
    detail = sm.ModelPackageStateChange.model_validate(event).detail
    packages = sm.ModelPackages(detail.ModelPackageGroupName, sagemaker_client)
    return packages, packages.describe(detail.ModelPackageArn)


def _package_registry(package: sm.Package, s3_client: Any) -> tuple[Registry, str]:
    """The registry (the stack's $READMIT_REGISTRY, else the one the package names) and the package's version."""
    uri = raw(ENV_REGISTRY) or package.registry_uri
    if not uri or not package.version:
        raise sm.PackageError(f"{package.arn} names no readmit version or registry (CustomerMetadataProperties)")
    return Registry.open(uri, s3_client=s3_client), package.version


def _not_ours(package: Any, status: str, workflow: str) -> dict[str, Any] | None:
    """Why an event is skipped: the package has moved on since (events repeat and arrive late), or its status was
    the gate's own at creation (the state machine acts on it); None when the event is this function's to act on."""
    if package.status != status:
        return {"skipped": f"the package is now {package.status}", "model_package": package.arn}
    if package.set_at_creation:
        verb = "approved" if status == sm.APPROVED else "rejected"
        return {"skipped": f"{verb} by the gate at creation: {workflow}"}
    return None


def promote_package(event: dict[str, Any], s3_client: Any = None, sagemaker_client: Any = None) -> dict[str, Any]:
    """An approved model package becomes the champion, once: a repeated event or a re-approval of the champion is
    a no-op. A status set when the package was created (policy auto) is left to the workflow's Promote step."""
    packages, package = _package_change(event, sagemaker_client)
    if skipped := _not_ours(package, sm.APPROVED, "the workflow's Promote step promotes it"):
        return skipped
    registry, version = _package_registry(package, s3_client)
    reason = package.approval_description or "approved in SageMaker"
    log = None
    if shadow_required():  # the promotion rule counts the version's shadow requests in the delivered log
        from chalicelib.core.audit import open_prediction_log

        log = open_prediction_log(raw(ENV_PREDICTION_LOG), s3_client)
    try:
        changed = promote_approved(registry, version, reason=reason, by=package.by, log=log)
    except ShadowNotReady as exc:  # approved; it runs in shadow until the rule is met, then a person promotes it
        if registry.get_alias(SHADOW) != version:
            registry.set_alias(SHADOW, version, f"approved by {package.by}; in shadow before promotion", event="shadow")
        return {"champion": registry.champion(), "shadow": version, "waiting": str(exc)}
    except InvalidModel as exc:  # refused: recorded, and SageMaker told, so the package is not left Approved
        registry.reject(version, f"approved by {package.by} but {exc}", by=GATE)
        packages.set_status(package.arn, sm.REJECTED, f"refused at promotion: {exc}")
        return {"champion": registry.champion(), "refused": version, "reason": str(exc)}
    return {"champion": registry.champion(), "promoted": version, "changed": changed}


def reject_package(event: dict[str, Any], s3_client: Any = None, sagemaker_client: Any = None) -> dict[str, Any]:
    """A person's rejection in SageMaker lands in the registry history with who and why (once). A status set when
    the package was created (the gate failed it) is left to the workflow's Reject step, which records the reasons."""
    _, package = _package_change(event, sagemaker_client)
    if skipped := _not_ours(package, sm.REJECTED, "the workflow's Reject step records it"):
        return skipped
    registry, version = _package_registry(package, s3_client)
    changed = registry.state(version) != REJECTED
    if changed:
        registry.reject(version, package.approval_description or "rejected in SageMaker", by=package.by)
    return {"champion": registry.champion(), "rejected": version, "changed": changed}


def _reject_package(registry: Registry, version: str, reason: str, sagemaker_client: Any) -> None:
    """Tell SageMaker a candidate was refused, when it has a model package (so it is not left Approved)."""
    meta = registry.metadata(version)
    if meta.get("model_package_arn") and meta.get("model_package_group"):
        sm.ModelPackages(meta["model_package_group"], sagemaker_client).set_status(
            meta["model_package_arn"], sm.REJECTED, reason
        )
