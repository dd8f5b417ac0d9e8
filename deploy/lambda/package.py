"""Copy into a Lambda package only the chalicelib modules its handler can import (the Makefile's build-* targets).

Every function used to carry the whole of chalicelib (the CLI, training, the template reader, the web page), which
weighs on the 250 MB unzipped limit and puts code in each package that its role never runs. The closure is found
statically, with ``ast``: every import statement of every module reached (module level and the lazy ones inside
functions, so a route's first-use import is never missing on Lambda), ``from chalicelib.x import y`` taking the
submodule ``y`` when there is one, relative imports, ``import *`` through the package's ``__all__``, and a string
that is exactly a chalicelib module name (``python -m chalicelib.registry.model_check``, ``import_module(...)``).
Only what sits under ``if TYPE_CHECKING:`` is skipped: it never runs. Each package's ``__init__.py`` comes along
(Python runs it before any submodule), and so do the data files a module reads: a file under chalicelib that is not
Python is needed when a module of the closure has a string literal naming it or a non-package folder holding it
(``Path(__file__).with_name("ids_mapping.json")``, ``Path(__file__).parent / "web"``).

Usage: ``python3 deploy/lambda/package.py HANDLER DEST`` writes DEST/app.py (the handler: Lambda's ``app.<name>``)
and DEST/chalicelib/ (the closure, tree preserved), and prints what it copied for the build log. Standard library
only: it runs with whatever ``python3`` SAM's makefile builder finds.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "chalicelib"
ROOT = Path(__file__).resolve().parents[2]  # the project: app.py and chalicelib/ side by side
_MODULE_NAME = re.compile(rf"{PACKAGE}(\.[A-Za-z_][A-Za-z0-9_]*)+")


class MissingModule(Exception):
    """An import names a chalicelib module that is not there: the package would fail on Lambda, so the build stops."""


@dataclass(frozen=True)
class Package:
    """What one function's package needs: the handler, and chalicelib files relative to the project root."""

    handler: Path
    modules: tuple[Path, ...]  # .py files, __init__.py included
    data: tuple[Path, ...]  # files read at run time (not Python)

    @property
    def files(self) -> tuple[Path, ...]:
        return self.modules + self.data


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``: a block only type checkers read."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` (lazy imports inside functions included), except ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:  # the ``else:`` of such a block does run
                yield other
                yield from _walk(other)
            continue
        yield child
        yield from _walk(child)


class Project:
    """The chalicelib tree under ``root``, read once per file."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root.resolve()
        self._trees: dict[Path, ast.Module] = {}

    def tree(self, path: Path) -> ast.Module:
        if path not in self._trees:
            self._trees[path] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        return self._trees[path]

    def module_file(self, name: str) -> Path | None:
        """The file of module ``name`` (``a.b`` → a/b/__init__.py or a/b.py), or None."""
        base = self.root.joinpath(*name.split("."))
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.is_file():
                return candidate
        return None

    def module_name(self, path: Path) -> str:
        parts = path.resolve().relative_to(self.root).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def _package_of(self, path: Path) -> str:
        """The package a relative import in ``path`` starts from (a package's __init__ is its own package)."""
        name = self.module_name(path) if path.resolve().is_relative_to(self.root) else ""
        return name if path.name == "__init__.py" else name.rpartition(".")[0]

    def _star(self, package: str) -> list[str]:
        """``from package import *``: the submodules its ``__all__`` lists (Python imports those)."""
        init = self.module_file(package)
        if init is None or init.name != "__init__.py":
            return []
        for node in self.tree(init).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                try:
                    names = ast.literal_eval(node.value)
                except ValueError:
                    return []
                return [f"{package}.{n}" for n in names if isinstance(n, str)]
        return []

    def imports(self, path: Path) -> dict[str, bool]:
        """The chalicelib module names ``path`` can import, each with whether it must be a module: ``import x`` and
        the ``x`` of ``from x import y`` must; ``y`` may be a module or a name defined in ``x``, and a string is
        a module only if there is one by that name."""
        found: dict[str, bool] = {}

        def add(name: str, required: bool) -> None:
            found[name] = found.get(name, False) or required

        for node in _walk(self.tree(path)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, True)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    package = self._package_of(path)
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = ".".join(p for p in (package, node.module) if p)
                else:
                    base = node.module or ""
                add(base, True)
                for alias in node.names:
                    for name in self._star(base) if alias.name == "*" else [f"{base}.{alias.name}"]:
                        add(name, False)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.fullmatch(node.value):
                add(node.value, False)  # ``python -m chalicelib.x`` or ``import_module("chalicelib.x")``
        return {n: r for n, r in found.items() if n == PACKAGE or n.startswith(PACKAGE + ".")}

    def _resolve(self, name: str, required: bool) -> list[Path]:
        """The files importing ``name`` runs: each enclosing package's __init__.py, then the module itself."""
        if not required and self.module_file(name) is None:
            return []  # a function or class of the parent module (which is required), or prose
        parts = name.split(".")
        files: list[Path] = []
        for i in range(1, len(parts) + 1):
            file = self.module_file(".".join(parts[:i]))
            if file is None:
                raise MissingModule(f"no module {'.'.join(parts[:i])} under {self.root} (imported as {name})")
            files.append(file)
        return files

    def closure(self, handler: Path) -> tuple[Path, ...]:
        """Every chalicelib module file ``handler`` can import, transitively, sorted."""
        seen: set[Path] = set()
        todo = [handler.resolve()]
        while todo:
            path = todo.pop()
            for name, required in sorted(self.imports(path).items()):
                for file in self._resolve(name, required):
                    if file not in seen:
                        seen.add(file)
                        todo.append(file)
        return tuple(sorted(seen))

    def data_files(self, modules: Iterable[Path]) -> tuple[Path, ...]:
        """The non-Python files under chalicelib that ``modules`` name in a string literal, by file name, path
        suffix, or a non-package folder holding them (``"ids_mapping.json"``, ``"web"``)."""
        strings: set[str] = set()
        for module in modules:
            strings.update(
                n.value for n in ast.walk(self.tree(module)) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            )
        found: list[Path] = []
        for file in sorted((self.root / PACKAGE).rglob("*")):
            if not file.is_file() or file.suffix in {".py", ".pyc"} or "__pycache__" in file.parts:
                continue
            rel = file.relative_to(self.root / PACKAGE)
            folders = [
                p.name for p in rel.parents if p.parts and not (self.root / PACKAGE / p / "__init__.py").is_file()
            ]
            suffixes = {"/".join(rel.parts[i:]) for i in range(len(rel.parts))}
            if strings & (suffixes | set(folders)):
                found.append(file)
        return tuple(found)

    def package(self, handler: Path) -> Package:
        modules = self.closure(handler)
        return Package(handler=handler.resolve(), modules=modules, data=self.data_files(modules))


def build(handler: Path, dest: Path, root: Path = ROOT) -> Package:
    """Write ``dest``/app.py (the handler) and ``dest``/chalicelib/ (its closure); a stale chalicelib is replaced."""
    project = Project(root)
    package = project.package(handler)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest / PACKAGE, ignore_errors=True)
    if package.handler != (dest / "app.py").resolve():
        shutil.copy2(package.handler, dest / "app.py")
    for file in package.files:
        target = dest / file.relative_to(project.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, target)
    return package


def summary(package: Package, root: Path = ROOT) -> str:
    """The build log's lines: counts and sizes, then the modules by subpackage."""
    size = sum(f.stat().st_size for f in package.files)
    full = [f for f in (root / PACKAGE).rglob("*") if f.is_file() and "__pycache__" not in f.parts]
    lines = [
        f"{package.handler.relative_to(root.resolve())}: {len(package.modules)} chalicelib modules and "
        f"{len(package.data)} data files, {size / 1024:.0f} KB (all of chalicelib: {len(full)} files, "
        f"{sum(f.stat().st_size for f in full) / 1024:.0f} KB)"
    ]
    groups: dict[str, list[str]] = {}
    for file in package.files:
        rel = file.relative_to(root.resolve() / PACKAGE)
        groups.setdefault(rel.parts[0] if len(rel.parts) > 1 else ".", []).append("/".join(rel.parts[1:]) or rel.name)
    lines += [f"  {group}/: {', '.join(names)}" for group, names in sorted(groups.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("handler", type=Path, help="app.py, or functions/<name>/app.py")
    parser.add_argument("dest", type=Path, help="the package folder (SAM's ARTIFACTS_DIR)")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the folder holding chalicelib/ (default: this project)"
    )
    args = parser.parse_args(argv)
    try:
        package = build(args.handler, args.dest, args.root)
    except MissingModule as exc:
        print(f"package.py: {exc}", file=sys.stderr)
        return 1
    print(summary(package, args.root.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
