"""What template.yaml says about each function, resolved for running it here: handler, source folders, layers
and environment (parameters to their defaults; stack resources left to local defaults). Used by `readmit
invoke` and the template tests. Needs PyYAML, a dev dependency: the deployed functions never import this."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
PSEUDO_PARAMETERS = {
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "readmit-local",
    "AWS::StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/readmit-local/local",
}
TARGETS_FILE = "targets.toml"  # in events/: fixture-name prefixes that do not follow the naming convention


class TemplateError(Exception):
    """The template does not say what is needed to run a function."""


class DevDependencyMissing(ImportError):
    """Reading template.yaml needs PyYAML, which only the dev extra installs."""


class Unresolved(Exception):
    """A value that names a stack resource (or a condition), which exists only once deployed."""


def _loader() -> Any:
    try:
        import yaml
    except ImportError as exc:  # the serving install has no PyYAML
        raise DevDependencyMissing(
            "reading template.yaml needs PyYAML, a dev dependency: pip install -e '.[dev]' (or `make setup`)"
        ) from exc

    class CfnLoader(yaml.SafeLoader):
        """Reads CloudFormation short-form intrinsics (!Ref, !Sub, !GetAtt, …) as {"Ref": …} and so on."""

    def intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return {suffix: loader.construct_scalar(node)}
        if isinstance(node, yaml.SequenceNode):
            return {suffix: loader.construct_sequence(node, deep=True)}
        return {suffix: loader.construct_mapping(node, deep=True)}

    CfnLoader.add_multi_constructor("!", intrinsic)
    return CfnLoader


def load_template(path: Path) -> dict[str, Any]:
    loader = _loader()  # first: it says what to install when PyYAML is missing
    import yaml

    return yaml.load(Path(path).read_text(), Loader=loader)


def intrinsic(value: Any) -> tuple[str, Any] | None:
    """("Ref", arg) for {"Ref": arg} or {"Fn::Sub": arg}; None for anything else."""
    if isinstance(value, dict) and len(value) == 1:
        (key, arg), *_ = value.items()
        if key == "Ref" or key.startswith("Fn::") or key in ("Sub", "GetAtt", "Join", "If", "Select", "FindInMap"):
            return key.removeprefix("Fn::"), arg
    return None


@dataclass
class Resolver:
    """Resolves intrinsics to strings when they need nothing deployed: parameters, pseudo parameters, joins."""

    parameters: Mapping[str, str]
    region: str = "us-east-1"

    def __call__(self, value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, str | int | float):
            return str(value)
        match intrinsic(value):
            case ("Ref", name):
                return self._name(name)
            case ("Sub", str(text)):
                return self._sub(text, {})
            case ("Sub", [str(text), dict(variables)]):
                return self._sub(text, {k: self(v) for k, v in variables.items()})
            case ("Join", [str(sep), list(parts)]):
                return sep.join(self(p) for p in parts)
            case ("GetAtt", arg):
                raise Unresolved(arg if isinstance(arg, str) else ".".join(map(str, arg)))
            case (kind, _):
                raise Unresolved(f"Fn::{kind}")
        raise Unresolved(repr(value))

    def _name(self, name: str) -> str:
        if name in self.parameters:
            return str(self.parameters[name])
        if name == "AWS::Region":
            return self.region
        if name in PSEUDO_PARAMETERS:
            return PSEUDO_PARAMETERS[name]
        raise Unresolved(name)

    def _sub(self, text: str, variables: Mapping[str, str]) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            return variables[name] if name in variables else self._name(name)

        return re.sub(r"\$\{([^}]+)\}", one, text)


def _merge(globals_: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """SAM's Globals rules: maps merge (the resource wins), lists concatenate, scalars come from the resource."""
    out = dict(globals_)
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + value
        else:
            out[key] = value
    return out


def snake(logical_id: str) -> str:
    """StartTrainingFunction → start_training: the function's folder under functions/ and its fixtures' prefix."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", logical_id.removesuffix("Function")).lower()


@dataclass
class FunctionSpec:
    """One function as template.yaml deploys it, with what running it here needs."""

    logical_id: str
    handler: str
    search_path: list[Path]  # folders put first on sys.path, as the deployment package's root would be
    environment: dict[str, str]
    unresolved: dict[str, str] = field(default_factory=dict)  # variable → the stack resource it names
    timeout: int = 3
    memory: int = 128
    runtime: str = ""

    @property
    def module(self) -> str:
        return self.handler.rsplit(".", 1)[0]

    @property
    def attribute(self) -> str:
        return self.handler.rsplit(".", 1)[1]


def _dockerfile_command(dockerfile: Path) -> str | None:
    match = re.search(r'^CMD\s+\[\s*"([^"]+)"', dockerfile.read_text(), flags=re.MULTILINE)
    return match.group(1) if match else None


class Template:
    """template.yaml, read once, answering questions about its functions and resources."""

    def __init__(self, path: Path, parameters: Mapping[str, str] | None = None, region: str | None = None) -> None:
        self.path = Path(path)
        self.root = self.path.resolve().parent
        self.data = load_template(self.path)
        self.resources: dict[str, dict[str, Any]] = self.data.get("Resources", {})
        defaults = {k: str(v["Default"]) for k, v in self.data.get("Parameters", {}).items() if "Default" in v}
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.resolve = Resolver({**defaults, **(parameters or {})}, region)

    def functions(self) -> list[str]:
        return [k for k, v in self.resources.items() if v.get("Type") in FUNCTION_TYPES]

    def properties(self, logical_id: str) -> dict[str, Any]:
        resource = self.resources.get(logical_id)
        if resource is None or resource.get("Type") not in FUNCTION_TYPES:
            known = ", ".join(self.functions())
            raise TemplateError(f"{logical_id} is not a function in {self.path.name} (functions: {known})")
        own = resource.get("Properties", {})
        if resource["Type"] != "AWS::Serverless::Function":
            return own
        return _merge(self.data.get("Globals", {}).get("Function", {}), own)

    def function(self, logical_id: str) -> FunctionSpec:
        props = self.properties(logical_id)
        metadata = self.resources[logical_id].get("Metadata", {})
        handler, search_path = self._code(logical_id, props, metadata)
        environment, unresolved = {}, {}
        for name, value in props.get("Environment", {}).get("Variables", {}).items():
            try:
                environment[name] = self.resolve(value)
            except Unresolved as exc:
                unresolved[name] = str(exc)
        return FunctionSpec(
            logical_id,
            handler,
            search_path + self._layers(props),
            environment,
            unresolved,
            timeout=int(self.resolve(props.get("Timeout", 3))),
            memory=int(self.resolve(props.get("MemorySize", 128))),
            runtime=str(props.get("Runtime", "")),
        )

    def _code(self, logical_id: str, props: dict[str, Any], metadata: dict[str, Any]) -> tuple[str, list[Path]]:
        """The handler and the folders its deployment package is built from.

        A zip function's package is its CodeUri; with ``BuildMethod: makefile`` the build also copies the
        function's own folder, functions/<snake_case name>/, to the package root (see the Makefile), so that
        folder comes first. An image function runs the CMD of its Dockerfile, which copies the handler from the
        Dockerfile's folder.
        """
        if props.get("PackageType") == "Image":
            context = self.root / metadata.get("DockerContext", ".")
            dockerfile = context / metadata.get("Dockerfile", "Dockerfile")
            command = props.get("ImageConfig", {}).get("Command") or [_dockerfile_command(dockerfile)]
            if not command[0]:
                raise TemplateError(f"{logical_id}: no ImageConfig.Command and no CMD in {dockerfile}")
            return command[0], [dockerfile.parent, context]
        if "Handler" not in props or not isinstance(props.get("CodeUri", "."), str):
            raise TemplateError(f"{logical_id}: needs a Handler and a local CodeUri folder")
        code = self.root / props.get("CodeUri", ".")
        own = self.root / "functions" / snake(logical_id)
        makefile_build = metadata.get("BuildMethod") == "makefile"
        return props["Handler"], ([own] if makefile_build and own.is_dir() else []) + [code]

    def _layers(self, props: dict[str, Any]) -> list[Path]:
        """Lambda puts a Python layer's python/ folder on the path; a local LayerVersion's ContentUri is that."""
        folders = []
        for layer in props.get("Layers", []):
            name = layer.get("Ref") if isinstance(layer, dict) else None
            content = self.resources.get(name or "", {}).get("Properties", {}).get("ContentUri")
            if isinstance(content, str):
                folders += [self.root / content / "python", self.root / content]
        return folders

    def fixture_target(self, fixture: Path) -> str | None:
        """The resource a fixture in events/ replays through: an explicit prefix from events/targets.toml, else
        the function whose snake_case name prefixes the file name (api_* → ApiFunction). Longest prefix wins."""
        stem = fixture.stem
        targets = fixture.parent / TARGETS_FILE
        explicit = tomllib.loads(targets.read_text()).get("prefixes", {}) if targets.exists() else {}
        by_convention = {snake(k): k for k in self.functions()}
        for prefixes in (explicit, by_convention):
            matches = [p for p in prefixes if stem == p or stem.startswith(p + "_")]
            if matches:
                return prefixes[max(matches, key=len)]
        return None
