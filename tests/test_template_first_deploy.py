"""template.yaml against the limits and contracts AWS documents, read the way CloudFormation and IAM will read them on
the first deploy (issue #14): parameter ranges within the properties they feed, concurrency that fits an account,
stateful resources that outlive the stack, Bedrock inference profiles, OpenSearch and the VPC option."""

from __future__ import annotations

import fnmatch
import functools
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.iam_model import NO_VALUE, Stack, as_list, load_cfn, translate

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/readmit-training@sha256:" + "0" * 64
BASE = {"TrainingImage": IMAGE}
VPC = {
    **BASE,
    "VectorSubnetIds": "subnet-0a,subnet-0b",
    "VectorSecurityGroupIds": "sg-0a",
    "VectorVpcId": "vpc-0a",
    "VectorRouteTableIds": "rtb-0a",
    "QdrantUrl": "https://qdrant.internal.example:6333",
}
SERVERLESS = {
    **BASE,
    "VectorStore": "opensearch",
    "OpenSearchEndpoint": "https://abc123xyz.us-east-1.aoss.amazonaws.com",
    "OpenSearchCollectionName": "readmit-patients",
}
DOMAIN = {
    **BASE,
    "VectorStore": "opensearch",
    "OpenSearchEndpoint": "https://search-readmit-abc.us-east-1.es.amazonaws.com",
    "OpenSearchDomainName": "readmit",
}
# Lambda keeps at least 100 executions unreserved per account and Region, and an account starts with 1,000
# ("Lambda function scaling" / "Configuring reserved concurrency", AWS Lambda developer guide).
ACCOUNT_CONCURRENCY, UNRESERVED_MINIMUM = 1000, 100
STATEFUL = ("AWS::KMS::Key", "AWS::DynamoDB::Table", "AWS::SecretsManager::Secret", "AWS::Logs::LogGroup",
            "AWS::SQS::Queue", "AWS::S3::Bucket")  # fmt: skip


@functools.cache
def raw() -> dict[str, Any]:
    return load_cfn(TEMPLATE)


@functools.cache
def stack(**parameters: str) -> Stack:
    return Stack(translate(raw(), parameters), parameters)


def stack_of(parameters: Mapping[str, str]) -> Stack:
    return stack(**parameters)


# ---- parameter ranges against the resource schemas ----------------------------------------------------------------
def provider_schema(resource_type: str) -> dict[str, Any] | None:
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER, ResourceNotFoundError

    try:
        return PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", resource_type).schema
    except ResourceNotFoundError:  # a type cfn-lint has no schema for has no bounds to check
        return None


def _deref(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = functools.reduce(lambda n, k: n[k], node["$ref"].lstrip("#/").split("/"), schema)
    return node


def parameter_uses(node: Any, schema: dict[str, Any], here: dict[str, Any], path: str) -> Iterator[tuple]:
    """(parameter, property path, property schema) for every property whose value is a bare Ref to a parameter."""
    if isinstance(node, dict) and set(node) == {"Ref"}:
        yield node["Ref"], path, here
    elif isinstance(node, dict):
        props = _deref(schema, here).get("properties", {})
        for key, value in node.items():
            if key in props:
                yield from parameter_uses(value, schema, _deref(schema, props[key]), f"{path}.{key}")
    elif isinstance(node, list):
        items = _deref(schema, here).get("items", {})
        for value in node:
            yield from parameter_uses(value, schema, _deref(schema, items) if items else {}, f"{path}[]")


@pytest.mark.slow
def test_every_number_parameter_stays_within_the_documented_range_of_the_properties_it_feeds() -> None:
    """EmbedderConcurrency = 1 once passed every check and failed the deploy: an SQS event source's
    ScalingConfig.MaximumConcurrency takes 2-1000. The SAM-generated resources are included (that property only
    exists after the transform)."""
    template = stack_of(BASE).template
    parameters = template["Parameters"]
    checked, problems = 0, []
    for logical, resource in template["Resources"].items():
        schema = provider_schema(resource["Type"])
        if not schema:
            continue
        for name, path, prop in parameter_uses(resource.get("Properties", {}), schema, schema, logical):
            spec = parameters.get(name)
            if not spec or spec["Type"] != "Number" or not ({"minimum", "maximum"} & set(prop)):
                continue
            checked += 1
            low, high = spec.get("MinValue"), spec.get("MaxValue")
            if "minimum" in prop and (low is None or float(low) < prop["minimum"]):
                problems.append(f"{name} feeds {path} (minimum {prop['minimum']}) but allows {low}")
            if "maximum" in prop and (high is None or float(high) > prop["maximum"]):
                problems.append(f"{name} feeds {path} (maximum {prop['maximum']}) but allows {high}")
    assert checked >= 2, "the walk found no bounded property fed by a parameter"
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_the_range_check_catches_the_old_embedder_concurrency() -> None:
    template = stack_of(BASE).template
    mapping = next(r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::EventSourceMapping")
    schema = provider_schema("AWS::Lambda::EventSourceMapping")
    parameters = template["Parameters"]
    uses = [u for u in parameter_uses(mapping["Properties"], schema, schema, "EmbedderIngest") if u[0] in parameters]
    assert [(n, p) for n, p, _ in uses] == [("EmbedderConcurrency", "EmbedderIngest.ScalingConfig.MaximumConcurrency")]
    assert uses[0][2]["minimum"] == 2  # the old MinValue 1 is below it


# ---- concurrency --------------------------------------------------------------------------------------------------
def reserved(parameters: Mapping[str, Any]) -> int:
    total = 0
    for resource in raw()["Resources"].values():
        value = resource.get("Properties", {}).get("ReservedConcurrentExecutions")
        if isinstance(value, dict):
            value = parameters[value["Ref"]]
        total += int(value or 0)
    return total


def test_reserved_concurrency_leaves_the_unreserved_minimum_even_at_every_parameters_maximum() -> None:
    params = raw()["Parameters"]
    at_max = {k: v.get("MaxValue", v.get("Default")) for k, v in params.items()}
    assert reserved(at_max) <= ACCOUNT_CONCURRENCY - UNRESERVED_MINIMUM


def test_the_readme_states_the_reserved_concurrency_the_template_reserves_by_default() -> None:
    defaults = {k: v.get("Default") for k, v in raw()["Parameters"].items()}
    total = reserved(defaults)
    stated = re.findall(r"reserves\s+(\d[\d,]*)\s+concurrent\s+executions", (ROOT / "README.md").read_text())
    assert stated, "README.md must say how many concurrent executions the stack reserves"
    assert {int(s.replace(",", "")) for s in stated} == {total}


# ---- nothing stateful is deleted with the stack -------------------------------------------------------------------
@pytest.mark.parametrize("parameters", [BASE, VPC, SERVERLESS], ids=["default", "vpc-qdrant", "opensearch"])
def test_stateful_resources_are_retained_on_delete_and_on_replacement(parameters: dict[str, str]) -> None:
    loose = [
        logical
        for logical, r in raw()["Resources"].items()
        if r["Type"] in STATEFUL and (r.get("DeletionPolicy") != "Retain" or r.get("UpdateReplacePolicy") != "Retain")
    ]
    assert not loose, f"not retained: {loose}"
    assert any(stack_of(parameters).resource_type(k) == "AWS::KMS::Key" for k in stack_of(parameters).resources)


@pytest.mark.slow
def test_cfn_lint_finds_no_stateful_resource_without_policies() -> None:
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    done = subprocess.run(
        [str(cfn_lint), "--include-checks", "I3011", "--format", "parseable", "--", str(TEMPLATE)],
        capture_output=True,
        text=True,
    )
    assert "I3011" not in done.stdout, done.stdout


# ---- IAM evaluation with conditions, for the statements below -------------------------------------------------------
def _matches(pattern: str, value: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def role_statements(s: Stack, role: str) -> list[dict[str, Any]]:
    statements = []
    for policy in s.props(role).get("Policies", []):
        document = s.resolve(policy["PolicyDocument"])
        statements += [x for x in as_list(document["Statement"]) if x is not NO_VALUE]
    return statements


def allowed(statements: list[dict[str, Any]], action: str, resource: str, context: Mapping[str, str]) -> bool:
    """IAM's evaluation for Allow statements with StringEquals/StringLike/ArnLike conditions (no Deny here)."""

    def conditions_hold(statement: Mapping[str, Any]) -> bool:
        for operator, pairs in statement.get("Condition", {}).items():
            for key, expected in pairs.items():
                actual = context.get(key)
                if actual is None:
                    return False
                glob = operator in ("StringLike", "ArnLike")
                if not any(_matches(e, actual) if glob else e == actual for e in as_list(expected)):
                    return False
        return True

    return any(
        s.get("Effect") == "Allow"
        and any(_matches(a.lower(), action.lower()) for a in as_list(s["Action"]))
        and any(_matches(r, resource) for r in as_list(s["Resource"]))
        and conditions_hold(s)
        for s in statements
    )


# ---- Bedrock: foundation models and cross-Region inference profiles ----------------------------------------------
PROFILE = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
PROFILE_REGIONS = ("us-east-1", "us-east-2", "us-west-2")  # where the US profile routes (Bedrock user guide)


def test_chat_through_an_inference_profile_is_allowed_in_every_region_it_routes_to() -> None:
    """Bedrock authorizes a profile call twice: on the profile's ARN and on the foundation model in the Region the
    request lands in, with bedrock:InferenceProfileArn in the context ("Prerequisites for inference profiles")."""
    s = stack_of({**BASE, "ChatModelId": PROFILE})
    statements = role_statements(s, "ApiFunctionRole")
    profile_arn = f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{PROFILE}"
    assert allowed(statements, "bedrock:InvokeModel", profile_arn, {})
    base_model = PROFILE.split(".", 1)[1]
    for region in PROFILE_REGIONS:
        arn = f"arn:aws:bedrock:{region}::foundation-model/{base_model}"
        assert allowed(statements, "bedrock:InvokeModel", arn, {"bedrock:InferenceProfileArn": profile_arn}), region
        # ... but never directly, outside the profile
        if region != "us-east-1":
            assert not allowed(statements, "bedrock:InvokeModel", arn, {})


def test_a_foundation_model_id_still_works_and_other_profiles_do_not() -> None:
    model = "anthropic.claude-3-haiku-20240307-v1:0"
    statements = role_statements(stack_of({**BASE, "ChatModelId": model}), "ApiFunctionRole")
    assert allowed(statements, "bedrock:InvokeModel", f"arn:aws:bedrock:us-east-1::foundation-model/{model}", {})
    other = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-70b-instruct-v1:0"
    assert not allowed(statements, "bedrock:InvokeModel", other, {})
    assert not allowed(statements, "bedrock:InvokeModel", "arn:aws:bedrock:us-west-2::foundation-model/meta.llama3", {})


# ---- OpenSearch ------------------------------------------------------------------------------------------------------
def test_opensearch_serverless_gets_iam_and_a_data_access_policy_for_both_roles() -> None:
    s = stack_of(SERVERLESS)
    collection = "arn:aws:aoss:us-east-1:123456789012:collection/abc123xyz"
    for role in ("ApiFunctionRole", "EmbedderFunctionRole"):
        assert allowed(role_statements(s, role), "aoss:APIAccessAll", collection, {}), role
    policies = [k for k in s.resources if s.resource_type(k) == "AWS::OpenSearchServerless::AccessPolicy"]
    assert len(policies) == 1
    import json

    rules = json.loads(s.resolve(s.props(policies[0])["Policy"]))
    principals = {p for rule in rules for p in rule["Principal"]}
    assert principals == {s.getatt("ApiFunctionRole", "Arn"), s.getatt("EmbedderFunctionRole", "Arn")}
    granted = {
        (p, perm)
        for rule in rules
        for p in rule["Principal"]
        for r in rule["Rules"]
        if r["ResourceType"] == "index" and r["Resource"] == ["index/readmit-patients/*"]
        for perm in r["Permission"]
    }
    embedder = s.getatt("EmbedderFunctionRole", "Arn")
    api = s.getatt("ApiFunctionRole", "Arn")
    assert {(embedder, "aoss:CreateIndex"), (embedder, "aoss:WriteDocument"), (api, "aoss:ReadDocument")} <= granted
    assert (api, "aoss:WriteDocument") not in granted  # the API only searches


def test_an_opensearch_domain_gets_es_http_on_that_domain_only() -> None:
    s = stack_of(DOMAIN)
    index = "arn:aws:es:us-east-1:123456789012:domain/readmit/similar-patients/_search"
    assert allowed(role_statements(s, "ApiFunctionRole"), "es:ESHttpPost", index, {})
    assert allowed(role_statements(s, "EmbedderFunctionRole"), "es:ESHttpPut", index, {})
    assert not allowed(role_statements(s, "ApiFunctionRole"), "es:ESHttpPut", index, {})
    other = "arn:aws:es:us-east-1:123456789012:domain/someone-else/x/_search"
    assert not allowed(role_statements(s, "ApiFunctionRole"), "es:ESHttpPost", other, {})
    assert not any(s.resource_type(k).startswith("AWS::OpenSearchServerless") for k in s.resources)


def test_without_opensearch_no_role_gets_opensearch_access() -> None:
    s = stack_of(BASE)
    for role in ("ApiFunctionRole", "EmbedderFunctionRole"):
        actions = {a for st in role_statements(s, role) for a in as_list(st["Action"])}
        assert not {a for a in actions if a.startswith(("aoss:", "es:"))}, role


# ---- functions in a VPC ------------------------------------------------------------------------------------------
def test_functions_in_a_vpc_get_endpoints_for_s3_dynamodb_and_the_interface_services() -> None:
    s = stack_of(VPC)
    endpoints = {
        str(s.resolve(s.props(k)["ServiceName"])).rsplit(".", 1)[1]: s.props(k)["VpcEndpointType"]
        for k in s.resources
        if s.resource_type(k) == "AWS::EC2::VPCEndpoint"
    }
    assert endpoints["s3"] == endpoints["dynamodb"] == "Gateway"
    assert {k for k, v in endpoints.items() if v == "Interface"} >= {"secretsmanager", "bedrock-runtime"}
    in_vpc = [k for k in s.resources if s.resource_type(k) == "AWS::Lambda::Function" and s.props(k).get("VpcConfig")]
    assert len(in_vpc) == 2  # the API and the embedder, which reach the vector store


def test_with_existing_endpoints_or_without_a_vpc_none_are_created() -> None:
    for parameters in (BASE, {**VPC, "VpcEndpoints": "existing"}):
        s = stack_of(parameters)
        assert not [k for k in s.resources if s.resource_type(k) == "AWS::EC2::VPCEndpoint"]


def test_no_checkov_skip_claims_the_stack_has_no_vpc() -> None:
    """The stack has a VPC option (VectorSubnetIds); a skip reason that says otherwise misleads a reviewer."""
    text = TEMPLATE.read_text()
    assert not re.search(r"stack has no VPC|no function is in a VPC", text, flags=re.I)


def test_qdrant_gets_an_api_key_secret_the_api_and_embedder_may_read() -> None:
    s = stack_of(VPC)
    secrets = [k for k in s.resources if s.resource_type(k) == "AWS::SecretsManager::Secret" and "Qdrant" in k]
    assert secrets == ["QdrantApiKeySecret"]
    arn = s.ref("QdrantApiKeySecret")
    for function, role in (("ApiFunction", "ApiFunctionRole"), ("EmbedderFunction", "EmbedderFunctionRole")):
        assert allowed(role_statements(s, role), "secretsmanager:GetSecretValue", arn, {})
        env = s.resolve(s.props(function)["Environment"]["Variables"])
        assert env["READMIT_QDRANT_API_KEY_SECRET"] == arn
    assert "QdrantApiKeySecret" not in stack_of(BASE).resources  # Qdrant not configured: no secret


# ---- every function that hashes identifiers hashes them alike ----------------------------------------------------
def test_every_function_whose_code_hashes_identifiers_gets_the_stacks_salt() -> None:
    """Without READMIT_ID_SALT_SECRET a function hashes with a random per-container salt: the drift monitor once
    hashed outcome ids that could never join the API's audit records, so the realized-AUC alarm could not fire."""
    from tests.iam_actions import _template, code_calls

    template = _template()
    hashing = [
        f
        for f in template.functions()
        if "chalicelib.core.identifiers" in (calls := code_calls(template, f)).modules
        and ("secretsmanager", "GetSecretValue") in calls.operations()  # reaches the salt's fetch, not just the module
    ]
    assert {"ApiFunction", "EmbedderFunction", "DriftMonitorFunction"} <= set(hashing)
    for function in hashing:
        env = template.properties(function).get("Environment", {}).get("Variables", {})
        assert env.get("READMIT_ID_SALT_SECRET") == {"Ref": "IdSaltSecret"}, function


def test_the_history_table_has_the_key_the_store_writes() -> None:
    """The store keys items by hashed encounter (no raw id); a table keyed otherwise rejects every write."""
    import boto3
    from moto import mock_aws

    from chalicelib.serving.history_store import DynamoDBHistoryStore

    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        DynamoDBHistoryStore("history", client, salt="s").create_table()
        table = client.describe_table(TableName="history")["Table"]
    props = raw()["Resources"]["HistoryTable"]["Properties"]
    assert props["KeySchema"] == table["KeySchema"]
    assert sorted(props["AttributeDefinitions"], key=str) == sorted(table["AttributeDefinitions"], key=str)
