"""Registry with approval (issue #15): the states pending, approved, rejected, champion and archived, the same
locally (a folder registry, `readmit registry approve|reject`) and on AWS (a SageMaker Model Package Group whose
"Model Package State Change" events run the promote and reject functions).

moto serves SageMaker's model package group and packages. Where moto departs from the API reference it is brought
back to it (``sagemaker_as_documented``), and what moto cannot produce (an IAM identity in LastModifiedBy) is
botocore's Stubber, which validates each response against the service model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.stub import Stubber

from chalicelib.cli.main import main
from chalicelib.lifecycle import pipeline, promotion
from chalicelib.registry import sagemaker as sm
from chalicelib.registry.model_check import InvalidModel
from chalicelib.registry.registry import Registry, RegistryError
from tests.replay import fixture, retrain_world, run
from tests.test_model_check import broken, tiny  # noqa: F401  (a small real bundle, and a broken copy of it)

GROUP = "readmit-dev"  # the group the fixtures in events/ name (template: readmit-${Stage})
S3_REGISTRY = "s3://readmit-models-dev/registry"
APPROVED_EVENT = "promote_model_package_approved.json"
REJECTED_EVENT = "reject_model_package_rejected.json"


def _history(registry: Registry, *events: str) -> list[dict[str, Any]]:
    return [e for e in registry.history() if not events or e["event"] in events]


# ---- the folder registry: states and the commands ---------------------------------------------------------------
@pytest.fixture
def local(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:  # noqa: F811
    """A folder registry with a champion and a candidate pending approval (as the manual policy leaves it)."""
    monkeypatch.setenv("READMIT_REGISTRY", str(tmp_path / "registry"))
    registry = Registry.open(tmp_path / "registry")
    registry.promote(registry.register(tiny, version="20260101T000000Z-00000001"), "first model")
    registry.register(tiny, version="20260201T000000Z-00000002")
    registry.set_pending("20260201T000000Z-00000002", "passed the gate (manual); awaiting approval")
    return registry


@pytest.mark.slow
def test_list_shows_each_versions_state(local: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["registry", "list", "--json"]) == 0
    states = json.loads(capsys.readouterr().out)["states"]
    assert states == {"20260101T000000Z-00000001": "champion", "20260201T000000Z-00000002": "pending"}


@pytest.mark.slow
def test_approve_promotes_a_pending_candidate_and_records_who_why_and_when(
    local: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = "20260101T000000Z-00000001", "20260201T000000Z-00000002"
    assert main(["registry", "approve", new, "--reason", "reviewed by the governance board", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["champion"] == new
    assert local.champion() == new
    assert local.states() == {old: "archived", new: "champion"}
    approved, promoted, archived = _history(local, "approved", "promoted", "archived")[-3:]
    assert (approved["version"], approved["previous_state"], approved["reason"]) == (
        new,
        "pending",
        "reviewed by the governance board",
    )
    assert approved["by"].startswith("local:") and approved["at"].endswith("Z")
    assert promoted["by"] == approved["by"] and promoted["previous"] == old
    assert (archived["version"], archived["previous_state"]) == (old, "champion")


@pytest.mark.slow
def test_approving_the_champion_again_is_a_no_op(local: Registry) -> None:
    new = "20260201T000000Z-00000002"
    assert main(["registry", "approve", new, "--reason", "first", "--json"]) == 0
    before = local.history()
    assert main(["registry", "approve", new, "--reason", "again", "--json"]) == 0
    assert local.history() == before  # nothing recorded, nothing moved
    assert promotion.approve(local, new, "and again", by="local:x")["changed"] is False


def test_reject_records_why_and_leaves_the_champion(local: Registry) -> None:
    champion, pending = "20260101T000000Z-00000001", "20260201T000000Z-00000002"
    assert main(["registry", "reject", pending, "--reason", "subgroup AUC too low for age 80+", "--json"]) == 0
    assert local.champion() == champion and local.state(pending) == "rejected"
    [event] = _history(local, "rejected")
    assert (event["reason"], event["previous_state"]) == ("subgroup AUC too low for age 80+", "pending")
    assert event["by"].startswith("local:")


def test_approve_and_reject_need_a_reason_and_the_champion_cannot_be_rejected(
    local: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["registry", "approve", "20260201T000000Z-00000002"]) == 2
    assert "--reason is required" in capsys.readouterr().err
    assert main(["registry", "reject", "20260101T000000Z-00000001", "--reason", "no"]) == 2
    assert "is the champion" in capsys.readouterr().err
    with pytest.raises(RegistryError, match="is the champion"):
        promotion.reject(local, "20260101T000000Z-00000001", "no", by="local:x")


@pytest.mark.slow
def test_approving_a_model_that_fails_the_validity_check_is_refused(
    local: Registry,
    tiny: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = Registry(local.storage).register(broken(tiny, tmp_path, "truncated"))  # planted past validation
    local.set_pending(bad, "as if it had passed the gate")
    before = local.history()
    assert main(["registry", "approve", bad, "--reason", "looks fine"]) == 2
    assert "failed validation" in capsys.readouterr().err
    assert local.champion() == "20260101T000000Z-00000001" and local.state(bad) == "pending"
    assert local.history() == before  # no approval was recorded
    with pytest.raises(InvalidModel):
        local.approve(bad, "looks fine", by="local:x")


@pytest.mark.slow
def test_versions_from_before_states_take_theirs_from_the_history(tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    registry = Registry.open(tmp_path / "r")
    for v in ("v1", "v2", "v3", "v4"):
        registry.register(tiny, version=v)
    registry.promote("v1", "first")
    registry.promote("v2", "second")
    registry.reject("v3", "lost")
    for v in ("v1", "v2", "v3"):  # as an older registry left them: no state documents
        (Path(registry.storage.uri) / "states" / f"{v}.json").unlink()
    assert registry.states() == {"v1": "archived", "v2": "champion", "v3": "rejected", "v4": "pending"}


# ---- the retraining loop locally: policy manual end to end, policy auto as before -------------------------------
@pytest.mark.slow
def test_manual_policy_end_to_end_pending_then_approved_then_the_running_server_swaps(
    sample_csv: Path,
    small_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from chalicelib.lifecycle.gate import GateConfig
    from chalicelib.lifecycle.retrain import retrain
    from chalicelib.model.train import TrainConfig
    from tests.test_server_e2e import start_server

    folder = tmp_path / "registry"
    monkeypatch.setenv("READMIT_REGISTRY", str(folder))
    registry = Registry.open(folder)
    registry.promote(registry.register(small_bundle), "first model")
    server = start_server(tmp_path, folder, 0.2, "--workers", "1")
    try:
        lenient = GateConfig(min_auc=0.55, max_auc_drop=0.05)
        small = TrainConfig(n_estimators=40, folds=3, baselines=False)
        result = retrain(sample_csv, registry, policy="manual", train_cfg=small, gate_cfg=lenient)
        assert result.decision.promote and result.state == "pending"
        assert registry.champion() == small_bundle.name == server.call("GET", "/health")[1]["model_version"]
        metrics = json.loads((folder / "metrics" / f"{result.version}.json").read_text())
        assert metrics["approval_status"] == "PendingManualApproval" and metrics["cv"]["roc_auc"] > 0.55
        assert metrics["holdout"]["subgroups"] and metrics["gate"]["passed"] is True

        assert main(["registry", "approve", result.version, "--reason", "clinical review 2026-12-01"]) == 0
        assert registry.champion() == result.version
        served = None
        for _ in range(150):  # the server checks the champion every 0.2 s
            served = server.call("GET", "/health")[1]["model_version"]
            if served == result.version:
                break
            time.sleep(0.1)
        assert served == result.version
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)
    assert [e["event"] for e in _history(registry, "pending", "approved", "promoted", "archived")][-4:] == [
        "pending",
        "approved",
        "promoted",
        "archived",
    ]


# ---- AWS: SageMaker Model Package Group in moto -------------------------------------------------------------------
@contextmanager
def moto_update_as_documented() -> Iterator[None]:
    """moto's UpdateModelPackage replaces CustomerMetadataProperties (with None when the call has none); the API
    merges them: UpdateModelPackage takes CustomerMetadataProperties to add and CustomerMetadataPropertiesToRemove
    to remove (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_UpdateModelPackage.html)."""
    from moto.sagemaker.models import SageMakerModelBackend

    original = SageMakerModelBackend.update_model_package

    def update(self: Any, model_package_arn: str, **kwargs: Any) -> str:
        kept = dict(self.describe_model_package(model_package_arn).customer_metadata_properties or {})
        merged = {**kept, **(kwargs.pop("customer_metadata_properties") or {})} or None
        return original(self, model_package_arn=model_package_arn, customer_metadata_properties=merged, **kwargs)

    with mock.patch.object(SageMakerModelBackend, "update_model_package", update):
        yield


@pytest.fixture
def sagemaker_as_documented() -> Iterator[None]:
    with moto_update_as_documented():
        yield


def person_decides(status: str, version: str, registry_uri: str) -> str:
    """Inside moto: the group the fixtures name, version 1 of it (the fixtures' ARN) created pending for ``version``
    as the Evaluate step creates it, then approved or rejected by a person. For replaying the fixtures in events/
    (tests/test_invoke.py)."""
    client = boto3.client("sagemaker")
    client.create_model_package_group(ModelPackageGroupName=GROUP)
    packages = sm.ModelPackages(GROUP, client)
    arn = packages.create(
        version=version,
        status=sm.PENDING_MANUAL_APPROVAL,
        description=f"readmit {version}: gate passed",
        metrics_uri=f"{registry_uri}/metrics/{version}.json",
        metadata={sm.KEY_VERSION: version, sm.KEY_REGISTRY: registry_uri},
    )
    packages.set_status(arn, status, f"{status.lower()} by the fixtures' reviewer")
    return arn


@pytest.fixture
def aws(
    sample_csv: Path, model_tarball: bytes, monkeypatch: pytest.MonkeyPatch, sagemaker_as_documented: None
) -> Iterator[Any]:
    """moto: the retraining buckets (data, the trained artifact), the fixtures' champion, and the model package
    group the template creates."""
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Readmit")
    with retrain_world(sample_csv, model_tarball):
        client = boto3.client("sagemaker")
        client.create_model_package_group(ModelPackageGroupName=GROUP)
        yield client


def _evaluate(policy: str) -> dict[str, Any]:
    """The Evaluate step as the stack runs it: the group and the policy from the environment."""
    env = {"READMIT_MODEL_PACKAGE_GROUP": GROUP, "READMIT_PROMOTION_POLICY": policy}
    return run("EvaluateFunction", {**fixture("retrain_evaluate.json"), "gate": {"min_auc": 0.5}}, **env)


@pytest.mark.slow
def test_evaluate_registers_a_model_package_with_metrics_metadata_and_the_policys_status(aws: Any) -> None:
    out = _evaluate("manual")
    assert out["promote"] is True and out["approval"] == "PendingManualApproval"
    package = aws.describe_model_package(ModelPackageName=out["model_package_arn"])
    assert package["ModelPackageArn"] == fixture(APPROVED_EVENT)["detail"]["ModelPackageArn"]  # the fixture's
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    stats = package["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert stats == {
        "ContentType": "application/json",
        "S3Uri": f"{S3_REGISTRY}/metrics/{out['challenger_version']}.json",
    }
    container = package["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == fixture("retrain_evaluate.json")["training"]["model_artifact"]
    meta = package["CustomerMetadataProperties"]
    assert meta["readmit_version"] == out["challenger_version"] and meta["registry_uri"] == S3_REGISTRY
    assert meta["gate"] == "passed" and float(meta["holdout_roc_auc"]) > 0.5 and float(meta["cv_roc_auc"]) > 0.5
    assert 0 < len(meta) <= 50 and all(len(k) <= 128 and 0 < len(v) <= 256 for k, v in meta.items())
    registry = Registry.open(S3_REGISTRY)
    assert registry.state(out["challenger_version"]) == "pending"
    assert registry.metadata(out["challenger_version"])["model_package_arn"] == out["model_package_arn"]
    # the fixture's model was trained with tracking off: no run to name (tests/test_tracking.py covers a named one)
    assert registry.metadata(out["challenger_version"]).get("mlflow_run_id") is None


@pytest.mark.slow
def test_under_auto_the_gates_pass_is_approved_at_creation_and_not_pending(aws: Any) -> None:
    out = _evaluate("auto")
    assert out["approval"] == "Approved"
    assert aws.describe_model_package(ModelPackageName=out["model_package_arn"])["ModelApprovalStatus"] == "Approved"
    assert not _history(Registry.open(S3_REGISTRY), "pending")  # no one is asked: the Promote step follows


@pytest.mark.slow
def test_a_person_approves_on_aws_and_the_approval_event_promotes_once(
    aws: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _evaluate("manual")
    version, registry = out["challenger_version"], Registry.open(S3_REGISTRY)
    # a promotion attempted before anyone approved: the event says Approved, SageMaker says pending → nothing
    assert "skipped" in run("PromoteFunction", APPROVED_EVENT)
    assert registry.champion() is None

    capsys.readouterr()  # the function's metrics line
    assert main(["registry", "approve", version, "--reason", "reviewed", "--registry", S3_REGISTRY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "Approved"
    assert registry.champion() is None  # SageMaker's event moves the champion, not the command
    package = aws.describe_model_package(ModelPackageName=out["model_package_arn"])
    assert (package["ModelApprovalStatus"], package["ApprovalDescription"]) == ("Approved", "reviewed")

    first = run("PromoteFunction", APPROVED_EVENT)
    assert first == {"champion": version, "promoted": version, "changed": True}
    assert registry.state(version) == "champion"
    [approved] = _history(registry, "approved")
    assert approved["reason"] == "reviewed" and approved["by"] == "fake-user-profile-name"  # moto's LastModifiedBy

    again = run("PromoteFunction", APPROVED_EVENT)  # SageMaker may send an event more than once
    assert again["changed"] is False and len(_history(registry, "promoted")) == 1


@pytest.mark.slow
def test_the_step_functions_input_still_promotes_under_auto(aws: Any) -> None:
    out = _evaluate("auto")
    event = {**fixture("retrain_promote.json"), "decision": out}
    assert run("PromoteFunction", event) == {
        "champion": out["challenger_version"],
        "promoted": out["challenger_version"],
    }
    # the package was Approved at creation: its event is left to the workflow and changes nothing
    assert "skipped" in run("PromoteFunction", APPROVED_EVENT)


@pytest.mark.slow
def test_promote_refuses_a_pending_candidate_from_the_workflow(aws: Any) -> None:
    out = _evaluate("manual")
    with pytest.raises(ValueError, match="pending manual approval"):
        run("PromoteFunction", {**fixture("retrain_promote.json"), "decision": out})
    assert Registry.open(S3_REGISTRY).champion() is None


@pytest.mark.slow
def test_a_rejection_in_sagemaker_is_recorded_once_with_who_and_why(aws: Any) -> None:
    out = _evaluate("manual")
    version, registry = out["challenger_version"], Registry.open(S3_REGISTRY)
    assert main(["registry", "reject", version, "--reason", "fairness review pending", "--registry", S3_REGISTRY]) == 0
    assert run("RejectFunction", REJECTED_EVENT) == {"champion": None, "rejected": version, "changed": True}
    assert run("RejectFunction", REJECTED_EVENT)["changed"] is False
    [event] = _history(registry, "rejected")
    assert (event["reason"], event["previous_state"], event["by"]) == (
        "fairness review pending",
        "pending",
        "fake-user-profile-name",
    )


@pytest.mark.slow
def test_approving_on_aws_a_model_that_fails_the_validity_check_is_refused_before_sagemaker(
    aws: Any,
    tiny: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    registry = Registry.open(S3_REGISTRY)
    bad = Registry(registry.storage).register(broken(tiny, tmp_path, "truncated"))
    arn = sm.ModelPackages(GROUP, aws).create(
        version=bad, status="PendingManualApproval", description="x", metrics_uri=f"{S3_REGISTRY}/metrics/x.json",
        metadata={"readmit_version": bad, "registry_uri": S3_REGISTRY},
    )  # fmt: skip
    registry.annotate(bad, model_package_arn=arn, model_package_group=GROUP)
    with pytest.raises(InvalidModel):
        promotion.approve(registry, bad, "looks fine", by="local:x", sagemaker_client=aws)
    assert aws.describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"] == "PendingManualApproval"


# ---- what moto cannot show: an IAM identity in LastModifiedBy (botocore's Stubber, shapes validated) -----------
@pytest.mark.slow
def test_an_sso_session_name_that_is_an_email_never_reaches_the_history(tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    registry = Registry.open(tmp_path / "registry")
    version = registry.register(tiny)
    client = boto3.client("sagemaker", region_name="us-east-1")
    arn = fixture(APPROVED_EVENT)["detail"]["ModelPackageArn"]
    created = datetime(2026, 11, 29, 2, 31, 7, tzinfo=UTC)
    described = {
        "ModelPackageName": GROUP,
        "ModelPackageGroupName": GROUP,
        "ModelPackageVersion": 1,
        "ModelPackageArn": arn,
        "CreationTime": created,
        "ModelPackageStatus": "Completed",
        "ModelPackageStatusDetails": {"ValidationStatuses": []},
        "ModelApprovalStatus": "Approved",
        "ApprovalDescription": "approved in Studio",
        "LastModifiedTime": datetime(2026, 11, 30, 9, 12, 44, tzinfo=UTC),
        "LastModifiedBy": {
            "IamIdentity": {
                "Arn": "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Reviewer_0a1b/jane.doe@example.org",
                "PrincipalId": "AROAEXAMPLE:jane.doe@example.org",
            }
        },
        "CustomerMetadataProperties": {"readmit_version": version, "registry_uri": str(tmp_path / "registry")},
    }
    with Stubber(client) as stub:
        stub.add_response("describe_model_package", described, {"ModelPackageName": arn})
        out = pipeline.promote(fixture(APPROVED_EVENT), sagemaker_client=client)
        stub.assert_no_pending_responses()
    assert out["changed"] is True and registry.champion() == version
    text = json.dumps(registry.history())
    assert "example.org" not in text and "jane" not in text
    assert _history(registry, "approved")[0]["by"].startswith("arn:aws:sts::123456789012:assumed-role/")


def test_the_fixtures_are_the_documented_event_shape() -> None:
    for name, status in ((APPROVED_EVENT, "Approved"), (REJECTED_EVENT, "Rejected")):
        event = sm.ModelPackageStateChange.model_validate(fixture(name))
        assert event.detail.ModelApprovalStatus == status and event.detail.ModelPackageGroupName == GROUP
        assert sm.is_package_event(fixture(name))
    assert not sm.is_package_event(fixture("retrain_promote.json"))


def test_customer_metadata_keeps_within_the_api_limits() -> None:
    values = {f"k{i}": "x" * 300 for i in range(60)} | {"bad key (1)": "a;b,c"}
    meta = sm.metadata_map(values)
    assert len(meta) == 50 and all(len(v) == 256 for v in meta.values())
    assert sm.metadata_map({"bad key (1)": "a;b,c", "f": 0.123456, "n": None}) == {"bad key 1": "a b c", "f": "0.1235"}
    assert sm.description_text("line one\nline two") == "line one line two"
