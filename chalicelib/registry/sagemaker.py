"""The registry's copy in a SageMaker Model Package Group: one model package version per candidate, its approval
status set by the gate or a person, and the "SageMaker Model Package State Change" events that move the champion.

The folder/S3 registry (chalicelib/registry/registry.py) stays what serving reads; SageMaker holds the governance record
that Studio and the console show and approve. Light on purpose (boto3 and pydantic only): the promote and reject
Lambdas import it.

API shapes are botocore's (botocore/data/sagemaker/2017-07-24/service-2.json: CreateModelPackageInput,
UpdateModelPackageInput, DescribeModelPackageOutput, CustomerMetadataMap); the event's shape is the SageMaker
developer guide's "Model package state change" example
(https://docs.aws.amazon.com/sagemaker/latest/dg/automating-sagemaker-with-eventbridge.html#eventbridge-model-package).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field

# ModelApprovalStatus (botocore enum: Approved | Rejected | PendingManualApproval)
APPROVED, REJECTED, PENDING_MANUAL_APPROVAL = "Approved", "Rejected", "PendingManualApproval"
DETAIL_TYPE = "SageMaker Model Package State Change"
# CustomerMetadataMap: 1-50 entries; keys 1-128 and values 1-256 characters of [\p{L}\p{Z}\p{N}_.:/=+\-@]
# (service-2.json shapes CustomerMetadataMap, CustomerMetadataKey, CustomerMetadataValue).
METADATA_MAX_ENTRIES, METADATA_KEY_MAX, METADATA_VALUE_MAX = 50, 128, 256
_METADATA_BAD = re.compile(r"[^\w\s.:/=+\-@]")  # \w: letters, digits, _; \s becomes one space below
DESCRIPTION_MAX = 1024  # ModelPackageDescription (EntityDescription) and ApprovalDescription: at most 1024
CLIENT_TOKEN_MAX = 36  # ClientToken: 1-36 of [a-zA-Z0-9-]
# Keys of a candidate's CustomerMetadataProperties that the promote and reject functions read back.
KEY_VERSION, KEY_REGISTRY = "readmit_version", "registry_uri"


class PackageError(Exception):
    """A model package cannot be used (no readmit version in its metadata, no registry to act on)."""


def _metadata_text(value: str, limit: int) -> str:
    return re.sub(r"\s+", " ", _METADATA_BAD.sub(" ", value)).strip()[:limit]


def metadata_map(values: Mapping[str, Any]) -> dict[str, str]:
    """CustomerMetadataProperties within the API's limits: floats to 4 decimals, None and empty values dropped,
    characters outside the allowed set turned into spaces, at most 50 entries (the first ones win)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None or len(out) >= METADATA_MAX_ENTRIES:
            continue
        text = f"{value:.4f}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else value
        k, v = _metadata_text(str(key), METADATA_KEY_MAX), _metadata_text(str(text), METADATA_VALUE_MAX)
        if k and v:
            out[k] = v
    return out


def description_text(value: str) -> str:
    """ModelPackageDescription's pattern [\\p{L}\\p{M}\\p{Z}\\p{S}\\p{N}\\p{P}]* excludes control characters
    (newlines, tabs): they become spaces; at most 1024 characters."""
    flat = "".join(" " if unicodedata.category(c).startswith("C") else c for c in value)
    return re.sub(r" +", " ", flat).strip()[:DESCRIPTION_MAX]


def client_token(version: str) -> str:
    """CreateModelPackage's idempotency token for a version: a retried evaluate step creates no second package."""
    token = re.sub(r"[^a-zA-Z0-9-]", "-", version)
    return token if len(token) <= CLIENT_TOKEN_MAX else hashlib.sha256(version.encode()).hexdigest()[:CLIENT_TOKEN_MAX]


def actor(user: Mapping[str, Any] | None) -> str:
    """Who changed a package, from DescribeModelPackage's UserContext (LastModifiedBy/CreatedBy), for the registry
    history: a Studio user profile name, else the IAM identity's ARN. Any e-mail address (an SSO role session name
    often is one) is replaced by the first 12 hex digits of its sha256, so no address reaches logs or history."""
    user = user or {}
    name = user.get("UserProfileName") or (user.get("IamIdentity") or {}).get("Arn") or "unknown AWS identity"
    return re.sub(r"[^\s/:@]+@[^\s/:]+", lambda m: "user-" + hashlib.sha256(m.group().encode()).hexdigest()[:12], name)


class ModelPackageChange(BaseModel):
    """The event detail fields this code reads (the detail repeats DescribeModelPackage's output)."""

    model_config = ConfigDict(extra="ignore")

    ModelPackageGroupName: str
    ModelPackageVersion: int = Field(ge=1)
    ModelPackageArn: str = Field(pattern=r"^arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]{9,16}:[0-9]{12}:model-package/\S+$")
    ModelApprovalStatus: Literal["Approved", "Rejected", "PendingManualApproval"]


class ModelPackageStateChange(EventBridgeModel):
    """EventBridge's envelope (Powertools' model) around a model package state change."""

    source: Literal["aws.sagemaker"]
    detail_type: Literal["SageMaker Model Package State Change"] = Field(alias="detail-type")
    detail: ModelPackageChange  # narrows the envelope's generic detail


def is_package_event(event: Mapping[str, Any]) -> bool:
    """An EventBridge model package state change (not a Step Functions step input)."""
    return event.get("source") == "aws.sagemaker" and event.get("detail-type") == DETAIL_TYPE


class Package(BaseModel):
    """What DescribeModelPackage says about one candidate, now (events may repeat or arrive out of order)."""

    arn: str
    status: str | None
    version: str | None  # the readmit registry version
    registry_uri: str | None
    approval_description: str | None
    by: str
    set_at_creation: bool  # the status has not changed since CreateModelPackage (the workflow recorded it)
    metadata: dict[str, str]


class ModelPackages:
    """One Model Package Group: create a candidate, change its approval status, read it back."""

    def __init__(self, group: str, client: Any = None) -> None:
        self.group = group
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("sagemaker")
        return self._client

    def create(
        self,
        *,
        version: str,
        status: str,
        description: str,
        metrics_uri: str,
        metadata: Mapping[str, Any],
        artifact_uri: str | None = None,
        image: str | None = None,
    ) -> str:
        """CreateModelPackage for a candidate; returns the package version's ARN.

        InferenceSpecification is optional in CreateModelPackageInput (no required members) and the model is served
        by Lambda, not a SageMaker endpoint; it is sent when the training image is known so that the package names
        the bundle artifact (ModelDataUrl) and the image that built it. ModelMetrics' ModelQuality.Statistics points
        at the metrics document (MetricsSource requires ContentType and S3Uri)."""
        request: dict[str, Any] = {
            "ModelPackageGroupName": self.group,
            "ModelPackageDescription": description_text(description),
            "ModelApprovalStatus": status,
            "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": metrics_uri}}},
            "CustomerMetadataProperties": metadata_map(metadata),
            "ClientToken": client_token(version),
        }
        if image and artifact_uri:
            request["InferenceSpecification"] = {
                "Containers": [{"Image": image, "ModelDataUrl": artifact_uri}],
                "SupportedContentTypes": ["application/json"],
                "SupportedResponseMIMETypes": ["application/json"],
            }
        return self.client.create_model_package(**request)["ModelPackageArn"]

    def set_status(self, arn: str, status: str, reason: str) -> None:
        """UpdateModelPackage: what a person's approval or rejection is (also from `readmit registry approve`)."""
        self.client.update_model_package(
            ModelPackageArn=arn, ModelApprovalStatus=status, ApprovalDescription=description_text(reason)
        )

    def describe(self, arn: str) -> Package:
        d = self.client.describe_model_package(ModelPackageName=arn)
        metadata = d.get("CustomerMetadataProperties") or {}
        created, modified = d.get("CreationTime"), d.get("LastModifiedTime")
        at_creation = not d.get("LastModifiedBy") or (
            isinstance(created, datetime) and isinstance(modified, datetime) and modified <= created
        )
        return Package(
            arn=d["ModelPackageArn"],
            status=d.get("ModelApprovalStatus"),
            version=metadata.get(KEY_VERSION),
            registry_uri=metadata.get(KEY_REGISTRY),
            approval_description=d.get("ApprovalDescription"),
            by=actor(d.get("LastModifiedBy") or d.get("CreatedBy")),
            set_at_creation=at_creation,
            metadata=metadata,
        )


def candidate_metadata(
    version: str, registry_uri: str, decision: Mapping[str, Any], *, trigger: str, policy: str, **more: Any
) -> dict[str, Any]:
    """The candidate's headline figures and verdict as CustomerMetadataProperties (the full document is the
    ModelMetrics JSON): holdout AUC, Brier, ECE, CV AUC, the worst subgroup AUC, the gate verdict."""
    challenger = decision.get("challenger") or {}
    aucs = [
        row.get("roc_auc")
        for table in (challenger.get("subgroups") or {}).values()
        for row in table.values()
        if row.get("roc_auc") is not None
    ]
    return {
        KEY_VERSION: version,
        KEY_REGISTRY: registry_uri,
        "trigger": trigger,
        "policy": policy,
        "gate": "passed" if decision.get("promote") else "failed",
        "holdout_n": challenger.get("n"),
        "holdout_roc_auc": challenger.get("roc_auc"),
        "holdout_brier": challenger.get("brier"),
        "holdout_ece": challenger.get("ece"),
        "worst_subgroup_roc_auc": min(aucs) if aucs else None,
        "champion_version": decision.get("champion_version"),
        **more,
    }
