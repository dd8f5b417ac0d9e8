"""Promotion, approval and rejection: the only place the champion changes, with who, why and when recorded.

After the gate a candidate is recorded (``record_candidate``: its metrics document, its SageMaker model package when
the registry has a group, and under the ``manual`` policy the pending state). Under ``auto`` the gate's verdict is
applied at once (``apply_decision``: today's behaviour); under ``manual`` a person approves (``approve``) and the
promote step (``promote_approved``) moves the champion. On AWS a person's approval is SageMaker's
``UpdateModelPackage``; its state change event runs the promote function, which calls ``promote_approved``.

Light on purpose (registry only, no numpy, pandas or scikit-learn): the promote and reject Lambdas import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from chalicelib.core.settings import PROMOTION_POLICIES
from chalicelib.registry import sagemaker as sm
from chalicelib.registry.model_check import InvalidModel
from chalicelib.registry.registry import APPROVED, GATE, REJECTED, SHADOW, Registry, RegistryError
from chalicelib.registry.sagemaker import ModelPackages

TRIGGERS = ("schedule", "drift", "manual")


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    challenger: dict[str, Any]
    champion: dict[str, Any] | None
    churn: float | None  # share of patients whose risk tier would change (reported, not gating)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def approval_status(decision: Decision, policy: str) -> str:
    """The SageMaker ModelApprovalStatus the gate sets: Approved (auto), PendingManualApproval (manual) or
    Rejected (the gate failed, whatever the policy)."""
    if policy not in PROMOTION_POLICIES:
        raise ValueError(f"promotion policy must be one of {PROMOTION_POLICIES}, got {policy!r}")
    if not decision.promote:
        return sm.REJECTED
    return sm.APPROVED if policy == "auto" else sm.PENDING_MANUAL_APPROVAL


def _summary(decision: Decision) -> str:
    return "; ".join(r for r in decision.reasons if "not gating" not in r)


def record_candidate(
    registry: Registry,
    version: str,
    decision: Decision,
    *,
    trigger: str,
    policy: str,
    champion: str | None = None,
    packages: ModelPackages | None = None,
    artifact_uri: str | None = None,
    image: str | None = None,
    cv: dict[str, Any] | None = None,
    mlflow_run_id: str | None = None,
) -> dict[str, Any]:
    """After the gate: store the metrics document (holdout, CV, subgroups, the verdict), create the SageMaker model
    package when ``packages`` is given, and under the manual policy mark a passing candidate pending. Returns
    {approval, policy, metrics_uri, model_package_arn?} for the workflow's next steps."""
    status = approval_status(decision, policy)
    doc = {
        "version": version,
        "trigger": trigger,
        "policy": policy,
        "approval_status": status,
        "gate": {"passed": decision.promote, "reasons": decision.reasons, "config": decision.config},
        "holdout": decision.challenger,
        "champion": {"version": champion, "holdout": decision.champion} if decision.champion else None,
        "churn": decision.churn,
        "cv": cv or {},
    }
    out: dict[str, Any] = {"approval": status, "policy": policy, "metrics_uri": registry.write_metrics(version, doc)}
    metadata: dict[str, Any] = {"metrics_uri": out["metrics_uri"]}
    if mlflow_run_id:
        metadata["mlflow_run_id"] = mlflow_run_id
    if packages is not None:
        verdict = "passed" if decision.promote else "failed"
        arn = packages.create(
            version=version,
            status=status,
            description=f"readmit {version} ({trigger}): gate {verdict}: {_summary(decision)}",
            metrics_uri=out["metrics_uri"],
            metadata=sm.candidate_metadata(
                version,
                registry.storage.uri,
                {**decision.to_dict(), "champion_version": champion},
                trigger=trigger,
                policy=policy,
                cv_roc_auc=(cv or {}).get("roc_auc"),
                mlflow_run_id=mlflow_run_id,
            ),
            artifact_uri=artifact_uri,
            image=image,
        )
        out["model_package_arn"] = metadata["model_package_arn"] = arn
        metadata["model_package_group"] = packages.group
    registry.annotate(version, **metadata)
    if status == sm.PENDING_MANUAL_APPROVAL:
        reason = f"passed the gate ({trigger}); awaiting approval (policy manual): {_summary(decision)}"
        registry.set_pending(version, reason, by=GATE, extra={"trigger": trigger, "gate_reasons": decision.reasons})
    return out


class ShadowNotReady(RegistryError):
    """The approved challenger has not run in shadow as long as READMIT_MIN_SHADOW_HOURS/_REQUESTS require."""


def shadow_required() -> bool:
    from chalicelib.core.settings import min_shadow_hours, min_shadow_requests

    return min_shadow_requests() > 0 or min_shadow_hours() > 0


def apply_decision(
    registry: Registry, version: str, decision: Decision, *, trigger: str, champion: str | None, by: str = GATE
) -> str:
    """Apply the gate's verdict (the auto policy): approve and promote, or reject. Returns the champion afterwards."""
    extra: dict[str, Any] = {
        "trigger": trigger,
        "gate_reasons": decision.reasons,
        "challenger_metrics": _headline(decision.challenger),
    }
    if decision.champion is not None:
        extra["champion_metrics"] = _headline(decision.champion)
        extra["churn"] = decision.churn
    summary = _summary(decision)
    if decision.promote:
        reason = f"passed the gate ({trigger}): {summary}"
        try:  # Registry.open's registry validates the stored model in a separate process first
            if registry.champion() == version:
                return version  # promoted already (by the approval event): nothing to do
            registry.approve(version, reason, by=by, extra=extra)
        except InvalidModel as exc:  # the champion is unchanged; the history says why the winner was not promoted
            registry.reject(version, f"passed the gate ({trigger}) but {exc}", extra, by=by)
            raise
        if shadow_required():  # approved, then scored in shadow first; the promote step moves it once it is ready
            registry.set_alias(SHADOW, version, f"{reason}; in shadow before promotion", event="shadow")
            return champion or ""
        registry.promote(version, reason, extra, by=by, validate=False)
        return version
    registry.reject(version, f"failed the gate ({trigger}): {summary}", extra, by=by)
    return champion or ""


def promote_approved(
    registry: Registry, version: str, *, reason: str, by: str, log: Any = None, now: Any = None
) -> bool:
    """The promote step for an approved version: idempotent (the champion already → False, nothing recorded).
    The stored model is checked first; a failing model is refused (InvalidModel) with nothing recorded. When the
    policy requires a shadow period (READMIT_MIN_SHADOW_HOURS/_REQUESTS), a version that has not run in shadow that
    long is approved but not promoted (ShadowNotReady says what is missing; ``log`` counts its shadow requests)."""
    if registry.champion() == version:
        return False
    if registry.state(version) != APPROVED:
        registry.approve(version, reason, by=by)  # validates the stored model
    if shadow_required():
        from chalicelib.monitoring.shadow_report import shadow_ready

        ready, why = shadow_ready(registry, log, version, now)
        if not ready:
            raise ShadowNotReady(f"approved, not promoted: {why}")
    registry.promote(version, reason, by=by, validate=False)
    return True


def _package(registry: Registry, version: str, client: Any) -> tuple[ModelPackages, str] | None:
    """The version's SageMaker model package, when it has one and the registry is on S3 (an AWS deployment)."""
    meta = registry.metadata(version)
    if meta.get("model_package_arn") and meta.get("model_package_group") and registry.storage.uri.startswith("s3://"):
        return ModelPackages(meta["model_package_group"], client), meta["model_package_arn"]
    return None


def approve(
    registry: Registry, version: str, reason: str, *, by: str, sagemaker_client: Any = None, log: Any = None
) -> dict[str, Any]:
    """A person's approval (`readmit registry approve`). A version whose stored model fails the validity check is
    refused (InvalidModel), with nothing recorded. On AWS (a version with a model package) the approval is
    SageMaker's UpdateModelPackage, and the state change event runs the promote function; locally the promote step
    runs here."""
    package = _package(registry, version, sagemaker_client)
    if package is not None:
        registry.check(version)
        packages, arn = package
        packages.set_status(arn, sm.APPROVED, reason)
        return {
            "version": version,
            "model_package": arn,
            "status": sm.APPROVED,
            "champion": registry.champion(),
            "next": "SageMaker's state change event runs the promote function, which moves the champion",
        }
    changed = promote_approved(registry, version, reason=reason, by=by, log=log)
    return {"version": version, "state": registry.state(version), "champion": registry.champion(), "changed": changed}


def reject(registry: Registry, version: str, reason: str, *, by: str, sagemaker_client: Any = None) -> dict[str, Any]:
    """A person's rejection (`readmit registry reject`): recorded with the reason; the champion cannot be rejected
    (approve another version to replace it)."""
    if registry.champion() == version:
        raise RegistryError(f"{version} is the champion: approve another version to replace it, then reject it")
    package = _package(registry, version, sagemaker_client)
    if package is not None:
        packages, arn = package
        packages.set_status(arn, sm.REJECTED, reason)
        return {"version": version, "model_package": arn, "status": sm.REJECTED, "champion": registry.champion()}
    if registry.state(version) != REJECTED:
        registry.reject(version, reason, by=by)
    return {"version": version, "state": registry.state(version), "champion": registry.champion()}


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("n", "roc_auc", "brier", "ece")}
