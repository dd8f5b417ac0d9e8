"""parliament (an offline IAM linter with its own copy of the Service Authorization Reference) over every identity
and resource policy in template.yaml after the SAM transform (so SAM policy templates are expanded), in every
parameter variant of tests/test_deploy_role.py, and in deploy/aws/github-oidc.yaml. Intrinsics are resolved to
plausible ARNs first (tests/iam_model.py). No finding above LOW may remain, nor an unknown action or prefix (LOW
in parliament, but an action that does not exist grants nothing and hides a typo), except those in ALLOWED, each
with its reason. Trust policies are left out: parliament reads a statement without Resource as malformed."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.iam_model import BOOTSTRAP, BOOTSTRAP_STACK, Stack, import_parliament, load_cfn, policy_documents
from tests.test_deploy_role import VARIANTS, _stack

FAIL_ALWAYS = {"UNKNOWN_ACTION", "UNKNOWN_PREFIX"}


@dataclass(frozen=True)
class Finding:
    where: str  # "<template or variant> <logical ID> <policy>"
    issue: str
    severity: str
    detail: Any
    location: str = ""  # what parliament points at, e.g. the offending ARN


@dataclass(frozen=True)
class Allowed:
    issue: str
    applies: Callable[[Finding], bool]
    reason: str


def _actions(finding: Finding) -> set[str]:
    return {d["action"] for d in finding.detail} if isinstance(finding.detail, list) else set()


WILDCARD_SERVICES = {"lambda", "dynamodb", "sqs", "sns", "states", "events", "cloudwatch", "s3"}
WILDCARD_SERVICES |= {"wafv2", "logs", "kms", "secretsmanager"}
ALLOWED: tuple[Allowed, ...] = (
    Allowed(
        "RESOURCE_MISMATCH",
        lambda f: (
            "CloudFormationExecutionRole" in f.where and {a.split(":")[0] for a in _actions(f)} <= WILDCARD_SERVICES
        ),
        "The execution role grants whole services (lambda:*, s3:*, ...) on the stack's own ARNs; IAM matches "
        "Resource per action, so the actions of other resource types in the wildcard are simply not granted.",
    ),
    Allowed(
        "INVALID_ARN",
        lambda f: f.location.endswith(":aws:transform/Serverless-2016-10-31"),
        "The SAM transform's ARN has the literal account 'aws': arn:aws:cloudformation:<region>:aws:transform/"
        "Serverless-2016-10-31 (AWS SAM developer guide, 'Managing permissions with AWS CloudFormation').",
    ),
    Allowed(
        "RESOURCE_MISMATCH",
        lambda f: _actions(f) == {"bedrock:InvokeModel"},
        "Bedrock model and inference-profile IDs contain a colon (anthropic.claude-3-haiku-20240307-v1:0); "
        "parliament's strict check rejects any ':' in the resource part of an ARN.",
    ),
    Allowed(
        "RESOURCE_MISMATCH",
        lambda f: _actions(f) <= {"states:DescribeExecution", "states:StopExecution"} and "BatchScore" in f.where,
        "Distributed Map child executions are execution:<state machine>/<map run label>:<id> (Step Functions "
        "guide, 'IAM policies for using Distributed Map states'); parliament's copy only knows execution:<sm>:<id>.",
    ),
    Allowed(
        "UNKNOWN_CONDITION_FOR_ACTION",
        lambda f: "kms:EncryptionContext:aws:logs:arn" in str(f.detail) and "kms:Describe" in str(f.detail),
        "The key policy statement CloudWatch Logs documents for encrypted log groups grants kms:Describe* under the "
        "same kms:EncryptionContext:aws:logs:arn condition (CloudWatch Logs guide, encrypt-log-data-kms).",
    ),
    Allowed(
        "MISMATCHED_TYPE",
        lambda f: "ArnLike requires a value of type Arn but given String" in str(f.detail) and "DataKey" in f.where,
        "kms:EncryptionContext:aws:logs:arn holds an ARN; CloudWatch Logs' documented key policy matches it with an "
        "ARN operator. parliament types every encryption-context key as String.",
    ),
)


def _documents(stack: Stack, label: str) -> Iterator[tuple[str, dict[str, Any]]]:
    template = stack.template
    for logical, kind, document in policy_documents(template):
        if kind == "trust" or logical not in stack.resources:
            continue
        yield f"{label} {logical} {kind}", stack.resolve(document)


def analyze(where: str, document: dict[str, Any]) -> list[Finding]:
    parliament = import_parliament()
    policy = parliament.analyze_policy_string(json.dumps(document))
    out = []
    for raw in policy.findings:
        f = parliament.enhance_finding(raw)
        out.append(Finding(where, f.issue, f.severity, f.detail, str(f.location.get("string", ""))))
    return out


def failing(findings: list[Finding]) -> list[Finding]:
    return [
        f
        for f in findings
        if (f.severity not in ("LOW", "INFO") or f.issue in FAIL_ALWAYS)
        and not any(a.issue == f.issue and a.applies(f) for a in ALLOWED)
    ]


@functools.cache
def all_findings() -> list[Finding]:
    bootstrap = load_cfn(BOOTSTRAP)
    seen: set[str] = set()
    out: list[Finding] = []
    stacks = [(Stack(bootstrap, {}, BOOTSTRAP_STACK), "github-oidc.yaml")] + [(_stack(v), v) for v in VARIANTS]
    for stack, label in stacks:
        for where, document in _documents(stack, label):
            key = where.split(" ", 1)[1] + json.dumps(document, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out += analyze(where, document)
    return out


@pytest.mark.slow
def test_parliament_finds_nothing_above_low_in_either_template() -> None:
    bad = failing(all_findings())
    assert not bad, "\n".join(f"{f.where}: {f.issue} {f.severity} {json.dumps(f.detail)[:400]}" for f in bad)


def test_the_lint_sees_every_policy() -> None:
    """Roles of SAM functions and state machines, the bootstrap roles, key and bucket policies: all analyzed."""
    wheres = {f.where.split(" ")[1] for f in all_findings()}  # NO_VERSION etc. show what was read
    documents = [w for s, label in [(_stack("default"), "default")] for w, _ in _documents(s, label)]
    assert len(documents) > 40
    assert {"ApiFunctionRole", "EmbedderFunctionRole", "DataKey"} <= {d.split(" ")[1] for d in documents}
    assert "CloudFormationExecutionRole" in wheres


def test_every_allowance_still_matches_a_finding() -> None:
    findings = all_findings()
    for allowed in ALLOWED:
        assert any(f.issue == allowed.issue and allowed.applies(f) for f in findings), allowed.reason[:60]
    assert all(len(a.reason) >= 60 for a in ALLOWED)


@pytest.mark.parametrize(
    ("statement", "issue"),
    [
        ({"Effect": "Allow", "Action": "lambda:CreateFunctions", "Resource": "*"}, "UNKNOWN_ACTION"),
        ({"Effect": "Allow", "Action": "lamda:CreateFunction", "Resource": "*"}, "UNKNOWN_PREFIX"),
        (
            {
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": "arn:aws:dynamodb:us-east-1:123456789012:table/t",
            },
            "RESOURCE_MISMATCH",
        ),
        (
            {
                "Effect": "Allow",
                "Action": "sqs:SendMessage",
                "Resource": "arn:aws:sqs:us-east-1:123456789012:q",
                "Condition": {"StringEquals": {"s3:prefix": "x/"}},
            },
            "UNKNOWN_CONDITION_FOR_ACTION",
        ),
    ],
)
def test_the_lint_fails_a_bad_policy(statement: dict[str, Any], issue: str) -> None:
    findings = analyze("bad", {"Version": "2012-10-17", "Statement": [statement]})
    assert issue in {f.issue for f in failing(findings)}
