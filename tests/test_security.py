"""Security checks over every resource in template.yaml (and the bootstrap template in deploy/aws/): checkov with
zero failures, least privilege in every policy, logs, encryption, dead letters and the WAF. Written against
resource types, not names, so resources added later are held to the same rules."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib.cli.sam_template import load_template

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
BOOTSTRAP = sorted((ROOT / "deploy" / "aws").glob("*.yaml"))
ASYNC_EVENTS = {
    "Schedule",
    "ScheduleV2",
    "EventBridgeRule",
    "CloudWatchEvent",
    "S3",
    "SNS",
    "CloudWatchLogs",
    "IoTRule",
}
ADMIN_POLICIES = ("AdministratorAccess", "PowerUserAccess", "IAMFullAccess")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE)


def of_type(template: dict[str, Any], *types: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] in types}


def declared_skips(template: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (name, skip["id"], skip.get("comment", ""))
        for name, resource in template["Resources"].items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]


# ---- checkov ---------------------------------------------------------------------------------------------------
def checkov() -> str:
    local = ROOT / ".tools" / "checkov" / "bin" / "checkov"
    found = str(local) if local.exists() else shutil.which("checkov")
    if not found:
        pytest.fail("checkov is not installed: `make tools` puts it in .tools/checkov")
    return found


def run_checkov(*args: str) -> dict[str, Any]:
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    cmd = [checkov(), *args, "--skip-download", "--compact", "--quiet", "-o", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


def failed_checks(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["check_id"], c["resource"], c["check_name"]) for c in report["results"].get("failed_checks", [])]


@pytest.mark.slow
def test_checkov_finds_no_failed_check_and_skips_only_what_the_template_declares(template: dict[str, Any]) -> None:
    report = run_checkov("-f", str(TEMPLATE), "--framework", "cloudformation")
    assert not failed_checks(report), failed_checks(report)
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100 and report["summary"]["skipped"] == len(declared_skips(template))


@pytest.mark.parametrize("path", BOOTSTRAP, ids=lambda p: p.name)
@pytest.mark.slow
def test_checkov_passes_the_bootstrap_template_with_declared_skips_only(path: Path) -> None:
    """CI never scanned the bootstrap template (issue #14): it is held to the same bar as template.yaml."""
    report = run_checkov("-f", str(path), "--framework", "cloudformation")
    assert not failed_checks(report), failed_checks(report)
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["passed"] > 20
    assert report["summary"]["skipped"] == len(declared_skips(load_template(path)))


WORKFLOWS = ROOT / ".github" / "workflows"
WORKFLOW_SKIP = re.compile(r"#\s*checkov:skip=(CKV2?_[A-Z]+_\d+):(.*)")


@pytest.mark.slow
def test_checkov_passes_the_github_workflows_with_declared_skips_only() -> None:
    """Workflows take their skips as `# checkov:skip=ID: reason` comments (YAML has no Metadata to put them in)."""
    report = run_checkov("-d", str(WORKFLOWS), "--framework", "github_actions")
    assert not failed_checks(report), failed_checks(report)
    skips = [m.groups() for f in WORKFLOWS.glob("*.y*ml") for m in WORKFLOW_SKIP.finditer(f.read_text())]
    assert report["summary"]["passed"] > 50 and report["summary"]["skipped"] == len(skips)
    assert all(len(reason.strip()) >= 40 for _, reason in skips)


@pytest.mark.parametrize("path", [TEMPLATE, *BOOTSTRAP], ids=lambda p: p.name)
def test_every_checkov_skip_gives_a_reason(path: Path) -> None:
    for name, check, comment in declared_skips(load_template(path)):
        assert check.startswith(("CKV_", "CKV2_")) and len(comment) >= 40, (name, check, comment)


# ---- least privilege -------------------------------------------------------------------------------------------
def statements(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM policy statement anywhere in a template: roles, inline SAM policies, key, bucket, queue and
    topic policies alike (anything with an Effect and an Action)."""
    if isinstance(node, dict):
        if "Effect" in node and ({"Action", "NotAction"} & node.keys()):
            yield where, node
        for key, value in node.items():
            yield from statements(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from statements(value, f"{where}[{i}]")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("path", [TEMPLATE, *BOOTSTRAP], ids=lambda p: p.name)
@pytest.mark.slow
def test_no_policy_allows_every_action_on_every_resource(path: Path) -> None:
    found = list(statements(load_template(path)["Resources"]))
    assert len(found) > 5  # the walk does see the policies
    for where, statement in found:
        if statement["Effect"] != "Allow":
            continue
        assert "NotAction" not in statement and "NotResource" not in statement, where
        actions, resources = _as_list(statement["Action"]), _as_list(statement.get("Resource", "*"))
        assert not ("*" in actions and "*" in resources), where
        if "/KeyPolicy/" in where:  # a key policy's "*" resource means the key itself
            continue
        whole_services = [a for a in actions if isinstance(a, str) and a.endswith(":*")]
        assert not (whole_services and "*" in resources), f"{where}: {whole_services} on every resource"


def test_the_walk_catches_a_wildcard_statement() -> None:
    bad = {"R": {"Properties": {"Policies": [{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}]}}}
    [(where, statement)] = list(statements(bad))
    assert where.startswith("/R/Properties/Policies") and statement["Action"] == "*"


@pytest.mark.parametrize("path", [TEMPLATE, *BOOTSTRAP], ids=lambda p: p.name)
def test_no_role_gets_an_administrator_managed_policy(path: Path) -> None:
    text = json.dumps(load_template(path)["Resources"])
    assert not [p for p in ADMIN_POLICIES if f"policy/{p}" in text or f'"{p}"' in text]


# ---- logs, tracing, encryption, dead letters ---------------------------------------------------------------------
def log_groups(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return of_type(template, "AWS::Logs::LogGroup")


def test_every_log_group_has_retention_and_the_kms_key(template: dict[str, Any]) -> None:
    for name, group in log_groups(template).items():
        assert group["Properties"].get("RetentionInDays") and group["Properties"].get("KmsKeyId"), name


def test_every_function_logs_to_a_log_group_with_retention(template: dict[str, Any]) -> None:
    names = {json.dumps(g["Properties"].get("LogGroupName")) for g in log_groups(template).values()}
    for name, function in of_type(template, "AWS::Serverless::Function", "AWS::Lambda::Function").items():
        own = function["Properties"].get("LoggingConfig", {}).get("LogGroup")
        assert own or json.dumps({"Sub": f"/aws/lambda/${{{name}}}"}) in names, f"{name} has no log group"


def test_functions_are_traced_and_their_environment_encrypted(template: dict[str, Any]) -> None:
    globals_ = template.get("Globals", {}).get("Function", {})
    for name, function in of_type(template, "AWS::Serverless::Function").items():
        props = {**globals_, **function["Properties"]}
        assert props.get("Tracing") == "Active" and props.get("KmsKeyArn"), name


def test_every_asynchronously_invoked_function_has_a_dead_letter_or_failure_destination(
    template: dict[str, Any],
) -> None:
    for name, function in of_type(template, "AWS::Serverless::Function").items():
        props = function["Properties"]
        kinds = {e["Type"] for e in props.get("Events", {}).values()}
        if kinds & ASYNC_EVENTS:
            on_failure = props.get("EventInvokeConfig", {}).get("DestinationConfig", {}).get("OnFailure")
            assert props.get("DeadLetterQueue") or on_failure, f"{name} ({kinds & ASYNC_EVENTS}) loses failed events"


def test_every_queue_is_encrypted_and_every_consumed_queue_has_a_dead_letter_queue(template: dict[str, Any]) -> None:
    queues = of_type(template, "AWS::SQS::Queue")
    for name, queue in queues.items():
        props = queue.get("Properties", {})
        assert props.get("KmsMasterKeyId") or props.get("SqsManagedSseEnabled"), name
    consumed = {
        json.dumps(e["Properties"]["Queue"])
        for f in of_type(template, "AWS::Serverless::Function").values()
        for e in f["Properties"].get("Events", {}).values()
        if e["Type"] == "SQS"
    }
    for name, queue in queues.items():
        if any(name in q for q in consumed):
            assert "RedrivePolicy" in queue.get("Properties", {}), f"{name} is consumed but has no DLQ"


def test_state_machines_are_traced_and_log_to_a_group(template: dict[str, Any]) -> None:
    for name, machine in of_type(template, "AWS::Serverless::StateMachine").items():
        props = machine["Properties"]
        assert props["Tracing"]["Enabled"] is True and props["Logging"]["Destinations"], name


def test_topics_and_tables_and_secrets_use_the_kms_key(template: dict[str, Any]) -> None:
    for name, r in of_type(template, "AWS::SNS::Topic").items():
        assert r["Properties"].get("KmsMasterKeyId"), name
    for name, r in of_type(template, "AWS::DynamoDB::Table").items():
        assert r["Properties"]["SSESpecification"]["SSEEnabled"] is True, name
        assert r["Properties"]["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True, name
    for name, r in of_type(template, "AWS::SecretsManager::Secret").items():
        assert r["Properties"].get("KmsKeyId"), name


# ---- the API's edge ---------------------------------------------------------------------------------------------
def test_the_api_stage_has_access_logs_tracing_no_body_logging_and_throttling(template: dict[str, Any]) -> None:
    for name, api in of_type(template, "AWS::Serverless::Api").items():
        props = api["Properties"]
        assert props["TracingEnabled"] is True and props["AccessLogSetting"]["DestinationArn"], name
        assert json.loads(props["AccessLogSetting"]["Format"])["requestId"] == "$context.requestId"
        for setting in props["MethodSettings"]:
            assert setting["DataTraceEnabled"] is False and setting["ThrottlingRateLimit"], name


def test_a_web_acl_rate_limits_each_ip_to_2000_per_5_minutes_on_every_api_stage(template: dict[str, Any]) -> None:
    acls = of_type(template, "AWS::WAFv2::WebACL")
    [rate] = [r for acl in acls.values() for r in acl["Properties"]["Rules"] if "RateBasedStatement" in r["Statement"]]
    statement = rate["Statement"]["RateBasedStatement"]
    limit = template["Parameters"][statement["Limit"]["Ref"]]["Default"]
    assert limit == 2000 and statement["EvaluationWindowSec"] == 300 and statement["AggregateKeyType"] == "IP"
    assert "Block" in rate["Action"]
    associated = {
        json.dumps(a["Properties"]["ResourceArn"]) for a in of_type(template, "AWS::WAFv2::WebACLAssociation").values()
    }
    for api in of_type(template, "AWS::Serverless::Api"):
        assert any(f"/restapis/${{{api}}}/stages/" in arn for arn in associated), f"{api} has no web ACL"


# ---- parameters and outputs --------------------------------------------------------------------------------------
def test_stage_and_thresholds_are_parameters_and_the_url_and_keys_are_outputs(template: dict[str, Any]) -> None:
    assert {"Stage", "WafRateLimit", "GateMinAuc", "GateMaxAucDrop", "GateMaxEce", "RealizedAucFloor"} <= set(
        template["Parameters"]
    )
    assert {"ApiUrl", "ApiKeyId", "DataKeyArn", "ModelBucketName", "ArtifactBucketName"} <= set(template["Outputs"])


# ---- the bootstrap template (cfn-lint runs in tests/test_template.py) ------------------------------------------
def test_the_deploy_role_trusts_only_the_main_branch_of_one_repository() -> None:
    role = load_template(ROOT / "deploy" / "aws" / "github-oidc.yaml")["Resources"]["GitHubDeployRole"]
    [trust] = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    condition = trust["Condition"]["StringEquals"]
    assert condition["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    assert condition["token.actions.githubusercontent.com:sub"] == {
        "Sub": "repo:${GitHubRepository}:ref:refs/heads/main"
    }
    assert "StringLike" not in trust["Condition"]
