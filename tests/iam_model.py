"""Offline IAM model of the two CloudFormation templates, for tests/test_deploy_role.py and tests/test_iam_lint.py.

- template.yaml is translated by the SAM translator (samtranslator, installed with aws-sam-cli) exactly as
  `sam deploy` has CloudFormation do it, so SAM's generated roles, permissions and event source mappings and its
  expanded policy templates are what gets checked.
- Intrinsics are resolved to plausible physical values: names CloudFormation generates start with the stack name
  (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-properties-name.html); IDs the service
  chooses (KMS key IDs, API IDs, event source mapping UUIDs, VPC endpoint IDs) are random.
- ARN formats, resource types and condition keys come from parliament's offline copy of the Service
  Authorization Reference (parliament/iam_definition.json); the permissions CloudFormation needs per resource
  type come from the resource provider schemas cfn-lint ships (cfnlint/data/schemas, `handlers.*.permissions`).
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
BOOTSTRAP = ROOT / "deploy" / "aws" / "github-oidc.yaml"
REGION = "us-east-1"
ACCOUNT = "123456789012"
PARTITION = "aws"
STAGE = "dev"
APP_STACK = f"readmit-{STAGE}"  # deploy.yml: --stack-name "readmit-$STAGE"; StackPrefix defaults to readmit
BOOTSTRAP_STACK = "readmit-bootstrap"
NO_VALUE = object()


# ---- loading and translating ---------------------------------------------------------------------------------
def load_cfn(path: Path) -> dict[str, Any]:
    """The template with long-form intrinsics ({"Fn::Sub": ...}), as the SAM translator expects them."""
    from samcli.yamlhelper import yaml_parse

    return json.loads(json.dumps(yaml_parse(path.read_text())))


def package_bucket_name() -> str:
    """The bootstrap stack's PackageBucket (`sam deploy --s3-bucket`): a generated, lower-case name."""
    return Stack(load_cfn(BOOTSTRAP), {}, BOOTSTRAP_STACK).ref("PackageBucket")


def image_repository_uri() -> str:
    name = Stack(load_cfn(BOOTSTRAP), {}, BOOTSTRAP_STACK).ref("ImageRepository")
    return f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{name}"


def translate(template: dict[str, Any], parameters: Mapping[str, str]) -> dict[str, Any]:
    """template.yaml after the SAM transform, with code and definitions where `sam deploy` uploads them."""
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    template = copy.deepcopy(template)
    bucket, image = package_bucket_name(), image_repository_uri()
    for logical, resource in template["Resources"].items():
        props = resource.setdefault("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            if props.get("PackageType") == "Image":
                props["ImageUri"] = f"{image}:{logical.lower()}-0123456789ab"
            else:
                props["CodeUri"] = f"s3://{bucket}/0123456789abcdef{logical}"
        elif (resource["Type"] == "AWS::Serverless::StateMachine" and "DefinitionUri" in props) or (
            resource["Type"] == "AWS::Serverless::Api" and "DefinitionUri" in props
        ):
            props["DefinitionUri"] = f"s3://{bucket}/0123456789abcdef{logical}"
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = f"s3://{bucket}/0123456789abcdef{logical}"
    # SAM policy templates and managed policy names resolve offline; no AWS call is made.
    session = boto3.session.Session(region_name=REGION)
    translator = Translator(None, Parser(), boto_session=session)
    return translator.translate(template, parameter_values=dict(parameters), get_managed_policy_map=lambda: {})


# ---- the Service Authorization Reference (parliament's copy) ----------------------------------------------------
@dataclass(frozen=True)
class Privilege:
    action: str
    resource_types: tuple[tuple[str, bool], ...]  # (name, required) for each named resource type
    arn_formats: Mapping[str, str]  # resource type name -> ARN format, for the service

    @property
    def needs_star(self) -> bool:
        """No resource type: the action only accepts Resource "*"."""
        return not self.resource_types


def import_parliament() -> Any:
    """parliament, without the DeprecationWarnings its regex literals raise when first compiled. parliament 1.6
    finds its data files with pkg_resources.resource_filename, which setuptools 81+ no longer ships: a one-function
    stand-in does the same (the file beside the package's __init__.py)."""
    import importlib.util
    import sys
    import types
    import warnings

    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")

        def resource_filename(package: str, name: str) -> str:
            spec = importlib.util.find_spec(package)
            assert spec is not None and spec.origin is not None
            return str(Path(spec.origin).parent / name)

        shim.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import parliament
        import parliament.statement

    return parliament


@functools.cache
def _sar() -> dict[str, list[dict[str, Any]]]:
    path = Path(import_parliament().__file__).parent / "iam_definition.json"
    services: dict[str, list[dict[str, Any]]] = {}
    for service in json.loads(path.read_text()):
        services.setdefault(service["prefix"], []).append(service)
    return services


def privilege(action: str) -> Privilege | None:
    prefix, _, name = action.partition(":")
    types: dict[str, bool] = {}
    formats: dict[str, str] = {}
    found = False
    for service in _sar().get(prefix.lower(), []):  # some prefixes span two services (apigateway, iam)
        formats.update({r["resource"]: r["arn"] for r in service["resources"]})
        for p in service["privileges"]:
            if p["privilege"].lower() == name.lower():
                found = True
                for r in p["resource_types"]:
                    if r["resource_type"]:
                        key = r["resource_type"].rstrip("*")
                        types[key] = types.get(key, False) or r["resource_type"].endswith("*")
    if not found:
        return None
    return Privilege(action, tuple(types.items()), formats)


def service_resources(prefix: str) -> dict[str, str]:
    return {r["resource"]: r["arn"] for s in _sar().get(prefix, []) for r in s["resources"]}


def arn_regex(arn_format: str) -> re.Pattern[str]:
    """A SAR ARN format as a regex: variables match one path segment, except object keys, paths and log groups."""
    out, pos = "", 0
    for m in re.finditer(r"\$\{([^}]+)\}", arn_format):
        out += re.escape(arn_format[pos : m.start()])
        wide = any(w in m.group(1) for w in ("ObjectName", "WithPath", "LogGroupName", "Path", "Key"))
        out += ".+" if wide else "[^:/]+"
        pos = m.end()
    return re.compile(out + re.escape(arn_format[pos:]) + "$")


# ---- resource provider schemas (cfn-lint's offline copy) --------------------------------------------------------
SCHEMAS = Path(__import__("cfnlint").__file__).parent / "data" / "schemas"


@functools.cache
def _schema_index() -> dict[str, str]:
    return json.loads((SCHEMAS / "providers" / f"{REGION}.json").read_text())


@functools.cache
def schema(resource_type: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / "resources" / f"{_schema_index()[resource_type]}.json").read_text())


def handler_permissions(resource_type: str) -> dict[str, list[str]]:
    """What CloudFormation's handlers call for create, update and delete (read/list run inside those)."""
    handlers = schema(resource_type).get("handlers", {})
    return {h: handlers.get(h, {}).get("permissions", []) for h in ("create", "update", "delete")}


def service_prefix(resource_type: str) -> str:
    """The IAM prefix of a resource type: the one most of its create permissions use (lambda for Lambda::*)."""
    perms = [p.split(":")[0] for p in handler_permissions(resource_type)["create"]]
    own = resource_type.split("::")[1].lower()
    # On a tie (an event source mapping lists as many sqs:/kafka: permissions as lambda: ones) the type's own
    # service wins, then the name: never the iteration order of a set, which changes with PYTHONHASHSEED.
    return max(sorted(set(perms)), key=lambda prefix: (perms.count(prefix), prefix == own)) if perms else own


# A few CloudFormation types name their own resource differently in the Service Authorization Reference.
OWN_RESOURCE_TYPE = {"AWS::Events::Rule": "rule-on-default-event-bus"}


def own_resource_type(resource_type: str) -> str | None:
    """The SAR resource type a CloudFormation type creates (Lambda::Function -> function), if it has one."""
    if resource_type in OWN_RESOURCE_TYPE:
        return OWN_RESOURCE_TYPE[resource_type]

    def norm(s: str) -> str:
        return re.sub(r"[^a-z0-9]", "", s.lower())

    wanted = norm(resource_type.split("::")[-1])
    for name in service_resources(service_prefix(resource_type)):
        if norm(name) == wanted:
            return name
    return None


# ---- a stack: parameters, conditions, physical names and intrinsics ---------------------------------------------
# What Ref returns per type (CloudFormation's "Return values" sections); anything else returns its name.
REF_RETURNS = {
    "AWS::SQS::Queue": "url",
    "AWS::SNS::Topic": "arn",
    "AWS::SecretsManager::Secret": "arn",
    "AWS::StepFunctions::StateMachine": "arn",
    "AWS::IAM::ManagedPolicy": "arn",
    "AWS::IAM::OIDCProvider": "arn",
    "AWS::KMS::Key": "id",
    "AWS::ApiGateway::RestApi": "id",
    "AWS::ApiGateway::Deployment": "id",
    "AWS::ApiGateway::UsagePlan": "id",
    "AWS::ApiGateway::ApiKey": "id",
    "AWS::ApiGateway::Account": "id",
    "AWS::EC2::VPCEndpoint": "id",
    "AWS::Lambda::EventSourceMapping": "id",
    "AWS::WAFv2::WebACL": "name|id|scope",
}
# Unnamed resources whose name CloudFormation does not prefix with the stack name or whose ARN adds a suffix.
LOWERCASE_NAMES = {"AWS::S3::Bucket", "AWS::ECR::Repository"}


def _digest(*parts: str, n: int = 12) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


@dataclass(eq=False)  # hashed by identity, for the cache of its conditions
class Stack:
    """One template with given parameter values: evaluates conditions and resolves intrinsics to strings."""

    template: dict[str, Any]
    overrides: Mapping[str, str]
    name: str = APP_STACK
    params: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.params = {
            "AWS::Partition": PARTITION,
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": self.name,
            "AWS::StackId": f"arn:{PARTITION}:cloudformation:{REGION}:{ACCOUNT}:stack/{self.name}/{_digest(self.name)}",
            "AWS::NoValue": NO_VALUE,
        }
        for key, spec in self.template.get("Parameters", {}).items():
            value = self.overrides.get(key, spec.get("Default", ""))
            self.params[key] = str(value).split(",") if "List" in spec["Type"] else str(value)

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        """The resources that exist with these parameters (a false Condition drops a resource)."""
        return {k: v for k, v in self.template["Resources"].items() if self.condition(v.get("Condition"))}

    @functools.cache  # noqa: B019 - a Stack lives for one test module
    def condition(self, name: str | None) -> bool:
        return True if name is None else bool(self.resolve(self.template["Conditions"][name]))

    # -- names and ARNs
    def resource_type(self, logical: str) -> str:
        return self.template["Resources"][logical]["Type"]

    def props(self, logical: str) -> dict[str, Any]:
        return self.template["Resources"][logical].get("Properties", {})

    def ident(self, logical: str) -> str:
        """An ID the service chooses (KMS key IDs are UUIDs; the others are opaque strings)."""
        h = _digest(self.name, logical, n=32)
        kind = self.resource_type(logical)
        if kind == "AWS::KMS::Key":
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
        if kind == "AWS::EC2::VPCEndpoint":
            return f"vpce-{h[:17]}"
        return h[:10]

    def physical_name(self, logical: str) -> str:
        """The name the template gives, or the one CloudFormation generates: <stack>-<logical ID>-<random>."""
        kind, props = self.resource_type(logical), self.props(logical)
        own = own_resource_type(kind)
        fmt = service_resources(service_prefix(kind)).get(own or "", "")
        candidates = [
            v.replace("WithPath", "")
            for v in re.findall(r"\$\{([^}]+)\}", fmt)
            if v not in ("Partition", "Region", "Account", "Scope", "UUID") and not v.endswith("Id")
        ]
        for key in [*candidates, "Name", f"{kind.split('::')[-1]}Name"]:
            if isinstance(props.get(key), (str, dict)):
                value = self.resolve(props[key])
                if isinstance(value, str) and value:
                    return value
        generated = f"{self.name}-{logical}-{_digest(self.name, logical).upper()}"
        return generated.lower() if kind in LOWERCASE_NAMES else generated

    def arn(self, logical: str) -> str:
        kind, props = self.resource_type(logical), self.props(logical)
        own = own_resource_type(kind)
        fmt = service_resources(service_prefix(kind)).get(own or "")
        if not fmt:
            return f"arn:{PARTITION}:{service_prefix(kind)}:{REGION}:{ACCOUNT}:{logical}/{self.ident(logical)}"

        def value(m: re.Match[str]) -> str:
            var = m.group(1)
            if var == "Partition":
                return PARTITION
            if var == "Region":
                return REGION
            if var == "Account":
                return ACCOUNT
            if var == "Scope":
                return str(self.resolve(props.get("Scope", "REGIONAL"))).lower()
            if var == "SecretId":  # Secrets Manager appends "-" and six random characters to the name
                return f"{self.physical_name(logical)}-{_digest(logical, n=6)}"
            if isinstance(props.get(var), (str, dict)) and var not in ("Id",):
                resolved = self.resolve(props[var])
                if isinstance(resolved, str):
                    return resolved
            if var in ("UUID", "Id") or var.endswith("Id"):
                return self.ident(logical)
            return self.physical_name(logical)

        return re.sub(r"\$\{([^}]+)\}", value, fmt)

    def ref(self, logical: str) -> str:
        kind = self.resource_type(logical)
        returns = REF_RETURNS.get(kind, "name")
        if returns == "arn":
            return self.arn(logical)
        if returns == "id":
            return self.ident(logical)
        if returns == "url":
            return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{self.physical_name(logical)}"
        if returns == "name|id|scope":
            return f"{self.physical_name(logical)}|{self.ident(logical)}|REGIONAL"
        if kind == "AWS::ApiGateway::Stage":
            return str(self.resolve(self.props(logical)["StageName"]))
        return self.physical_name(logical)

    def getatt(self, logical: str, attribute: str) -> str:
        kind = self.resource_type(logical)
        if attribute == "Arn":
            arn = self.arn(logical)
            return f"{arn}:*" if kind == "AWS::Logs::LogGroup" else arn  # Logs' Arn attribute ends with ":*"
        if attribute in ("KeyId", "Id", "RootResourceId", "RoleId", "APIKeyId", "DeploymentId"):
            return self.ident(logical)
        if attribute == "QueueUrl":
            return self.ref(logical)
        if attribute == "Stage":  # SAM's Api.Stage
            return str(self.params.get("Stage", STAGE))
        if attribute.endswith("Name") or attribute == "Name":
            return self.physical_name(logical)
        return f"{self.physical_name(logical)}-{attribute}"

    # -- intrinsics
    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.resolve(x) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), *_ = node.items()
            if key == "Ref":
                if arg in self.params:
                    return self.params[arg]
                return self.ref(arg)
            if key == "Condition":
                return self.condition(arg)
            if key.startswith("Fn::"):
                return self._function(key[4:], arg)
        return {k: v for k, v in ((k, self.resolve(v)) for k, v in node.items()) if v is not NO_VALUE}

    def _function(self, name: str, arg: Any) -> Any:
        if name == "GetAtt":
            logical, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            return self.getatt(logical, attribute)
        if name == "Sub":
            text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))
            return self._sub(text, variables)
        if name == "Join":
            sep, items = arg
            values = self.resolve(items)
            return sep.join(str(v) for v in values)
        if name == "If":
            cond, yes, no = arg
            return self.resolve(yes if self.condition(cond) else no)
        if name == "Equals":
            a, b = self.resolve(arg)
            return a == b
        if name == "Not":
            return not self.resolve(arg[0])
        if name == "And":
            return all(self.resolve(arg))
        if name == "Or":
            return any(self.resolve(arg))
        if name == "Select":
            index, items = self.resolve(arg)
            return items[int(index)]
        if name == "Split":
            sep, text = self.resolve(arg)
            return text.split(sep)
        if name == "GetAZs":
            return [f"{REGION}a", f"{REGION}b"]
        if name == "ToJsonString":
            return json.dumps(self.resolve(arg))
        return json.dumps({f"Fn::{name}": arg})  # an unknown intrinsic stays visible in the output

    def _sub(self, text: str, variables: Mapping[str, Any]) -> str:
        def value(m: re.Match[str]) -> str:
            var = m.group(1)
            if var.startswith("!"):
                return "${" + var[1:] + "}"
            if var in variables:
                return str(variables[var])
            if var in self.params:
                v = self.params[var]
                return ",".join(v) if isinstance(v, list) else str(v)
            if "." in var:
                logical, attribute = var.split(".", 1)
                return self.getatt(logical, attribute)
            return self.ref(var)

        return re.sub(r"\$\{([^}]+)\}", value, text)

    def references(self, node: Any) -> set[str]:
        """Logical IDs of the stack's resources this node refers to (Ref, GetAtt, Sub)."""
        found: set[str] = set()
        if isinstance(node, list):
            for x in node:
                found |= self.references(x)
        elif isinstance(node, dict):
            for key, arg in node.items():
                if key == "Ref" and isinstance(arg, str) and arg in self.template["Resources"]:
                    found.add(arg)
                elif key == "Fn::GetAtt":
                    found.add(arg[0] if isinstance(arg, list) else arg.split(".")[0])
                elif key == "Fn::Sub":
                    text = arg if isinstance(arg, str) else arg[0]
                    for var in re.findall(r"\$\{([^}!]+)\}", text):
                        if var.split(".")[0] in self.template["Resources"]:
                            found.add(var.split(".")[0])
                    found |= self.references(arg[1] if isinstance(arg, list) else {})
                else:
                    found |= self.references(arg)
        return found


# ---- policies ----------------------------------------------------------------------------------------------------
def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy_documents(template: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(logical ID, kind, document) for every policy document in a template: identity policies of roles and managed
    policies, trust policies, and resource policies (bucket, queue, topic, key)."""
    for logical, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        for i, policy in enumerate(props.get("Policies", []) if isinstance(props.get("Policies"), list) else []):
            if isinstance(policy, dict) and "PolicyDocument" in policy:
                yield logical, f"identity:{policy.get('PolicyName', i)}", policy["PolicyDocument"]
        if resource["Type"] == "AWS::IAM::ManagedPolicy":
            yield logical, "identity:managed", props["PolicyDocument"]
        if "AssumeRolePolicyDocument" in props:
            yield logical, "trust", props["AssumeRolePolicyDocument"]
        for key in ("PolicyDocument", "KeyPolicy"):
            if key in props and resource["Type"] != "AWS::IAM::ManagedPolicy":
                yield logical, f"resource:{key}", props[key]


def _glob(pattern: str, value: str, case: bool) -> bool:
    if not case:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def statement_allows(statement: Mapping[str, Any], action: str, resource: str) -> bool:
    """Whether an Allow statement names the action and a Resource pattern that matches the ARN (its conditions, if
    any, are taken as met: they narrow a grant but the statement is the one meant for this call)."""
    if statement.get("Effect") != "Allow" or "NotAction" in statement or "NotResource" in statement:
        return False
    if not any(_glob(a, action, case=False) for a in as_list(statement.get("Action", []))):
        return False
    return any(_glob(r, resource, case=True) for r in as_list(statement.get("Resource", [])))


def policy_allows(statements: list[Mapping[str, Any]], action: str, resource: str) -> bool:
    denied = any(
        s.get("Effect") == "Deny"
        and "Condition" not in s
        and any(_glob(a, action, case=False) for a in as_list(s.get("Action", [])))
        and any(_glob(r, resource, case=True) for r in as_list(s.get("Resource", [])))
        for s in statements
    )
    return not denied and any(statement_allows(s, action, resource) for s in statements)
