"""The CloudFormation execution role in deploy/aws/github-oidc.yaml can create, update and delete every resource
template.yaml makes (issue #14 item 2: the CI deploy rolled back on lambda:CreateEventSourceMapping, and VPC
functions need ec2:Describe*).

For every resource of template.yaml after the SAM transform, in each parameter variant (default, and in a VPC with
OpenSearch), every permission its CloudFormation handlers list (resource provider schema, `handlers.create|update|
delete.permissions`) must be allowed by the role: on "*" when the Service Authorization Reference gives the action
no resource type, else on the ARN of the resource it acts on (the resource itself, or the role, key, function or
package object the resource refers to). Permissions a schema lists for features this stack does not use are
allowed in ALLOWANCES below, each with its reason; new resource types are picked up automatically.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from tests.iam_model import (
    ACCOUNT,
    BOOTSTRAP,
    BOOTSTRAP_STACK,
    PARTITION,
    REGION,
    TEMPLATE,
    Privilege,
    Stack,
    arn_regex,
    as_list,
    handler_permissions,
    load_cfn,
    own_resource_type,
    policy_allows,
    privilege,
)

# The stack's parameters in each variant the role must support (issue #14: VectorSubnetIds set; VectorStore
# opensearch). Keys the template does not declare are ignored, so the lead can rename freely.
VARIANTS: dict[str, dict[str, str]] = {
    "default": {"TrainingImage": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/readmit-training:0123456789ab"},
    "vpc-endpoints-opensearch-serverless": {
        "VectorSubnetIds": "subnet-0a1b2c3d4e5f60718,subnet-0f1e2d3c4b5a69788",
        "VectorSecurityGroupIds": "sg-0123456789abcdef0",
        "VectorVpcId": "vpc-0123456789abcdef0",
        "VectorRouteTableIds": "rtb-0123456789abcdef0",
        "VpcEndpoints": "create",
        "VectorStore": "opensearch",
        "OpenSearchEndpoint": "https://0123456789abcdefghij.us-east-1.aoss.amazonaws.com",
        "OpenSearchCollectionName": "readmit-patients",
    },
    "vpc-qdrant": {
        "VectorSubnetIds": "subnet-0a1b2c3d4e5f60718",
        "VectorSecurityGroupIds": "sg-0123456789abcdef0",
        "VectorVpcId": "vpc-0123456789abcdef0",
        "VpcEndpoints": "existing",
        "VectorStore": "qdrant",
        "QdrantUrl": "http://qdrant.readmit.internal:6333",
    },
    "opensearch-domain": {
        "VectorStore": "opensearch",
        "OpenSearchEndpoint": "https://search-readmit-0123456789.us-east-1.es.amazonaws.com",
        "OpenSearchDomainName": "readmit-patients",
    },
}


@dataclass(frozen=True)
class Allowance:
    """A permission a schema lists that this stack's use of the type never calls, and why."""

    resource_type: str  # glob over CloudFormation types
    action: str  # glob over IAM actions
    reason: str
    needed_if: Callable[[Mapping[str, Any]], bool] | None = None  # on the resolved properties: then not allowed

    def covers(self, resource_type: str, action: str, props: Mapping[str, Any]) -> bool:
        if not (fnmatch.fnmatchcase(resource_type, self.resource_type) and fnmatch.fnmatch(action, self.action)):
            return False
        return not (self.needed_if and self.needed_if(props))


def _has(*keys: str) -> Callable[[Mapping[str, Any]], bool]:
    return lambda props: any(props.get(k) not in (None, "", [], {}) for k in keys)


NEWER_THAN_SAR_COPY = "not in parliament's copy of the Service Authorization Reference; "
# S3 operation names some schemas list that are not IAM actions: S3 authorizes them as the action given here (the
# "Permissions" paragraph of each operation in the S3 API reference, e.g.
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteBucketCors.html: "permission to perform the
# s3:PutBucketCORS action"). The role is checked for the action S3 really evaluates.
S3_OPERATION_ACTIONS = {
    "s3:DeleteBucketAnalyticsConfiguration": "s3:PutAnalyticsConfiguration",
    "s3:DeleteBucketCors": "s3:PutBucketCORS",
    "s3:DeleteBucketEncryption": "s3:PutEncryptionConfiguration",
    "s3:DeleteBucketLifecycle": "s3:PutLifecycleConfiguration",
    "s3:DeleteBucketMetricsConfiguration": "s3:PutMetricsConfiguration",
    "s3:DeleteBucketReplication": "s3:PutReplicationConfiguration",
    "s3:PutBucketReplication": "s3:PutReplicationConfiguration",
    "s3:PutObjectLockConfiguration": "s3:PutBucketObjectLockConfiguration",
}
ALLOWANCES: tuple[Allowance, ...] = (
    # -- Lambda
    Allowance(
        "AWS::Lambda::Function", "ec2:Describe*", "VPC validation: called only with VpcConfig", _has("VpcConfig")
    ),
    Allowance("AWS::Lambda::Function", "elasticfilesystem:*", "only with FileSystemConfigs", _has("FileSystemConfigs")),
    Allowance(
        "AWS::Lambda::Function", "s3files:*", "only with S3 Files mounts (FileSystemConfigs)", _has("FileSystemConfigs")
    ),
    Allowance(
        "AWS::Lambda::Function",
        "lambda:*CodeSigningConfig",
        "only with CodeSigningConfigArn",
        _has("CodeSigningConfigArn"),
    ),
    Allowance("AWS::Lambda::Function", "lambda:GetLayerVersion", "reads layers: only with Layers", _has("Layers")),
    Allowance(
        "AWS::Lambda::Function",
        "lambda:PassCapacityProvider",
        NEWER_THAN_SAR_COPY + "only with CapacityProviderConfig",
        _has("CapacityProviderConfig"),
    ),
    Allowance(
        "AWS::Lambda::Function", "lambda:AssociateRuntimeAlias", NEWER_THAN_SAR_COPY + "no runtime alias is used"
    ),
    Allowance(
        "AWS::CodeDeploy::DeploymentGroup",
        "codedeploy:RegisterOnPremisesInstance",
        "on-premises instances belong to EC2/on-premises deployment groups; SAM's Lambda groups name none",
        _has("OnPremisesInstanceTagFilters"),
    ),
    Allowance(
        "AWS::Lambda::Version",
        "lambda:PutFunctionScalingConfig",
        NEWER_THAN_SAR_COPY + "only with FunctionScalingConfig (capacity providers), which no version sets",
        _has("FunctionScalingConfig"),
    ),
    Allowance(
        "AWS::Lambda::Function",
        "lambda:PutFunctionScalingConfig",
        NEWER_THAN_SAR_COPY + "only with FunctionScalingConfig",
        _has("FunctionScalingConfig"),
    ),
    Allowance(
        "AWS::Lambda::EventSourceMapping",
        "kms:*",
        "only with KmsKeyArn (filter criteria encryption)",
        _has("KmsKeyArn"),
    ),
    # -- IAM and API Gateway
    Allowance(
        "AWS::IAM::Role", "iam:*RolePermissionsBoundary", "only with PermissionsBoundary", _has("PermissionsBoundary")
    ),
    Allowance(
        "AWS::ApiGateway::RestApi", "apigateway:UpdateRestApiPolicy", "only with a resource Policy", _has("Policy")
    ),
    Allowance(
        "AWS::ApiGateway::RestApi",
        "s3:*",
        "reads BodyS3Location: SAM inlines the definition here",
        _has("BodyS3Location"),
    ),
    # -- DynamoDB: import from S3, Kinesis streaming, global-table replicas and contributor insights are not used
    Allowance(
        "AWS::DynamoDB::Table",
        "dynamodb:*Import*",
        "only with ImportSourceSpecification",
        _has("ImportSourceSpecification"),
    ),
    Allowance(
        "AWS::DynamoDB::Table",
        "s3:*",
        "reads the import source: only with ImportSourceSpecification",
        _has("ImportSourceSpecification"),
    ),
    Allowance(
        "AWS::DynamoDB::Table",
        "logs:*",
        "import logs: only with ImportSourceSpecification",
        _has("ImportSourceSpecification"),
    ),
    Allowance(
        "AWS::DynamoDB::Table", "kinesis:*", "only with KinesisStreamSpecification", _has("KinesisStreamSpecification")
    ),
    Allowance(
        "AWS::DynamoDB::Table",
        "dynamodb:*TableReplica",
        NEWER_THAN_SAR_COPY + "global-table replicas only (AWS::DynamoDB::GlobalTable)",
    ),
    Allowance(
        "AWS::DynamoDB::Table",
        "iam:CreateServiceLinkedRole",
        "contributor insights and replicas only",
        _has("ContributorInsightsSpecification"),
    ),
    # -- Cognito: Cognito's default email (no SES identity), no analytics, a prefix domain, no custom attributes
    Allowance(
        "AWS::Cognito::UserPool",
        "iam:CreateServiceLinkedRole",
        "the SES email role: only with EmailConfiguration (DEVELOPER sending)",
        _has("EmailConfiguration"),
    ),
    Allowance(
        "AWS::Cognito::UserPoolClient",
        "iam:CreateServiceLinkedRole",
        "only with AnalyticsConfiguration (Amazon Pinpoint)",
        _has("AnalyticsConfiguration"),
    ),
    Allowance(
        "AWS::Cognito::UserPoolDomain",
        "cloudfront:*",
        "only with a custom domain (CustomDomainConfig)",
        _has("CustomDomainConfig"),
    ),
    Allowance(
        "AWS::Cognito::UserPool",
        "cognito-idp:AddCustomAttributes",
        "custom attributes: only with a Schema",
        _has("Schema"),
    ),
    # -- S3: buckets are tagged through PutBucketTagging; no metadata tables, replication, object lock or website
    Allowance(
        "AWS::S3::Bucket",
        "s3tables:*",
        "only with MetadataTableConfiguration",
        _has("MetadataTableConfiguration", "MetadataConfiguration"),
    ),
    Allowance(
        "AWS::S3::Bucket",
        "s3:*BucketMetadata*",
        "only with MetadataTableConfiguration",
        _has("MetadataTableConfiguration", "MetadataConfiguration"),
    ),
    Allowance(
        "AWS::S3::Bucket", "s3:TagResource", NEWER_THAN_SAR_COPY + "for buckets; tags go through s3:PutBucketTagging"
    ),
    Allowance(
        "AWS::S3::Bucket", "s3:UntagResource", NEWER_THAN_SAR_COPY + "for buckets; tags go through s3:PutBucketTagging"
    ),
    Allowance(
        "AWS::S3::Bucket", "s3:PutBucketAbac", NEWER_THAN_SAR_COPY + "attribute-based access control is not enabled"
    ),
    Allowance(
        "AWS::S3::Bucket",
        "iam:PassRole",
        "the replication role: only with ReplicationConfiguration",
        _has("ReplicationConfiguration"),
    ),
    # -- CloudWatch Logs: no data protection, index, delivery or bearer-token policies on the stack's log groups
    Allowance("AWS::Logs::LogGroup", "s3:REST.PUT.OBJECT", "not an IAM action (a schema artefact)"),
    Allowance("AWS::Logs::LogGroup", "firehose:*", "only with a Firehose delivery (not used)"),
    Allowance("AWS::Logs::LogGroup", "logs:*IndexPolic*", "only with FieldIndexPolicies", _has("FieldIndexPolicies")),
    Allowance(
        "AWS::Logs::LogGroup",
        "logs:DeleteResourcePolicy",
        "only with ResourcePolicyDocument",
        _has("ResourcePolicyDocument"),
    ),
    Allowance(
        "AWS::Logs::LogGroup",
        "logs:PutBearerTokenAuthentication",
        NEWER_THAN_SAR_COPY + "only with BearerTokenAuthenticationEnabled",
        _has("BearerTokenAuthenticationEnabled"),
    ),
    Allowance(
        "AWS::Logs::LogGroup",
        "logs:PutLogGroupDeletionProtection",
        NEWER_THAN_SAR_COPY + "only with DeletionProtectionEnabled",
        _has("DeletionProtectionEnabled"),
    ),
    # -- SNS: delivery-status logging roles are not used
    Allowance(
        "AWS::SNS::Topic",
        "iam:*",
        "delivery status logging roles only (DeliveryStatusLogging)",
        _has("DeliveryStatusLogging"),
    ),
    Allowance(
        "AWS::SNS::Topic",
        "sns:Unsubscribe",
        "only with inline Subscription (none: subscribers are added later)",
        _has("Subscription"),
    ),
    # -- WAF: the stack logs to CloudWatch Logs in its own account and associates API Gateway stages only
    Allowance("AWS::WAFv2::WebACL", "payments:*", NEWER_THAN_SAR_COPY + "AWS Marketplace managed rule groups only"),
    Allowance("AWS::WAFv2::WebACLAssociation", "elasticloadbalancing:*", "associates API Gateway stages only"),
    Allowance("AWS::WAFv2::WebACLAssociation", "appsync:*", "associates API Gateway stages only"),
    Allowance("AWS::WAFv2::WebACLAssociation", "cognito-idp:*", "associates API Gateway stages only"),
    Allowance("AWS::WAFv2::WebACLAssociation", "apprunner:*", "associates API Gateway stages only"),
    Allowance("AWS::WAFv2::WebACLAssociation", "amplify:*", "associates API Gateway stages only"),
    Allowance("AWS::WAFv2::WebACLAssociation", "ec2:*VerifiedAccess*", "associates API Gateway stages only"),
    Allowance("AWS::WAFv2::WebACLAssociation", "bedrock-agentcore:*", "associates API Gateway stages only"),
    Allowance("AWS::WAFv2::WebACLAssociation", "wafv2:*PermissionPolicy", "rule groups shared across accounts only"),
    Allowance("AWS::WAFv2::LoggingConfiguration", "firehose:*", "logs to a CloudWatch Logs group, not Firehose"),
    Allowance("AWS::WAFv2::LoggingConfiguration", "s3:*", "logs to a CloudWatch Logs group, not S3"),
    Allowance(
        "AWS::WAFv2::LoggingConfiguration", "iam:*", "Firehose's service-linked role and Organizations: not used"
    ),
    # -- VPC endpoints: no VPC Lattice service networks, no cross-region endpoints
    Allowance("AWS::EC2::VPCEndpoint", "vpc-lattice:*", "only for ServiceNetwork endpoints", _has("ServiceNetworkArn")),
    Allowance("AWS::EC2::VPCEndpoint", "vpce:AllowMultiRegion", "only with ServiceRegion", _has("ServiceRegion")),
)


def _execution_role_statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    bootstrap = Stack(template, {}, BOOTSTRAP_STACK)
    role = bootstrap.resolve(template["Resources"]["CloudFormationExecutionRole"]["Properties"])
    return [s for p in role["Policies"] for s in as_list(p["PolicyDocument"]["Statement"])]


@functools.cache
def _stack(variant: str) -> Stack:
    from tests.iam_model import translate

    template = load_cfn(TEMPLATE)
    known = {k: v for k, v in VARIANTS[variant].items() if k in template.get("Parameters", {})}
    return Stack(translate(template, known), known)


@dataclass(frozen=True)
class Need:
    logical: str
    resource_type: str
    handler: str
    action: str
    arn: str  # "*" when the action has no resource type; "" when the SAR copy does not know the action


def _locations(props: Any) -> list[str]:
    """ARNs a resource's resolved properties point at beyond its Refs: the package bucket's objects and the image
    repository (code and definitions), ARNs written out with !Sub, and EC2 IDs (subnets, security groups, route
    tables and VPCs are properties by ID, but IAM authorizes them by ARN)."""
    found: list[str] = []
    if isinstance(props, dict):
        for b, k in (("S3Bucket", "S3Key"), ("Bucket", "Key")):
            if isinstance(props.get(b), str) and isinstance(props.get(k), str):
                found.append(f"arn:{PARTITION}:s3:::{props[b]}/{props[k]}")
        for value in props.values():
            found += _locations(value)
    elif isinstance(props, list):
        for value in props:
            found += _locations(value)
    elif isinstance(props, str):
        ecr = re.match(r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([^:@]+)", props)
        ec2 = re.fullmatch(r"(subnet|sg|rtb|vpc)-[0-9a-f]+", props)
        if ecr:
            found.append(f"arn:{PARTITION}:ecr:{ecr.group(2)}:{ecr.group(1)}:repository/{ecr.group(3)}")
        elif ec2:
            kind = {"subnet": "subnet", "sg": "security-group", "rtb": "route-table", "vpc": "vpc"}[ec2.group(1)]
            found.append(f"arn:{PARTITION}:ec2:{REGION}:{ACCOUNT}:{kind}/{props}")
        elif props.startswith("arn:"):
            found.append(props)
    return found


def _generic_arn(arn_format: str, stack: Stack) -> str:
    """A resource of the stack that the template does not name: a generated name, or an ID the service chose."""

    def value(m: re.Match[str]) -> str:
        var = m.group(1)
        fixed = {"Partition": PARTITION, "Region": REGION, "Account": ACCOUNT, "Scope": "regional"}
        if var in fixed:
            return fixed[var]
        return "0123456789abcdef" if var.endswith(("Id", "ID", "UUID")) else f"{stack.name}-Resource-0123456789AB"

    return re.sub(r"\$\{([^}]+)\}", value, arn_format)


def _retained(resource: Mapping[str, Any]) -> bool:
    """DeletionPolicy and UpdateReplacePolicy Retain: CloudFormation never calls the delete handler."""
    return resource.get("DeletionPolicy") == "Retain" and resource.get("UpdateReplacePolicy") == "Retain"


def _arns_for(priv: Privilege, own: str | None, own_arn: str, candidates: list[str], stack: Stack) -> list[str]:
    """The ARNs IAM authorizes an action on, for one resource. With required resource types (Create*, Delete*,
    Associate*): each required type, plus each optional type the request names (subnets of a VPC endpoint).
    Without (TagResource and the like take any one of several types): the resource itself, else what it refers
    to. A type nothing refers to is a resource of the stack the template does not name (_generic_arn)."""
    names = [n for n, _ in priv.resource_types]
    required = [n for n, req in priv.resource_types if req]

    def matching(name: str) -> list[str]:
        fmt = priv.arn_formats.get(name)
        return [c for c in candidates if fmt and arn_regex(fmt).match(c)] if name != own else [own_arn]

    if not required:
        if own in names:
            return [own_arn]
        found = [arn for n in names for arn in matching(n)]
        return found or [_generic_arn(priv.arn_formats[names[0]], stack)]
    arns: list[str] = []
    for name in names:
        found = matching(name)
        arns += found or ([_generic_arn(priv.arn_formats[name], stack)] if name in required else [])
    return arns


def needs(stack: Stack, used: set[Allowance] | None = None) -> list[Need]:
    """Every (resource, handler, action, ARN) the execution role must allow for this stack."""
    out: list[Need] = []
    for logical, resource in stack.resources.items():
        kind = resource["Type"]
        props = stack.resolve(resource.get("Properties", {}))
        own = own_resource_type(kind)
        own_arn = stack.arn(logical)
        referenced = [stack.arn(x) for x in sorted(stack.references(resource.get("Properties", {})))]
        candidates = sorted({*referenced, *_locations(props)} - {own_arn})
        for handler, actions in handler_permissions(kind).items():
            if handler == "delete" and _retained(resource):
                continue
            for listed in actions:
                action = S3_OPERATION_ACTIONS.get(listed, listed)
                allowance = next((a for a in ALLOWANCES if a.covers(kind, action, props)), None)
                if allowance:
                    if used is not None:
                        used.add(allowance)
                    continue
                priv = privilege(action)
                if priv is None:
                    out.append(Need(logical, kind, handler, action, ""))
                elif priv.needs_star:
                    out.append(Need(logical, kind, handler, action, "*"))
                else:
                    arns = _arns_for(priv, own, own_arn, candidates, stack)
                    out += [Need(logical, kind, handler, action, arn) for arn in arns]
    return out


def missing(statements: list[dict[str, Any]], stack: Stack) -> list[str]:
    gaps = []
    for need in needs(stack):
        if not need.arn:
            gaps.append(f"{need.action} ({need.resource_type}): unknown to the SAR copy; add an allowance or update")
        elif not policy_allows(statements, need.action, need.arn):
            gaps.append(f"{need.action} on {need.arn} ({need.resource_type} {need.logical}, {need.handler})")
    return sorted(set(gaps))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.slow
def test_the_execution_role_allows_every_handler_permission_of_every_resource(variant: str) -> None:
    gaps = missing(_execution_role_statements(load_cfn(BOOTSTRAP)), _stack(variant))
    assert not gaps, "\n".join(gaps)


@pytest.mark.slow
def test_the_check_catches_the_ci_rollback_and_the_vpc_lookups() -> None:
    """Issue #14 item 2 as it was: without the event source mapping grant and the EC2 lookups, the check fails on
    exactly those (the VPC ones only when the functions are in a VPC)."""
    kept = [
        s
        for s in _execution_role_statements(load_cfn(BOOTSTRAP))
        if not any(a in ("lambda:CreateEventSourceMapping", "ec2:DescribeSubnets") for a in as_list(s["Action"]))
    ]
    default = missing(kept, _stack("default"))
    in_vpc = missing(kept, _stack("vpc-qdrant"))
    assert default == [
        "lambda:CreateEventSourceMapping on * (AWS::Lambda::EventSourceMapping EmbedderFunctionIngest, create)"
    ]
    assert default[0] in in_vpc
    described = {g.split(" on ")[0] for g in in_vpc if g.startswith("ec2:")}
    assert described == {
        "ec2:DescribeSubnets",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeVpcs",
        "ec2:DescribeNetworkInterfaces",
    }


@pytest.mark.slow
def test_the_role_is_checked_against_the_resources_each_variant_creates() -> None:
    """The variants do switch the template's conditions (else the test above would prove little)."""
    kinds = {v: {r["Type"] for r in _stack(v).resources.values()} for v in VARIANTS}
    assert "AWS::Lambda::EventSourceMapping" in kinds["default"]
    assert (
        "AWS::EC2::VPCEndpoint" not in kinds["default"]
        and "AWS::EC2::VPCEndpoint" in kinds["vpc-endpoints-opensearch-serverless"]
    )
    vpc_functions = [
        k
        for k, r in _stack("vpc-qdrant").resources.items()
        if r["Type"] == "AWS::Lambda::Function" and _stack("vpc-qdrant").resolve(r["Properties"]).get("VpcConfig")
    ]
    assert len(vpc_functions) >= 2  # the API and the embedder reach the vector store


def test_vpc_endpoints_are_only_for_services_the_role_names() -> None:
    """The role creates endpoints only for named services (ec2:VpceServiceName); the template may not need more."""
    [statement] = [
        s for s in _execution_role_statements(load_cfn(BOOTSTRAP)) if s.get("Sid") == "VpcEndpointsOfTheseServices"
    ]
    allowed = set(statement["Condition"]["StringEqualsIfExists"]["ec2:VpceServiceName"])
    for variant in VARIANTS:
        stack = _stack(variant)
        for r in stack.resources.values():
            if r["Type"] == "AWS::EC2::VPCEndpoint":
                assert stack.resolve(r["Properties"]["ServiceName"]) in allowed, variant


@pytest.mark.slow
def test_every_allowance_has_a_reason_and_is_still_needed() -> None:
    used: set[Allowance] = set()
    for variant in VARIANTS:
        needs(_stack(variant), used)
    assert all(len(a.reason) >= 20 for a in ALLOWANCES)
    stale = [(a.resource_type, a.action) for a in ALLOWANCES if a not in used]
    assert not stale, f"allowances no resource uses any more (remove them): {stale}"
