"""What each function of template.yaml calls on AWS, and what its execution role lets it do (issue #14).

Three parts, compared by tests/test_function_permissions.py:

1. ``code_calls``: the AWS API operations a function's code can call, found statically. From the handler, it
   follows the project modules really imported (module-level imports, and imports inside functions that are
   reachable) and the functions reachable from the handler; in that code it finds every boto3 client created
   (``boto3.client("svc")``, ``LazyClient("svc")``) and every call of one of those services' operations
   (snake_case method names from botocore's service model), paginator, waiter or S3 transfer method, plus the HTTP
   calls opensearch-py signs for us. A method call ``x.m()`` reaches the ``m`` of ``x``'s class, its type inferred
   from annotations, constructors and assignments; only a receiver of unknown type reaches every ``m``, and then
   only of classes the reachable code creates (``_Collector``). ``secret_verdict`` adds the resource level for
   Secrets Manager: which secret, decrypted with which key.
2. ``iam_actions``: operation → IAM action(s), from the Service Authorization Reference (parliament's offline copy,
   iam_definition.json) with the documented exceptions, each cited below.
3. ``role_actions``: the execution role SAM generates (samtranslator, run offline on the template with dummy
   code URIs), its inline statements and the AWS managed policies SAM attaches, expanded to concrete actions.

``Recorder`` records the operations actually made while a function runs (the dynamic check that the static
collector misses nothing that runs).
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import functools
import inspect
import re
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.cli.local_invoke import module_file
from chalicelib.cli.sam_template import Template, load_template

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("chalicelib",)  # the project's own packages; anything else is a third-party library
# Modules that make clients for a service their caller names (LazyClient("s3")): the callers' literals are collected.
CLIENT_FACTORIES = {"chalicelib.core.aws_clients"}


# ---- 1. the operations the code can call ------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One AWS API operation (botocore's name, e.g. s3 / ListObjectsV2) and where the code makes it."""

    service: str
    operation: str
    where: str  # module:line, for the failure message


@dataclass(frozen=True)
class HttpCall:
    """A SigV4-signed HTTP request opensearch-py makes for us (no botocore operation)."""

    method: str  # GET, PUT, POST, HEAD, DELETE
    where: str


@dataclass
class CodeCalls:
    """Everything ``code_calls`` found for one function."""

    modules: list[str]
    services: set[str]
    calls: set[Call]
    opensearch: set[HttpCall] = field(default_factory=set)

    def operations(self) -> set[tuple[str, str]]:
        return {(c.service, c.operation) for c in self.calls}


@functools.cache
def _session() -> Any:
    import botocore.session

    return botocore.session.get_session()


@functools.cache
def _snake_operations(service: str) -> dict[str, str]:
    """snake_case method name → operation name, exactly as boto3 names a client's methods (botocore xform_name)."""
    from botocore import xform_name

    model = _session().get_service_model(service)
    return {xform_name(op): op for op in model.operation_names}


@functools.cache
def _waiter_operation(service: str, waiter: str) -> str:
    """The operation a waiter polls (botocore/data/<service>/<version>/waiters-2.json)."""
    from botocore import xform_name

    config = _session().get_waiter_model(service)
    for name in config.waiter_names:
        if xform_name(name) == waiter:
            return config.get_waiter(name).operation
    raise KeyError(f"{service} has no waiter {waiter}")


# boto3's S3 transfer methods (boto3/s3/inject.py → s3transfer) call these operations. A download HEADs the object,
# then GETs it (in ranges when large); an upload is one PutObject below multipart_threshold (8 MB by default,
# boto3.s3.transfer.TransferConfig) and a multipart upload above it, aborted on failure: both branches count.
_S3_TRANSFER = {
    "download_file": ("HeadObject", "GetObject"),
    "download_fileobj": ("HeadObject", "GetObject"),
    "upload_file": (
        "PutObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
    ),
    "upload_fileobj": (
        "PutObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
    ),
    "copy": ("HeadObject", "CopyObject", "CreateMultipartUpload", "UploadPartCopy", "CompleteMultipartUpload"),
}


class UnsupportedAwsUsage(Exception):
    """Code the collector cannot read for certain (a client for a computed service name, boto3 resources, …)."""


def _module_path(name: str) -> Path | None:
    relative = Path(*name.split("."))
    for candidate in (ROOT / f"{relative}.py", ROOT / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


# -- types: what a receiver can be ------------------------------------------------------------------------------------
# A type is a frozenset of atoms, or None when unknown (anything at all). Atoms: ("cls", key) an instance of the
# project class ``key`` ("module.Class") or of a subclass; ("proto", key) an instance of any class that has the
# project Protocol's methods; ("type", key) the class object itself; ("mod", name) a project module; ("ext", name)
# an instance of a class from outside the project (its methods are not ours unless a project class subclasses it).
Atom = tuple[str, str]
Types = frozenset[Atom] | None
VALUE = ("ext", "value")  # a str, number, path, date…: holds no project object, nor does anything derived from it
CONTAINER = ("ext", "container")  # a list, dict, tuple…: its own methods are not ours, but its items may be
_VALUE_CLASSES = {"str", "bytes", "int", "float", "bool", "complex", "Path", "PurePath", "PosixPath", "PurePosixPath"}
_VALUE_CLASSES |= {"datetime", "date", "time", "timedelta", "Decimal", "UUID", "value"}
_VALUE_BUILTINS = {"str", "bytes", "int", "float", "bool", "len", "repr", "range", "round", "abs", "hash", "hex"}
_VALUE_BUILTINS |= {"format", "isinstance", "issubclass", "ord", "chr", "open", "callable", "hasattr", "id"}
_CONTAINER_BUILTINS = {"dict", "list", "set", "tuple", "frozenset", "enumerate", "zip", "reversed", "sorted"}
_UNION_FORMS = {"Optional", "Union"}
_WRAPPER_FORMS = {"Annotated", "ClassVar", "Final", "Required", "NotRequired", "ReadOnly"}
_OPAQUE = {"Any", "object", "TypeVar"}
# Decorators that only change how a method is looked up: the method is reached by its name. Any other decorator
# (pydantic's field_validator, a framework's route) may register it to be called from outside: always reachable.
_LOOKUP_DECORATORS = {"property", "staticmethod", "classmethod", "cached_property", "abstractmethod", "overload"}
_LOOKUP_DECORATORS |= {"override", "setter", "getter", "deleter", "cache", "lru_cache", "wraps"}
_NOT_INSTANCE_BASES = {"object", "Protocol", "Generic", "ABC"}


def _union(*types: Types) -> Types:
    out: set[Atom] = set()
    for t in types:
        if t is None:
            return None
        out |= t
    return frozenset(out)


def _decorator_name(node: ast.expr) -> str:
    node = node.func if isinstance(node, ast.Call) else node
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


@dataclass
class _Def:
    module: str
    node: ast.FunctionDef | ast.AsyncFunctionDef
    owner: str | None  # the key of the class it is a method of, else None

    @property
    def where(self) -> str:
        return f"{self.module.removeprefix('__handler__.')}:{self.node.lineno}"

    def decorators(self) -> set[str]:
        return {_decorator_name(d) for d in self.node.decorator_list}

    def hook(self) -> bool:
        """Decorated by something that may register it to be called from outside (see _LOOKUP_DECORATORS)."""
        return bool(self.decorators() - _LOOKUP_DECORATORS)


@dataclass
class _Class:
    key: str  # module.Name
    module: str
    node: ast.ClassDef
    bases: set[str] = field(default_factory=set)  # project base classes (keys)
    ext_bases: set[str] = field(default_factory=set)  # names of bases from outside the project
    methods: dict[str, list[_Def]] = field(default_factory=dict)
    clients: dict[str, str] = field(default_factory=dict)  # attribute → service (``x = LazyClient("svc")``)
    protocol: bool = False


Binding = tuple[Any, ...]  # ("def", _Def) | ("class", key) | ("mod", name) | ("from", module, name) | ("ext", name)
#                            | ("var", module, [("value" | "ann" | "unknown", expr)])


@dataclass
class _Module:
    name: str
    tree: ast.Module
    is_package: bool
    symbols: dict[str, Binding] = field(default_factory=dict)  # top-level names, then names imported in functions
    imports: dict[int, list[tuple[str, Binding]]] = field(default_factory=dict)  # id(import node) → its bindings


class _Collector:
    """The fixpoint over modules imported and functions reachable, from one handler module.

    Names resolve as Python binds them: a bare name to the local, the module's own definition or what it imports;
    ``mod.f`` to that project module's ``f``. For ``x.m`` the receiver's type is inferred from annotations
    (parameters, returns, class fields), constructor calls and assignments (``jobs = jobs or TrainingJobs(…)``,
    ``self.storage = storage``); ``m`` then reaches the definitions in that class's bases and in its live
    subclasses. Only when the type is unknown (``Any``, an untyped parameter, an item taken from a container)
    does ``m`` reach every method of that name, and then only in live classes: classes that reachable code names
    (constructs, or calls a class method of). A Protocol-typed receiver reaches the live classes that implement it.
    Dunder methods, and methods decorated to be called from outside (validators), of live classes are reachable.
    Annotations are trusted (nothing type-checks them here): tests/test_function_permissions_replay.py is what
    shows this misses no call that runs."""

    def __init__(self) -> None:
        self.modules: dict[str, _Module] = {}
        self.classes: dict[str, _Class] = {}
        self.loaded: set[str] = set()
        self.live: set[str] = set()
        self.reached: dict[int, str] = {}  # id(def node) → why (module:line of the first reference)
        self.work: list[tuple[str, ast.AST, str | None, str]] = []  # (module, node, owner, why)
        self.unknown_refs: dict[str, list[str]] = {}  # attribute → where it is read on a receiver of unknown type
        # attribute → the classes (protocols, external classes) of the receivers it was read on
        self.typed_refs: dict[str, set[str]] = {}
        self.proto_refs: dict[str, set[str]] = {}
        self.ext_refs: dict[str, set[str]] = {}
        self.services: set[str] = set()
        self.method_calls: list[tuple[str, str, ast.Call, str | None]] = []  # (module, method, call, its service)
        self.third_party: dict[str, set[str]] = {}  # module → top-level third-party packages it imports
        self._envs: dict[int, dict[str, Types]] = {}
        self._attr_types: dict[tuple[str, str], Types] = {}
        self._busy: set[Any] = set()
        self._local_bindings: dict[int, dict[str, list[tuple[str, Any]]]] = {}
        self._foreign_attrs: set[str] | None = None
        self._ancestors: dict[str, set[str]] = {}  # cleared when a module's classes are added
        self._descendants: dict[str, set[str]] = {}

    # -- modules ---------------------------------------------------------------------------------------------------
    def parse(self, name: str, path: Path | None = None) -> _Module | None:
        """The module's definitions, classes and imports (not run: ``load`` runs its top level)."""
        if name in self.modules:
            return self.modules[name]
        path = path or _module_path(name)
        if path is None:
            return None
        tree = ast.parse(path.read_text(), filename=str(path))
        module = self.modules[name] = _Module(name, tree, path.name == "__init__.py")
        self._ancestors.clear()
        self._descendants.clear()
        top: list[ast.stmt] = []
        queue = deque(tree.body)
        while queue:  # top level, including the bodies of if/try/with blocks at the top level
            stmt = queue.popleft()
            top.append(stmt)
            if isinstance(stmt, ast.If | ast.Try | ast.With):
                queue.extend(n for n in ast.iter_child_nodes(stmt) if isinstance(n, ast.stmt))
        for stmt in top:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                module.symbols[stmt.name] = ("def", _Def(name, stmt, None))
            elif isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        previous = module.symbols.get(target.id)
                        values = previous[2] if previous and previous[0] == "var" else []
                        if isinstance(stmt, ast.AnnAssign):  # `_jobs: BatchJobs | None = None`
                            values = [*values, ("ann", stmt.annotation)]
                        if stmt.value is not None:
                            values = [*values, ("value", stmt.value)]
                        module.symbols[target.id] = ("var", name, values)
        for node in ast.walk(tree):
            if isinstance(node, ast.Global):  # rebound inside a function: whatever it was assigned there
                for target in node.names:
                    binding = module.symbols.get(target)
                    if binding and binding[0] == "var":
                        module.symbols[target] = ("var", name, [*binding[2], ("unknown", None)])
            if isinstance(node, ast.ClassDef):
                self._class(module, node)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                bindings = module.imports[id(node)] = self._import_bindings(module, node)
                for local, binding in bindings:  # imports inside functions: after the top level's own names
                    if node in top or local not in module.symbols:
                        module.symbols[local] = binding
        return module

    def _class(self, module: _Module, node: ast.ClassDef) -> None:
        key = f"{module.name}.{node.name}"
        cls = self.classes[key] = _Class(key, module.name, node)
        module.symbols.setdefault(node.name, ("class", key))
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                cls.methods.setdefault(item.name, []).append(_Def(module.name, item, key))
            elif (
                isinstance(item, ast.Assign)
                and isinstance(item.value, ast.Call)
                and _decorator_name(item.value) == "LazyClient"
            ):
                service = _literal(item.value, 0, f"{module.name}:{item.lineno}: LazyClient of a computed name")
                cls.clients.update({t.id: service for t in item.targets if isinstance(t, ast.Name)})

    def _bases(self, cls: _Class) -> None:
        if cls.bases or cls.ext_bases:
            return
        for base in cls.node.bases:
            base = base.value if isinstance(base, ast.Subscript) else base  # Generic[T], Protocol[T]
            binding = self._resolve_expr_binding(cls.module, base)
            if binding and binding[0] == "class":
                cls.bases.add(binding[1])
            else:
                name = _decorator_name(base)
                cls.ext_bases.add(name)
                cls.protocol |= name == "Protocol"

    def _import_bindings(self, module: _Module, node: ast.Import | ast.ImportFrom) -> list[tuple[str, Binding]]:
        out: list[tuple[str, Binding]] = []
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    binding: Binding = ("mod", alias.name) if _project(alias.name) else ("ext", alias.name)
                    out.append((alias.asname, binding))
                else:
                    top = alias.name.split(".")[0]
                    out.append((top, ("mod", top) if _project(top) else ("ext", top)))
            return out
        if node.level:
            package = module.name if module.is_package else module.name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        for alias in node.names:
            local = alias.asname or alias.name
            if not _project(base):
                out.append((local, ("ext", alias.name)))
            elif _module_path(f"{base}.{alias.name}") is not None:  # `from chalicelib import pipeline`
                out.append((local, ("mod", f"{base}.{alias.name}")))
            else:
                out.append((local, ("from", base, alias.name)))
        return out

    def load(self, name: str, path: Path | None = None) -> None:
        """Import ``name``: its packages' __init__ first, then its top level runs."""
        if name in self.loaded:
            return
        module = self.parse(name, path)
        if module is None:
            return
        self.loaded.add(name)
        parts = name.split(".")
        for i in range(1, len(parts)):
            self.load(".".join(parts[:i]))
        self.work.append((name, module.tree, None, f"import {name}"))

    def _imports(self, module: str, node: ast.Import | ast.ImportFrom) -> None:
        for _, binding in self.modules[module].imports.get(id(node), []):
            if binding[0] in ("mod", "from"):
                self.load(binding[1])
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _project(alias.name):
                    self.load(alias.name)
                else:
                    self.third_party.setdefault(module, set()).add(alias.name.split(".")[0])
        elif not any(b[0] in ("mod", "from") for _, b in self.modules[module].imports.get(id(node), [])):
            self.third_party.setdefault(module, set()).add((node.module or "").split(".")[0])

    # -- names and types -------------------------------------------------------------------------------------------
    def symbol(self, module: str, name: str, depth: int = 0) -> Binding | None:
        """What ``name`` is bound to at the top of ``module`` (re-exports followed)."""
        mod = self.parse(module)
        binding = mod.symbols.get(name) if mod else None
        if binding and binding[0] == "from" and depth < 20:
            target = self.parse(binding[1])
            if target is not None and _module_path(f"{binding[1]}.{binding[2]}") is None:
                return self.symbol(binding[1], binding[2], depth + 1)
        return binding

    def _resolve_expr_binding(self, module: str, expr: ast.expr) -> Binding | None:
        """A dotted name (``X``, ``mod.X``) as a module-level binding, without local variables."""
        if isinstance(expr, ast.Name):
            return self.symbol(module, expr.id)
        if isinstance(expr, ast.Attribute):
            base = self._resolve_expr_binding(module, expr.value)
            if base and base[0] == "mod":
                if _module_path(f"{base[1]}.{expr.attr}") is not None:
                    return ("mod", f"{base[1]}.{expr.attr}")
                return self.symbol(base[1], expr.attr)
            if base and base[0] == "ext":
                return ("ext", f"{base[1]}.{expr.attr}")
        return None

    def ancestors(self, key: str) -> set[str]:
        if key in self._ancestors:
            return self._ancestors[key]
        found, todo = {key}, [key]
        while todo:
            cls = self.classes.get(todo.pop())
            if cls is None:
                continue
            self._bases(cls)
            for base in cls.bases - found:
                found.add(base)
                todo.append(base)
        self._ancestors[key] = found
        return found

    def descendants(self, key: str) -> set[str]:
        if key not in self._descendants:
            self._descendants[key] = {k for k in self.classes if key in self.ancestors(k)}
        return self._descendants[key]

    def _ext_ancestors(self, key: str) -> set[str]:
        return {
            e.rsplit(".", 1)[-1] for k in self.ancestors(key) if k in self.classes for e in self.classes[k].ext_bases
        }

    def _members(self, key: str) -> set[str]:
        return {m for k in self.ancestors(key) if k in self.classes for m in self.classes[k].methods}

    def _binding_types(self, binding: Binding | None) -> Types:
        """The type of the value a module-level binding names."""
        if binding is None:
            return None
        kind = binding[0]
        if kind == "class":
            return frozenset({("type", binding[1])})
        if kind == "mod":
            return frozenset({("mod", binding[1])})
        if kind == "ext":
            return frozenset({("extobj", binding[1])})
        if kind == "var":
            key = ("var", id(binding[2]))
            if key in self._busy or any(source == "unknown" for source, _ in binding[2]):
                return None
            self._busy.add(key)
            try:
                return _union(
                    *(
                        self.expr_types(binding[1], v, None, None)
                        if source == "value"
                        else self.annotation_types(binding[1], v, None)
                        for source, v in binding[2]
                    )
                )
            finally:
                self._busy.discard(key)
        return None

    def annotation_types(self, module: str, node: ast.expr | None, owner: str | None) -> Types:
        """The values an annotation admits (None: anything)."""
        if node is None:
            return None
        if isinstance(node, ast.Constant):
            if node.value is None:
                return frozenset()
            if isinstance(node.value, str):
                try:
                    return self.annotation_types(module, ast.parse(node.value, mode="eval").body, owner)
                except SyntaxError:
                    return None
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return _union(
                self.annotation_types(module, node.left, owner), self.annotation_types(module, node.right, owner)
            )
        if isinstance(node, ast.Subscript):
            form = _decorator_name(node.value)
            args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            if form in _UNION_FORMS:
                return _union(*(self.annotation_types(module, a, owner) for a in args))
            if form in _WRAPPER_FORMS:
                return self.annotation_types(module, args[0], owner)
            if form in ("type", "Type"):
                inner = self.annotation_types(module, args[0], owner)
                return None if inner is None else frozenset(("type", k) for kind, k in inner if kind == "cls")
            node = node.value  # list[X], Iterator[X], Callable[…]: an instance of the origin
        if isinstance(node, ast.Name) and node.id == "Self" and owner:
            return frozenset({("cls", owner)})
        name = _decorator_name(node)
        if not name or name in _OPAQUE:
            return None
        binding = self._resolve_expr_binding(module, node)
        if binding is None:  # a builtin (str, dict, …) or a name this module does not bind
            if name in _VALUE_CLASSES:
                return frozenset({VALUE})
            if name in _CONTAINER_BUILTINS:
                return frozenset({CONTAINER})
            return None
        if binding[0] == "class":
            cls = self.classes[binding[1]]
            self._bases(cls)
            return frozenset({("proto" if cls.protocol else "cls", binding[1])})
        if binding[0] == "ext":
            last = binding[1].rsplit(".", 1)[-1]
            if last in _OPAQUE:
                return None
            return frozenset({VALUE if last in _VALUE_CLASSES else ("ext", last)})
        return None

    def _returns(self, definition: _Def) -> Types:
        node = definition.node
        if node.returns is None:
            return None
        if isinstance(node, ast.AsyncFunctionDef) or any(
            isinstance(n, ast.Yield | ast.YieldFrom) for n in ast.walk(node)
        ):
            return frozenset({CONTAINER})  # a coroutine or generator, whatever it yields
        return self.annotation_types(definition.module, node.returns, definition.owner)

    def _bindings(self, definition: _Def) -> dict[str, list[tuple[str, Any]]]:
        """Every name the function (and the functions and lambdas nested in it) binds, with where from."""
        key = id(definition.node)
        if key not in self._local_bindings:
            self._local_bindings[key] = self._find_bindings(definition)
        return self._local_bindings[key]

    def _find_bindings(self, definition: _Def) -> dict[str, list[tuple[str, Any]]]:
        fn = definition.node
        out: dict[str, list[tuple[str, Any]]] = {}
        decorators = definition.decorators()
        for scope in ast.walk(fn):
            if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                params = [*scope.args.posonlyargs, *scope.args.args, *scope.args.kwonlyargs]
                for i, arg in enumerate(params):
                    if scope is fn and i == 0 and definition.owner and "staticmethod" not in decorators:
                        implicit = "classmethod" in decorators or fn.name in ("__new__", "__init_subclass__")
                        out.setdefault(arg.arg, []).append(("type" if implicit else "self", definition.owner))
                    else:
                        out.setdefault(arg.arg, []).append(("ann", arg.annotation))
                for arg in (scope.args.vararg, scope.args.kwarg):
                    if arg is not None:
                        out.setdefault(arg.arg, []).append(("atoms", frozenset({CONTAINER})))
                if scope is not fn and not isinstance(scope, ast.Lambda):
                    out.setdefault(scope.name, []).append(("unknown", None))
            elif isinstance(scope, ast.Assign | ast.AnnAssign | ast.NamedExpr):
                targets = scope.targets if isinstance(scope, ast.Assign) else [scope.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        if isinstance(scope, ast.AnnAssign):
                            out.setdefault(target.id, []).append(("ann", scope.annotation))
                        if scope.value is not None:
                            out.setdefault(target.id, []).append(("value", scope.value))
                    elif (  # a, b = x, y
                        isinstance(target, ast.Tuple)
                        and isinstance(scope.value, ast.Tuple)
                        and len(target.elts) == len(scope.value.elts)
                        and all(isinstance(t, ast.Name) for t in target.elts)
                    ):
                        for t, v in zip(target.elts, scope.value.elts, strict=True):
                            out.setdefault(t.id, []).append(("value", v))  # type: ignore[attr-defined]
                    else:
                        for name in _names(target):
                            out.setdefault(name, []).append(("unknown", None))
            elif isinstance(scope, ast.For | ast.AsyncFor | ast.comprehension | ast.AugAssign):
                for name in _names(scope.target):
                    out.setdefault(name, []).append(("unknown", None))
            elif isinstance(scope, ast.withitem) and scope.optional_vars is not None:
                for name in _names(scope.optional_vars):
                    out.setdefault(name, []).append(("unknown", None))
            elif isinstance(scope, ast.ExceptHandler) and scope.name:
                out.setdefault(scope.name, []).append(("unknown", None))
            elif isinstance(scope, ast.ClassDef):
                out.setdefault(scope.name, []).append(
                    ("atoms", frozenset({("type", f"{definition.module}.{scope.name}")}))
                )
            elif isinstance(scope, ast.Import | ast.ImportFrom):
                for local, binding in self.modules[definition.module].imports.get(id(scope), []):
                    out.setdefault(local, []).append(("binding", binding))
        return out

    def env(self, definition: _Def) -> dict[str, Types]:
        """The types of the function's local names: the least fixpoint of its bindings (all of them, wherever in
        the function: the order of statements is ignored)."""
        key = id(definition.node)
        if key in self._envs:
            return self._envs[key]
        if key in self._busy:  # its own names used while they are being worked out: anything
            return dict.fromkeys(self._bindings(definition))
        self._busy.add(key)
        try:
            bindings = self._bindings(definition)
            types: dict[str, Types] = dict.fromkeys(bindings, frozenset())
            changed = True
            while changed:
                changed = False
                for name, sources in bindings.items():
                    if types[name] is None:
                        continue
                    new = _union(types[name], *(self._source(definition, s, types) for s in sources))
                    if new != types[name]:
                        types[name], changed = new, True
            self._envs[key] = types
            return types
        finally:
            self._busy.discard(key)

    def _source(self, definition: _Def, source: tuple[str, Any], types: dict[str, Types]) -> Types:
        kind, value = source
        if kind == "self":
            return frozenset({("cls", value)})
        if kind == "type":
            return frozenset({("type", value)})
        if kind == "atoms":
            return value
        if kind == "ann":
            return self.annotation_types(definition.module, value, definition.owner)
        if kind == "value":
            return self.expr_types(definition.module, value, definition.owner, types)
        if kind == "binding":
            return self._binding_types(self.symbol(value[1], value[2]) if value[0] == "from" else value)
        return None

    def expr_types(self, module: str, node: ast.expr, owner: str | None, local: Mapping[str, Types] | None) -> Types:
        """What ``node`` evaluates to, in a function whose local names have the types ``local`` (None: the
        module's top level)."""
        if isinstance(node, ast.Name):
            if local is not None and node.id in local:
                return local[node.id]
            binding = self.symbol(module, node.id)
            if binding and binding[0] == "from":
                return None
            return self._binding_types(binding) if binding else None
        if isinstance(node, ast.Constant | ast.JoinedStr | ast.Compare):
            return frozenset({VALUE})
        if isinstance(node, ast.UnaryOp):
            return frozenset({VALUE}) if isinstance(node.op, ast.Not) else None
        if isinstance(node, ast.List | ast.Tuple | ast.Set | ast.Dict | ast.ListComp | ast.SetComp | ast.DictComp):
            return frozenset({CONTAINER})
        if isinstance(node, ast.GeneratorExp):
            return frozenset({CONTAINER})
        if isinstance(node, ast.BoolOp):
            return _union(*(self.expr_types(module, v, owner, local) for v in node.values))
        if isinstance(node, ast.IfExp):
            return _union(
                self.expr_types(module, node.body, owner, local), self.expr_types(module, node.orelse, owner, local)
            )
        if isinstance(node, ast.NamedExpr):
            return self.expr_types(module, node.value, owner, local)
        if isinstance(node, ast.BinOp):
            left = self.expr_types(module, node.left, owner, local)
            return frozenset({VALUE}) if left == frozenset({VALUE}) else None
        if isinstance(node, ast.Attribute):
            return self._attribute_types(module, node, owner, local)
        if isinstance(node, ast.Call):
            return self._call_types(module, node, owner, local)
        return None  # subscripts, awaits, lambdas, starred: anything

    def _attribute_types(self, module: str, node: ast.Attribute, owner: str | None, local: Any) -> Types:
        receiver = self.expr_types(module, node.value, owner, local)
        if receiver is None or not receiver:
            return None
        out: list[Types] = []
        for kind, key in receiver:
            if kind == "mod":
                if _module_path(f"{key}.{node.attr}") is not None:
                    out.append(frozenset({("mod", f"{key}.{node.attr}")}))
                else:
                    out.append(self._binding_types(self.symbol(key, node.attr)))
            elif kind == "cls":
                out.append(self.attribute_types(key, node.attr))
            elif kind == "extobj":
                out.append(frozenset({("extobj", f"{key}.{node.attr}")}))
            elif (kind, key) == VALUE:
                out.append(frozenset({VALUE}))
            else:
                out.append(None)
        return _union(*out)

    def _call_types(self, module: str, node: ast.Call, owner: str | None, local: Any) -> Types:
        func = node.func
        if isinstance(func, ast.Name) and (local is None or func.id not in local):
            binding = self.symbol(module, func.id)
            if binding is None:
                if func.id in _VALUE_BUILTINS:
                    return frozenset({VALUE})
                return frozenset({CONTAINER}) if func.id in _CONTAINER_BUILTINS else None
            if binding[0] == "def":
                return self._returns(binding[1])
        callee = self.expr_types(module, func, owner, local)
        if callee and all(kind == "extobj" for kind, _ in callee):  # outside code: a class makes an instance
            made: list[Types] = []
            for _, name in callee:
                last = name.rsplit(".", 1)[-1]
                if last in _VALUE_CLASSES:
                    made.append(frozenset({VALUE}))
                elif last[:1].isupper() and last not in _OPAQUE:
                    made.append(frozenset({("ext", last)}))
                else:
                    made.append(None)  # a function of a library: it may hand back what it was given
            return _union(*made)
        if isinstance(func, ast.Attribute):
            receiver = self.expr_types(module, func.value, owner, local)
            if receiver == frozenset({VALUE}):
                return frozenset({VALUE})
            if receiver and all(kind in ("cls", "type") for kind, _ in receiver):
                results = [
                    self._returns(d)
                    for _, key in receiver
                    for d in self.methods(key, func.attr, live_only=False)
                    if "property" not in d.decorators()
                ]
                if results and callee is None:
                    return _union(*results)
        if callee and all(kind == "type" for kind, _ in callee):
            out: set[Atom] = set()
            for _, key in callee:
                cls = self.classes[key]
                self._bases(cls)
                out.add(("proto" if cls.protocol else "cls", key))
            return frozenset(out)
        return None

    def methods(self, key: str, name: str, live_only: bool = True) -> list[_Def]:
        """``name``'s definitions a receiver of class ``key`` can run: in its bases, or overridden in a (live)
        subclass."""
        family = self.ancestors(key) | {
            d for d in self.descendants(key) if not live_only or any(d in self.ancestors(x) for x in self.live)
        }
        return [m for k in family if k in self.classes for m in self.classes[k].methods.get(name, [])]

    def attribute_types(self, key: str, attr: str) -> Types:
        """The values ``<instance of key>.attr`` can hold: class fields (annotated or assigned), properties and
        every ``self.attr = …`` in the class's family."""
        memo = (key, attr)
        if memo in self._attr_types:
            return self._attr_types[memo]
        if attr in self._foreign():  # assigned from outside the class somewhere: not followed
            return None
        if memo in self._busy:
            return None
        self._busy.add(memo)
        try:
            family = self.ancestors(key) | self.descendants(key)
            found: list[Types] = []
            for k in family:
                cls = self.classes.get(k)
                if cls is None:
                    continue
                for item in cls.node.body:
                    if isinstance(item, ast.AnnAssign) and getattr(item.target, "id", None) == attr:
                        found.append(self.annotation_types(cls.module, item.annotation, k))
                    elif isinstance(item, ast.Assign) and any(getattr(t, "id", None) == attr for t in item.targets):
                        value = self.expr_types(cls.module, item.value, k, None)
                        # a descriptor (LazyClient): what __get__ returns, not the descriptor
                        descriptor = value is None or any(
                            kind == "cls" and self.methods(c, "__get__", live_only=False) for kind, c in value
                        )
                        found.append(None if descriptor else value)
                for method in (m for ms in cls.methods.values() for m in ms):
                    if method.node.name == attr:
                        is_property = "property" in method.decorators() or "cached_property" in method.decorators()
                        found.append(self._returns(method) if is_property else None)
                    for node in ast.walk(method.node):
                        targets = (
                            node.targets
                            if isinstance(node, ast.Assign)
                            else [node.target]
                            if isinstance(node, ast.AnnAssign)
                            else []
                        )
                        for target in targets:
                            if isinstance(target, ast.Tuple):
                                if any(_is_self_attr(t, attr) for t in target.elts):
                                    values = node.value.elts if isinstance(node.value, ast.Tuple) else None
                                    index = [_is_self_attr(t, attr) for t in target.elts].index(True)
                                    found.append(
                                        self.expr_types(cls.module, values[index], k, self.env(method))
                                        if values and len(values) == len(target.elts)
                                        else None
                                    )
                            elif _is_self_attr(target, attr):
                                if isinstance(node, ast.AnnAssign):
                                    found.append(self.annotation_types(cls.module, node.annotation, k))
                                if node.value is not None:
                                    found.append(self.expr_types(cls.module, node.value, k, self.env(method)))
            external = any(self.classes[k].ext_bases - _NOT_INSTANCE_BASES for k in family if k in self.classes)
            result = _union(*found) if found and not external else None
            self._attr_types[memo] = result
            return result
        finally:
            self._busy.discard(memo)

    def _foreign(self) -> set[str]:
        """Attributes some project code assigns on an object other than ``self`` (``job.client = …``): their
        values are not followed, so such an attribute's type is unknown."""
        if self._foreign_attrs is None:
            trees = [m.tree for m in self.modules.values()]
            for package in PACKAGES:
                trees += [ast.parse(p.read_text()) for p in sorted((ROOT / package).rglob("*.py"))]
            self._foreign_attrs = {
                target.attr
                for tree in trees
                for node in ast.walk(tree)
                if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign)
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                for target in ast.walk(target)
                if isinstance(target, ast.Attribute)
                and isinstance(target.ctx, ast.Store)
                and not (isinstance(target.value, ast.Name) and target.value.id in ("self", "cls"))
            }
        return self._foreign_attrs

    # -- code regions ----------------------------------------------------------------------------------------------
    def _region(self, node: ast.AST) -> Iterator[ast.AST]:
        """The nodes that run when ``node`` runs: a module's top level (not its function bodies, but decorators,
        defaults and class bodies), or a whole function body (nested functions included). Annotations are left
        out: they name classes, they create no instance."""
        queue = deque([node])  # breadth first, in source order: imports bind names before later lines use them
        top = isinstance(node, ast.Module)
        while queue:
            current = queue.popleft()
            yield current
            if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                args = current.args
                queue.extend(d for d in args.defaults + args.kw_defaults if d is not None)
                if isinstance(current, ast.Lambda):
                    queue.append(current.body)
                else:
                    queue.extend(current.decorator_list)
                    if not top:
                        queue.extend(current.body)
                continue
            for child in ast.iter_child_nodes(current):
                if isinstance(child, ast.arg):
                    continue
                if (  # `class B(A)` creates no A
                    isinstance(current, ast.ClassDef)
                    and child in current.bases
                    and isinstance(child, ast.Name | ast.Attribute | ast.Subscript)
                ):
                    continue
                if isinstance(current, ast.AnnAssign) and child is current.annotation:
                    continue
                queue.append(child)

    def walk(self, module: str, node: ast.AST, owner: str | None) -> None:
        definition = _Def(module, node, owner) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else None
        local = self.env(definition) if definition else None
        for current in self._region(node):
            if isinstance(current, ast.Import | ast.ImportFrom):
                self._imports(module, current)
            elif isinstance(current, ast.Name) and isinstance(current.ctx, ast.Load):
                where = f"{module}:{current.lineno}"
                if local is None or current.id not in local:
                    self._bound(self.symbol(module, current.id), where)
                for kind, binding in self._local_sources(definition, current.id):
                    if kind == "binding":  # imported inside the function
                        self._bound(self.symbol(binding[1], binding[2]) if binding[0] == "from" else binding, where)
            elif isinstance(current, ast.Attribute) and isinstance(current.ctx, ast.Load):
                self._attribute(module, current, owner, local)
            if isinstance(current, ast.Call):
                self._call(module, current, owner, local)

    def _local_sources(self, definition: _Def | None, name: str) -> list[tuple[str, Any]]:
        return self._bindings(definition).get(name, []) if definition else []

    def _bound(self, binding: Binding | None, where: str) -> None:
        """A name used: the function it names is reachable, the class it names is live."""
        if binding is None:
            return
        if binding[0] == "def":
            self._reach(binding[1], where)
        elif binding[0] == "class":
            self._make_live(binding[1])

    def _attribute(self, module: str, node: ast.Attribute, owner: str | None, local: Any) -> None:
        where = f"{module}:{node.lineno}"
        if isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "super" and owner:
            self.typed_refs.setdefault(node.attr, set()).add(owner)
            return
        receiver = self.expr_types(module, node.value, owner, local)
        if receiver is None:
            self.unknown_refs.setdefault(node.attr, []).append(where)
            return
        for kind, key in receiver:
            if kind == "mod":
                if _module_path(f"{key}.{node.attr}") is None:
                    self._bound(self.symbol(key, node.attr), where)
            elif kind in ("cls", "type"):
                self.typed_refs.setdefault(node.attr, set()).add(key)
            elif kind == "proto":
                self.proto_refs.setdefault(node.attr, set()).add(key)
            elif kind == "ext":
                self.ext_refs.setdefault(node.attr, set()).add(key)

    def _reach(self, definition: _Def, why: str) -> None:
        if id(definition.node) not in self.reached:
            self.reached[id(definition.node)] = why
            self.work.append((definition.module, definition.node, definition.owner, why))

    def _make_live(self, key: str) -> None:
        if key in self.live:
            return
        self.live.add(key)
        for ancestor in self.ancestors(key):  # its clients (and its bases') can be made now
            if ancestor in self.classes:
                self.services.update(self.classes[ancestor].clients.values())

    def _call(self, module: str, call: ast.Call, owner: str | None, local: Any) -> None:
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name is None:
            return
        if name == "client" and _is_boto3_client(func):
            if module in CLIENT_FACTORIES and not (call.args and isinstance(call.args[0], ast.Constant)):
                return
            self.services.add(_literal(call, 0, f"{module}:{call.lineno}: client() of a computed service name"))
        elif name == "resource" and _is_boto3_client(func):
            raise UnsupportedAwsUsage(f"{module}:{call.lineno}: boto3 resources are not collected; use a client")
        if isinstance(func, ast.Attribute):
            receiver = self.expr_types(module, func.value, owner, local)
            if receiver and all(kind in ("cls", "type", "mod", "proto") for kind, _ in receiver):
                return  # a project object's method: reached above, it is no boto3 client
            self.method_calls.append((module, name, call, self._receiver_service(module, func.value, owner, local)))

    def _receiver_service(self, module: str, receiver: ast.expr, owner: str | None, local: Any) -> str | None:
        """The service of ``<obj>.<attr>`` when every class ``obj`` can be declares ``<attr> = LazyClient("svc")``."""
        if not isinstance(receiver, ast.Attribute):
            return None
        holder = self.expr_types(module, receiver.value, owner, local)
        if not holder or any(kind != "cls" for kind, _ in holder):
            return None
        services = set()
        for _, key in holder:
            found = {
                self.classes[k].clients[receiver.attr]
                for k in self.ancestors(key) | self.descendants(key)
                if k in self.classes and receiver.attr in self.classes[k].clients
            }
            if len(found) != 1:
                return None
            services |= found
        return services.pop() if len(services) == 1 else None

    # -- the fixpoint ----------------------------------------------------------------------------------------------
    def _expand(self) -> None:
        """Methods of live classes that the attribute names read so far can reach."""
        for key in list(self.classes):
            live = [x for x in self.live if key in self.ancestors(x)]  # instances of key or of a subclass exist
            if not live:
                continue
            for name, defs in self.classes[key].methods.items():
                for definition in defs:
                    if id(definition.node) in self.reached:
                        continue
                    why = self._why_method(key, name, definition, live)
                    if why:
                        self._reach(definition, why)

    def _why_method(self, key: str, name: str, definition: _Def, live: list[str]) -> str | None:
        if _dunder(name):
            return "a dunder method of a live class"
        if definition.hook():
            return f"decorated with {sorted(definition.decorators() - _LOOKUP_DECORATORS)}"
        if name in self.unknown_refs:
            return f".{name} on a receiver of unknown type ({', '.join(self.unknown_refs[name][:3])})"
        family = self.ancestors(key) | self.descendants(key)
        for cls in self.typed_refs.get(name, set()) & family:
            return f".{name} on a {cls}"
        for proto in self.proto_refs.get(name, set()):
            if any(self._implements(x, proto) for x in live):
                return f".{name} on a {proto}"
        for ext in self.ext_refs.get(name, set()):
            if any(ext in self._ext_ancestors(x) for x in live):
                return f".{name} on a {ext}"
        return None

    def _implements(self, key: str, proto: str) -> bool:
        wanted = {m for m in self.classes[proto].methods if not _dunder(m)}
        return key != proto and wanted <= self._members(key)

    def run(self) -> None:
        while True:
            while self.work:
                module, node, owner, _ = self.work.pop()
                self.walk(module, node, owner)
            self._expand()
            if not self.work:
                return


def _names(target: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def _is_self_attr(target: ast.AST, attr: str) -> bool:
    return (
        isinstance(target, ast.Attribute)
        and target.attr == attr
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
    )


def _is_boto3_client(func: ast.expr) -> bool:
    """boto3.client(…) or <a Session>.client(…); a bare client() is some other function."""
    return isinstance(func, ast.Attribute) and (
        (isinstance(func.value, ast.Name) and func.value.id == "boto3")
        or (isinstance(func.value, ast.Call) and getattr(func.value.func, "attr", "") == "Session")
        or (isinstance(func.value, ast.Name) and "session" in func.value.id.lower())
    )


def _literal(call: ast.Call, index: int, problem: str) -> str:
    arg = call.args[index] if len(call.args) > index else None
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    raise UnsupportedAwsUsage(problem)


@functools.cache
def _opensearch_methods() -> dict[tuple[str, str], str]:
    """(client class, method) → the HTTP method opensearch-py sends, read from its source
    (``self.transport.perform_request("POST", …)``)."""
    from opensearchpy import OpenSearch
    from opensearchpy.client.indices import IndicesClient

    verbs: dict[tuple[str, str], str] = {}
    for kind, cls in (("client", OpenSearch), ("indices", IndicesClient)):
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            found = set(re.findall(r"perform_request\(\s*\"([A-Z]+)\"", inspect.getsource(fn)))
            if len(found) == 1:
                verbs[(kind, name)] = found.pop()
    return verbs


def handler_file(template: Template, logical_id: str) -> tuple[str, Path]:
    spec = template.function(logical_id)
    path = module_file(spec)
    if path is None:
        raise FileNotFoundError(f"{logical_id}: no file for {spec.module} on {spec.search_path}")
    return spec.module, path


def code_calls(template: Template, logical_id: str) -> CodeCalls:
    """The AWS operations ``logical_id``'s code can call (see the module docstring for how); cached per handler,
    as the source does not change during a test session."""
    module, path = handler_file(template, logical_id)
    return _code_calls(module, path, template.function(logical_id).attribute)


def collect(module: str, path: Path, attribute: str) -> _Collector:
    """The collector run from one handler (``attribute`` of ``module`` at ``path``), for callers that ask why."""
    collector = _Collector()
    entry = f"__handler__.{module}"
    collector.load(entry, path)
    collector.run()  # the handler module's top level first: its imports bind the names the handler uses
    collector._bound(collector.symbol(entry, attribute), f"Lambda calls {attribute}")
    for node in collector.modules[entry].tree.body:  # and a framework calls what the handler module registers
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.decorator_list:  # (Chalice routes)
            collector._reach(_Def(entry, node, None), f"registered by {entry}:{node.lineno}")
    collector.run()
    return collector


@functools.cache
def _code_calls(module: str, path: Path, attribute: str) -> CodeCalls:
    return collect_calls(module, path, attribute)


def collect_calls(module: str, path: Path, attribute: str) -> CodeCalls:
    """The operations the handler ``attribute`` of ``module`` (the file at ``path``) can call, uncached."""
    collector = collect(module, path, attribute)
    calls: set[Call] = set()
    http: set[HttpCall] = set()
    for mod, name, call, known in collector.method_calls:
        where = f"{mod.removeprefix('__handler__.')}:{call.lineno}"
        # boto3 client methods take keyword arguments only (botocore raises TypeError on positional ones), so a
        # call with positional arguments is some other object's method of the same name.
        keywords_only = not call.args or any(isinstance(a, ast.Starred) for a in call.args)
        if known and known not in collector.services:
            continue  # a method of a class whose client is never made (the class itself is unreachable)
        for service in [known] if known else sorted(collector.services):
            ops = _snake_operations(service)
            if name in ops and keywords_only:
                calls.add(Call(service, ops[name], where))
            elif name == "get_paginator" and call.args:
                op = ops.get(_literal(call, 0, f"{where}: get_paginator() of a computed name"))
                if op:
                    calls.add(Call(service, op, where))
            elif name == "get_waiter" and call.args:
                waiter = _literal(call, 0, f"{where}: get_waiter() of a computed name")
                with contextlib.suppress(KeyError):
                    calls.add(Call(service, _waiter_operation(service, waiter), where))
            elif service == "s3" and name in _S3_TRANSFER and len(call.args) + len(call.keywords) >= 3:
                calls.update(Call("s3", op, where) for op in _S3_TRANSFER[name])
        if "opensearchpy" in collector.third_party.get(mod, set()):
            receiver = call.func.value if isinstance(call.func, ast.Attribute) else None
            kind = "indices" if isinstance(receiver, ast.Attribute) and receiver.attr == "indices" else "client"
            if isinstance(receiver, ast.Name) and receiver.id == "helpers" and name == "bulk":
                kind, name = "client", "bulk"  # helpers.bulk sends the client's _bulk requests
            verb = _opensearch_methods().get((kind, name))
            if verb and (kind == "indices" or getattr(receiver, "attr", "") == "client" or name == "bulk"):
                http.add(HttpCall(verb, where))
    return CodeCalls(sorted(collector.modules), collector.services, calls, http)


# ---- 2. operation → IAM actions ---------------------------------------------------------------------------------
@functools.cache
def iam_definition() -> dict[str, set[str]]:
    """The Service Authorization Reference as parliament ships it offline: service prefix → its actions (read once,
    by tests/iam_model.py, which the deploy-role and lint tests share)."""
    from tests.iam_model import _sar

    return {prefix: {p["privilege"] for s in services for p in s["privileges"]} for prefix, services in _sar().items()}


def known_action(action: str) -> bool:
    prefix, _, name = action.partition(":")
    return name in iam_definition().get(prefix, set())


# Operations whose IAM action is not <signing name>:<operation name>, each as its API reference states.
ACTION_EXCEPTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    # "You must have permission to perform the s3:ListBucket action." (botocore s3 model, ListObjectsV2 docs;
    # https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html)
    ("s3", "ListObjectsV2"): ("s3:ListBucket",),
    ("s3", "ListObjects"): ("s3:ListBucket",),
    # "To use HEAD, you must have the s3:GetObject permission." (API_HeadObject.html)
    ("s3", "HeadObject"): ("s3:GetObject",),
    # Multipart uploads are authorised as s3:PutObject; aborting has its own action
    # (https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html#mpuAndPermissions).
    ("s3", "CreateMultipartUpload"): ("s3:PutObject",),
    ("s3", "UploadPart"): ("s3:PutObject",),
    ("s3", "CompleteMultipartUpload"): ("s3:PutObject",),
    ("s3", "UploadPartCopy"): ("s3:PutObject", "s3:GetObject"),
    ("s3", "CopyObject"): ("s3:PutObject", "s3:GetObject"),  # API_CopyObject.html: read the source, write the target
    # "To call Converse, you require permission for the bedrock:InvokeModel operation. To call ConverseStream, you
    # require permission for the bedrock:InvokeModelWithResponseStream operation."
    # (https://docs.aws.amazon.com/bedrock/latest/userguide/conversation-inference-call.html)
    # With guardrailConfig, Converse also needs bedrock:ApplyGuardrail on the guardrail ("Set up permissions to use
    # Amazon Bedrock Guardrails": https://docs.aws.amazon.com/bedrock/latest/userguide/guardrails-permissions.html);
    # /chat always sends one when READMIT_GUARDRAIL_ID is set (chalicelib/similar/chat.py).
    ("bedrock-runtime", "Converse"): ("bedrock:InvokeModel", "bedrock:ApplyGuardrail"),
    ("bedrock-runtime", "ConverseStream"): ("bedrock:InvokeModelWithResponseStream",),
    # The batch APIs are authorised as the single-message actions (SQS API reference, SendMessageBatch /
    # DeleteMessageBatch / ChangeMessageVisibilityBatch: "the same permissions as the single action").
    # CreateTrainingJob passes RoleArn to SageMaker: the SAR lists iam:PassRole and sagemaker:AddTags as its dependent
    # actions (parliament iam_definition.json, sagemaker CreateTrainingJob "dependent_actions").
    ("sagemaker", "CreateTrainingJob"): ("sagemaker:CreateTrainingJob", "iam:PassRole", "sagemaker:AddTags"),
    ("sqs", "SendMessageBatch"): ("sqs:SendMessage",),
    ("sqs", "DeleteMessageBatch"): ("sqs:DeleteMessage",),
    ("sqs", "ChangeMessageVisibilityBatch"): ("sqs:ChangeMessageVisibility",),
}

# SAR: es:ESHttp<Method> for an OpenSearch Service domain; aoss:APIAccessAll for a Serverless collection
# (https://docs.aws.amazon.com/opensearch-service/latest/developerguide/ac.html,
#  https://docs.aws.amazon.com/opensearch-service/latest/developerguide/security-iam-serverless.html).
OPENSEARCH_SERVERLESS_ACTION = "aoss:APIAccessAll"


def opensearch_action(method: str) -> str:
    return f"es:ESHttp{method.capitalize()}"


def iam_actions(service: str, operation: str) -> tuple[str, ...]:
    """The IAM actions one operation needs (without the KMS ones its resource's encryption adds)."""
    if (service, operation) in ACTION_EXCEPTIONS:
        return ACTION_EXCEPTIONS[(service, operation)]
    model = _session().get_service_model(service)
    prefix = model.signing_name  # bedrock-runtime signs as "bedrock", like its IAM prefix
    return (f"{prefix}:{operation}",)


# ---- 3. the role ---------------------------------------------------------------------------------------------------
# AWS managed policies SAM attaches, as the AWS Managed Policy Reference lists them
# (https://docs.aws.amazon.com/aws-managed-policy/latest/reference/<name>.html).
MANAGED_POLICIES: dict[str, tuple[str, ...]] = {
    "AWSLambdaBasicExecutionRole": ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"),
    "AWSXrayWriteOnlyAccess": (
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "xray:GetSamplingRules",
        "xray:GetSamplingTargets",
        "xray:GetSamplingStatisticSummaries",
    ),
    "AWSLambdaVPCAccessExecutionRole": (
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "ec2:CreateNetworkInterface",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSubnets",
        "ec2:DeleteNetworkInterface",
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
    ),
    "AWSLambdaSQSQueueExecutionRole": (
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    ),
}

_INTRINSIC_SHORT = {"Sub", "If", "Join", "Not", "Equals", "Select", "Split", "FindInMap", "Base64", "Cidr"}
_INTRINSIC_SHORT |= {"GetAZs", "ImportValue", "And", "Or"}


def _long_form(value: Any) -> Any:
    """{"GetAtt": "A.Arn"} → {"Fn::GetAtt": ["A", "Arn"]} and so on: samtranslator reads only the long forms."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "GetAtt":
                return {"Fn::GetAtt": arg.split(".", 1) if isinstance(arg, str) else _long_form(arg)}
            if key in _INTRINSIC_SHORT:
                return {f"Fn::{key}": _long_form(arg)}
        return {k: _long_form(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_long_form(v) for v in value]
    return value


@functools.cache
def translated(path: Path = ROOT / "template.yaml") -> dict[str, Any]:
    """template.yaml as SAM deploys it (AWS::Serverless::* expanded), offline: code URIs replaced by dummies."""
    from samtranslator.translator.transform import transform

    data = _long_form(load_template(path))
    for resource in data["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            if props.get("PackageType") == "Image":
                props["ImageUri"] = "123456789012.dkr.ecr.us-east-1.amazonaws.com/readmit:latest"
            else:
                props["CodeUri"] = "s3://readmit-placeholder/code.zip"
        elif resource["Type"] == "AWS::Serverless::StateMachine" and "DefinitionUri" in props:
            props["DefinitionUri"] = "s3://readmit-placeholder/definition.json"

    class NoManagedPolicyNames:  # the functions' Policies name no managed policy, so nothing to look up
        def load(self) -> dict[str, str]:
            return {}

    with _region("us-east-1"):
        return transform(data, {}, NoManagedPolicyNames())  # type: ignore[arg-type]


@contextlib.contextmanager
def _region(region: str) -> Iterator[None]:
    import os

    saved = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = region  # samtranslator resolves AWS::Region from the boto3 session
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)
        else:
            os.environ["AWS_DEFAULT_REGION"] = saved


def expand(pattern: str) -> set[str]:
    """An IAM action pattern (``sqs:SendMessage*``, ``s3:*``) as the concrete actions the SAR defines."""
    prefix, _, name = pattern.partition(":")
    prefixes = fnmatch.filter(iam_definition(), prefix) if any(c in prefix for c in "*?") else [prefix]
    return {f"{p}:{a}" for p in prefixes for a in iam_definition().get(p, set()) if fnmatch.fnmatchcase(a, name)}


def _as_list(value: Any) -> list[Any]:
    """A policy element as a list; both branches of an Fn::If (a grant under some parameter values counts as a
    grant: the check is per action, and the code paths it covers are parameter-dependent too)."""
    out: list[Any] = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict) and set(item) == {"Fn::If"}:
            out += [x for branch in item["Fn::If"][1:] for x in _as_list(branch)]
        elif item != {"Ref": "AWS::NoValue"}:
            out.append(item)
    return out


@dataclass(frozen=True)
class Grant:
    """One action the role allows, and where it comes from (a SAM policy template, an inline statement, a managed
    policy) so surplus actions can be traced to the line to change."""

    action: str
    source: str


@functools.cache
def _template(path: Path = ROOT / "template.yaml") -> Template:
    return Template(path)


@functools.cache
def role_grants(logical_id: str) -> frozenset[Grant]:
    """Every action the function's execution role allows, Deny statements subtracted (conditions ignored)."""
    resources = translated()["Resources"]
    role = resources[f"{logical_id}Role"]["Properties"]
    policies = _template().properties(logical_id).get("Policies", [])
    allowed: set[Grant] = set()
    denied: set[str] = set()
    for policy in role.get("Policies", []):
        index = policy["PolicyName"].removeprefix(f"{logical_id}RolePolicy")
        source = policy["PolicyName"]
        if index.isdigit() and int(index) < len(policies) and isinstance(policies[int(index)], dict):
            source = next(iter(policies[int(index)]))  # S3ReadPolicy, …, or "Statement" for inline ones
        for statement in _as_list(policy["PolicyDocument"]["Statement"]):
            if "NotAction" in statement:
                raise UnsupportedAwsUsage(f"{logical_id}: NotAction in {source} is not expanded")
            actions = {a for p in _as_list(statement["Action"]) for a in (expand(p) or {p})}
            if statement["Effect"] == "Deny":
                denied |= actions
            else:
                allowed |= {Grant(a, source) for a in actions}
    for arn in role.get("ManagedPolicyArns", []):
        name = str(arn).rsplit("/", 1)[-1]
        if name not in MANAGED_POLICIES:
            raise UnsupportedAwsUsage(f"{logical_id}: managed policy {arn} has no entry in MANAGED_POLICIES")
        allowed |= {Grant(a, name) for a in MANAGED_POLICIES[name]}
    return frozenset(g for g in allowed if g.action not in denied)


def referenced_resources(value: Any) -> set[str]:
    """Logical ids a (translated) policy fragment names: Ref, GetAtt and ${X} / ${X.Arn} inside Sub."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, arg in value.items():
            if key == "Ref" and isinstance(arg, str):
                found.add(arg)
            elif key == "Fn::GetAtt":
                found.add(arg[0] if isinstance(arg, list) else str(arg).split(".")[0])
            elif key == "Fn::Sub":
                text = arg[0] if isinstance(arg, list) else arg
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text)}
            found |= referenced_resources(arg)
    elif isinstance(value, list):
        for item in value:
            found |= referenced_resources(item)
    return found


def resources_granted(logical_id: str, prefix: str) -> set[str]:
    """Template resources the role's statements for ``prefix:*`` actions name."""
    role = translated()["Resources"][f"{logical_id}Role"]["Properties"]
    names: set[str] = set()
    for policy in role.get("Policies", []):
        for statement in _as_list(policy["PolicyDocument"]["Statement"]):
            if any(str(a).startswith(f"{prefix}:") for a in _as_list(statement.get("Action", []))):
                names |= referenced_resources(statement.get("Resource"))
    return names


# ---- the dynamic check ---------------------------------------------------------------------------------------------
class Recorder:
    """Records (function, service, operation) for every botocore call made while ``active(function)`` is set,
    whatever the thread (s3transfer uploads from a pool). botocore's BaseClient._make_api_call is the one place
    every client operation passes through."""

    def __init__(self) -> None:
        self.calls: dict[str, set[tuple[str, str]]] = {}
        self.current: str | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def installed(self) -> Iterator[Recorder]:
        from botocore.client import BaseClient

        original = BaseClient._make_api_call
        recorder = self

        def recording(client: Any, operation_name: str, api_params: Mapping[str, Any]) -> Any:
            function = recorder.current
            if function is not None:
                with recorder._lock:
                    recorder.calls.setdefault(function, set()).add(
                        (client.meta.service_model.service_name, operation_name)
                    )
            return original(client, operation_name, api_params)

        BaseClient._make_api_call = recording  # type: ignore[method-assign]
        try:
            yield self
        finally:
            BaseClient._make_api_call = original  # type: ignore[method-assign]

    @contextlib.contextmanager
    def active(self, function: str) -> Iterator[None]:
        previous, self.current = self.current, function
        try:
            yield
        finally:
            self.current = previous


# ---- what a function needs, and the comparison ---------------------------------------------------------------------
@dataclass(frozen=True)
class Need:
    """Actions the function needs for one reason: all of one of ``any_of`` (more than one only where the code
    supports alternatives, e.g. an OpenSearch domain or a Serverless collection)."""

    any_of: tuple[frozenset[str], ...]
    because: str

    @classmethod
    def of(cls, because: str, *actions: str) -> Need:
        return cls((frozenset(actions),), because)

    def actions(self) -> set[str]:
        return set().union(*self.any_of)


def _kms_encrypted(resource: Mapping[str, Any]) -> bool:
    """Whether a bucket, queue or secret of the template is encrypted with a KMS key the caller must be allowed."""
    props = resource.get("Properties", {})
    kind = resource.get("Type")
    if kind == "AWS::S3::Bucket":
        rules = props.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [])
        return any(r.get("ServerSideEncryptionByDefault", {}).get("SSEAlgorithm") == "aws:kms" for r in rules)
    if kind == "AWS::SQS::Queue":
        return "KmsMasterKeyId" in props
    if kind == "AWS::SecretsManager::Secret":
        return "KmsKeyId" in props
    return False


def _encrypted(logical_id: str, prefix: str, template: Template) -> bool:
    return any(_kms_encrypted(template.resources.get(r, {})) for r in resources_granted(logical_id, prefix))


S3_READS = {"GetObject", "HeadObject", "CopyObject", "UploadPartCopy"}
S3_WRITES = {"PutObject", "CopyObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy"}
S3_MULTIPART = {"CreateMultipartUpload", "UploadPart", "UploadPartCopy", "CompleteMultipartUpload"}
LAMBDA_VPC_ACTIONS = MANAGED_POLICIES["AWSLambdaVPCAccessExecutionRole"][3:]


def needs(template: Template, logical_id: str) -> list[Need]:
    """Every action the function needs: its code's calls, the KMS use their encrypted resources add, and what
    Lambda itself does with the execution role (logs, traces, the SQS poller, the dead-letter queue, VPC ENIs)."""
    found = code_calls(template, logical_id)
    out: list[Need] = []
    for call in sorted(found.calls, key=lambda c: (c.service, c.operation, c.where)):
        out.append(
            Need.of(f"{call.service} {call.operation} ({call.where})", *iam_actions(call.service, call.operation))
        )
    s3_ops = {c.operation for c in found.calls if c.service == "s3"}
    if s3_ops & {"GetObject", "HeadObject"}:
        # The code tells a missing key by its 404 (storage._MISSING_CODES, batch_job, ingest); without
        # s3:ListBucket S3 answers 403 instead ("If you don't have the s3:ListBucket permission, Amazon S3 returns
        # an HTTP status code 403", API_HeadObject.html / API_GetObject.html).
        out.append(Need.of("s3 404 for a missing key (HeadObject/GetObject)", "s3:ListBucket"))
    if _encrypted(logical_id, "s3", template):
        # SSE-KMS: reads need kms:Decrypt, writes kms:GenerateDataKey, and a multipart upload both
        # (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html; botocore s3 model,
        # CreateMultipartUpload: "the requester must have permission to the kms:Decrypt and kms:GenerateDataKey").
        if s3_ops & S3_READS:
            out.append(Need.of("s3 reads of SSE-KMS objects", "kms:Decrypt"))
        if s3_ops & S3_WRITES:
            out.append(Need.of("s3 writes of SSE-KMS objects", "kms:GenerateDataKey"))
        if s3_ops & S3_MULTIPART:
            out.append(Need.of("s3 multipart upload with SSE-KMS", "kms:Decrypt", "kms:GenerateDataKey"))
    sqs_ops = {c.operation for c in found.calls if c.service == "sqs"}
    if sqs_ops & {"SendMessage", "SendMessageBatch"} and _encrypted(logical_id, "sqs", template):
        # Producers to an SSE-KMS queue need kms:GenerateDataKey and kms:Decrypt on its key
        # (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-key-management.html).
        out.append(Need.of("sqs send to an SSE-KMS queue", "kms:GenerateDataKey", "kms:Decrypt"))
    if ("secretsmanager", "GetSecretValue") in found.operations() and _encrypted(
        logical_id, "secretsmanager", template
    ):
        # "kms:Decrypt - required only if you use a customer managed key to encrypt the secret" (API_GetSecretValue).
        out.append(Need.of("secretsmanager GetSecretValue of a CMK-encrypted secret", "kms:Decrypt"))
    if found.opensearch:
        verbs = sorted({h.method for h in found.opensearch})
        where = ", ".join(sorted({h.where for h in found.opensearch})[:3])
        domain = frozenset(opensearch_action(v) for v in verbs)
        out.append(
            Need((domain, frozenset({OPENSEARCH_SERVERLESS_ACTION})), f"opensearch-py {'/'.join(verbs)} ({where})")
        )
    out.extend(platform_needs(template, logical_id))
    return out


def platform_needs(template: Template, logical_id: str) -> list[Need]:
    """What Lambda does with the execution role for this function's configuration."""
    props = template.properties(logical_id)
    # Logs: "Lambda needs permission to upload logs to CloudWatch Logs" — logs:CreateLogStream, logs:PutLogEvents
    # (https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs.html); the log groups are in the stack.
    out = [Need.of("Lambda writes the function's logs", "logs:CreateLogStream", "logs:PutLogEvents")]
    if props.get("Tracing") == "Active":
        # https://docs.aws.amazon.com/lambda/latest/dg/services-xray.html: xray:PutTraceSegments and
        # xray:PutTelemetryRecords (what AWSXRayDaemonWriteAccess grants for sending traces).
        out.append(Need.of("Tracing: Active", "xray:PutTraceSegments", "xray:PutTelemetryRecords"))
    for name, event in props.get("Events", {}).items():
        if event.get("Type") == "SQS":
            # https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-configure.html#events-sqs-permissions
            out.append(
                Need.of(f"SQS event {name}", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")
            )
            queue = referenced_resources(_long_form(event["Properties"].get("Queue")))
            if any(_kms_encrypted(template.resources.get(q, {})) for q in queue):
                out.append(Need.of(f"SQS event {name} from an SSE-KMS queue", "kms:Decrypt"))
    dlq = props.get("DeadLetterQueue")
    if dlq:
        target = referenced_resources(_long_form(dlq.get("TargetArn")))
        if dlq.get("Type") == "SQS":
            # https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html#invocation-dlq
            out.append(Need.of("DeadLetterQueue (SQS)", "sqs:SendMessage"))
            if any(_kms_encrypted(template.resources.get(q, {})) for q in target):
                out.append(Need.of("DeadLetterQueue on an SSE-KMS queue", "kms:GenerateDataKey", "kms:Decrypt"))
        else:
            out.append(Need.of("DeadLetterQueue (SNS)", "sns:Publish"))
    if props.get("VpcConfig"):
        # https://docs.aws.amazon.com/lambda/latest/dg/configuration-vpc.html#configuration-vpc-permissions
        out.append(Need.of("VpcConfig (ENIs)", *LAMBDA_VPC_ACTIONS))
    return out


# Actions a role may grant without the code using them, each with its reason. Keyed by where the grant comes from,
# so an inline statement granting an unused action is never excused.
ALLOWED_SURPLUS: dict[str, dict[str, str]] = {
    "AWSLambdaBasicExecutionRole": {
        "logs:CreateLogGroup": "AWS managed policy SAM attaches to every function; the stack declares the log groups",
    },
    "AWSLambdaSQSQueueExecutionRole": {
        "logs:CreateLogGroup": "AWS managed policy SAM attaches for an SQS event; the stack declares the log group",
    },
    "AWSLambdaVPCAccessExecutionRole": {
        "logs:CreateLogGroup": "AWS managed policy SAM attaches for VpcConfig; the stack declares the log group",
    },
    "AWSXrayWriteOnlyAccess": {
        a: "AWS managed policy SAM attaches for Tracing: Active (sampling rules are read by the X-Ray SDK)"
        for a in ("xray:GetSamplingRules", "xray:GetSamplingTargets", "xray:GetSamplingStatisticSummaries")
    },
    # SAM policy templates (samtranslator/policy_templates_data/policy_templates.json) grant more than one
    # function uses; narrowing them means replacing the template with an inline statement.
    "S3ReadPolicy": {
        a: "SAM S3ReadPolicy template; narrow to s3:GetObject + s3:ListBucket"
        for a in ("s3:GetBucketLocation", "s3:GetObjectVersion", "s3:GetLifecycleConfiguration")
    },
    "S3WritePolicy": {
        a: "SAM S3WritePolicy template; narrow to s3:PutObject"
        for a in ("s3:PutObjectAcl", "s3:PutLifecycleConfiguration")
    },
    "S3CrudPolicy": {
        a: "SAM S3CrudPolicy template; narrow to the object actions used"
        for a in (
            "s3:GetBucketLocation",
            "s3:GetObjectVersion",
            "s3:PutObjectAcl",
            "s3:GetLifecycleConfiguration",
            "s3:PutLifecycleConfiguration",
            "s3:DeleteObject",
        )
    },
    "DynamoDBCrudPolicy": {
        a: "SAM DynamoDBCrudPolicy template; narrow to dynamodb:Query + dynamodb:PutItem"
        for a in (
            "dynamodb:GetItem",
            "dynamodb:DeleteItem",
            "dynamodb:Scan",
            "dynamodb:UpdateItem",
            "dynamodb:BatchWriteItem",
            "dynamodb:BatchGetItem",
            "dynamodb:DescribeTable",
            "dynamodb:ConditionCheckItem",
        )
    },
    # Not a boto3 call, so the collector cannot see it: MLflow's REST client, signed with SigV4 by the
    # sagemaker-mlflow plugin, tags the training run with the registry version (chalicelib/model/tracking.py
    # record_registration → MlflowClient.log_batch). Granted only when MlflowTrackingServerArn is set.
    "Statement": {
        "sagemaker-mlflow:LogBatch": "MLflow's client (sagemaker-mlflow plugin, not boto3) tags the run: tracking.py",
    },
}


@dataclass
class Verdict:
    """One function's comparison: actions needed and not granted, and granted but not needed."""

    missing: dict[str, list[str]]  # action → why it is needed
    surplus: dict[str, list[str]]  # action → where it is granted
    excused: dict[str, str]  # allowed surplus: action → reason


def compare(need_list: list[Need], grants: set[Grant] | frozenset[Grant]) -> Verdict:
    """Pure comparison of what is needed and what is granted (the tests also feed it synthetic roles)."""
    granted = {g.action for g in grants}
    missing: dict[str, list[str]] = {}
    for need in need_list:
        if not any(option <= granted for option in need.any_of):
            for action in sorted(min(need.any_of, key=lambda o: len(o - granted)) - granted):
                missing.setdefault(action, []).append(need.because)
    used = set().union(*(n.actions() for n in need_list)) if need_list else set()
    surplus: dict[str, list[str]] = {}
    excused: dict[str, str] = {}
    for action in sorted(granted - used):
        sources = sorted({g.source for g in grants if g.action == action})
        reasons = [ALLOWED_SURPLUS.get(s, {}).get(action) for s in sources]
        if all(reasons):
            excused[action] = str(reasons[0])
        else:
            surplus[action] = [s for s, r in zip(sources, reasons, strict=True) if not r]
    return Verdict(missing, surplus, excused)


def verdict(template: Template, logical_id: str) -> Verdict:
    return compare(needs(template, logical_id), role_grants(logical_id))


# ---- resources: which secret, which key ------------------------------------------------------------------------------
# The action check above cannot tell the API's Qdrant key from the identifier salt: both are GetSecretValue. This
# one resolves the role's statements to ARNs (tests/iam_model.Stack, the stack as CloudFormation would name it) and
# asks, per secret the function is told about: may the role read it, and decrypt it with its KMS key?
SECRET = "AWS::SecretsManager::Secret"
# Parameter sets under which each secret exists: the Qdrant key only with a remote Qdrant (UseRemoteQdrant).
SECRET_VARIANTS: dict[str, dict[str, str]] = {
    "defaults": {},
    "remote-qdrant": {"VectorStore": "qdrant", "QdrantUrl": "https://qdrant.example.internal:6333"},
}


@dataclass
class SecretVerdict:
    """Secrets the function reads but may not (or may not decrypt), and secrets it may read but is never told."""

    missing: dict[str, str]  # "action on resource" → why
    surplus: list[str]  # secrets the role may read that no environment variable the code reads names


@functools.cache
def stack(variant: str) -> Any:
    """The translated template as one stack (tests/iam_model.Stack) with the variant's parameter values; SAM leaves
    Fn::If in the role's statements, so one translation serves every variant."""
    from tests.iam_model import Stack

    template = translated()
    known = {k: v for k, v in SECRET_VARIANTS[variant].items() if k in template.get("Parameters", {})}
    return Stack(template, known)


def role_statements(variant: str, logical_id: str) -> list[dict[str, Any]]:
    """The execution role's statements, intrinsics resolved (a false Fn::If branch dropped)."""
    s = stack(variant)
    role = s.template["Resources"][f"{logical_id}Role"]["Properties"]
    out: list[dict[str, Any]] = []
    for policy in role.get("Policies", []):
        statements = s.resolve(policy["PolicyDocument"]).get("Statement", [])
        out += [st for st in (statements if isinstance(statements, list) else [statements]) if isinstance(st, dict)]
    return out


SETTINGS_MODULE = "chalicelib.core.settings"


def _names_of(variable: str) -> list[str]:
    """The ways reachable code can name a variable: its literal, and for a READMIT_* setting (declared once in
    chalicelib/core/settings.py) the Settings field (``s.id_salt_secret``) or the ENV_* constant that holds it."""
    patterns = [rf"[\"']{re.escape(variable)}[\"']"]
    if variable.startswith("READMIT_"):
        field = variable.removeprefix("READMIT_").lower()
        constants = re.findall(rf"^(ENV_[A-Z_0-9]+) = ENV\[\"{field}\"\]", _settings_source(), re.M)
        patterns += [rf"\.{field}\b", *(rf"\b{c}\b" for c in constants)]
    return patterns


def _settings_source() -> str:
    path = _module_path(SETTINGS_MODULE)
    assert path is not None
    return path.read_text()


def secrets_told(variant: str, template: Template, logical_id: str) -> dict[str, str]:
    """Secret → the environment variable that hands the function its ARN, for variables its reachable code names
    (outside the settings module, which declares them all): a string literal (``os.environ["NAME"]``), or the
    setting's field or ENV_* constant."""
    s = stack(variant)
    _, path = handler_file(template, logical_id)
    modules = [m for m in code_calls(template, logical_id).modules if m != SETTINGS_MODULE]
    sources = "\n".join((_module_path(m) or path).read_text() for m in modules)
    variables = s.resolve(s.template["Resources"][logical_id]["Properties"].get("Environment", {}))
    told: dict[str, str] = {}
    for name, value in (variables.get("Variables") or {}).items():
        for secret in (r for r, v in s.resources.items() if v["Type"] == SECRET):
            if value == s.ref(secret) and any(re.search(p, sources) for p in _names_of(name)):
                told[secret] = name
    return told


def secret_verdict(variant: str, template: Template, logical_id: str) -> SecretVerdict:
    from tests.iam_model import policy_allows

    s = stack(variant)
    statements = role_statements(variant, logical_id)
    reads = ("secretsmanager", "GetSecretValue") in code_calls(template, logical_id).operations()
    told = secrets_told(variant, template, logical_id) if reads else {}
    missing: dict[str, str] = {}
    for secret, variable in told.items():
        arn = s.arn(secret)
        if not policy_allows(statements, "secretsmanager:GetSecretValue", arn):
            missing[f"secretsmanager:GetSecretValue on {secret}"] = f"the code reads ${variable}"
        # "kms:Decrypt - required only if you use a customer managed key to encrypt the secret"
        # (https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_GetSecretValue.html)
        for key in s.references(s.template["Resources"][secret]["Properties"].get("KmsKeyId")):
            if not policy_allows(statements, "kms:Decrypt", s.arn(key)):
                missing[f"kms:Decrypt on {key}"] = f"{secret} is encrypted with it; the code reads ${variable}"
    readable = [
        secret
        for secret, resource in s.resources.items()
        if resource["Type"] == SECRET and policy_allows(statements, "secretsmanager:GetSecretValue", s.arn(secret))
    ]
    return SecretVerdict(missing, sorted(set(readable) - set(told)))
