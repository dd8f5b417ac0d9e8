"""Each zip Lambda carries only the chalicelib modules its handler can import (issue #18 item 4).

The Makefile's build-<Function> targets lay out app.py and chalicelib/ with deploy/lambda/package.py, which follows
every import statically. Here each function's package is laid out by the commands its Makefile target runs (minus
pip and the bytecode step: offline and fast), then its handler is imported as Lambda would, by an interpreter that
sees only that folder, the standard library and .venv's site-packages (``-I -S``: no editable-install finder, which a
.pth file installs only when ``site`` runs), so a module the script left out fails the import.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from chalicelib.cli.sam_template import load_template, snake
from tests.helpers import make_dry_run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "lambda" / "package.py"
API = "ApiFunction"
BATCH = ("BatchScoreFunction", "BatchScoreMapFunction", "BatchPrepareFunction", "BatchMergeFunction")
RETRAINING_STEPS = ("StartTrainingFunction", "CheckTrainingFunction", "PromoteFunction", "RejectFunction")
TRAIN = "chalicelib/model/train.py"
TRAINING = (TRAIN, "chalicelib/model/tune.py", "chalicelib/model/sagemaker_train.py")
# What a package must not carry: the CLI never runs on Lambda; training runs in SageMaker and the evaluation image.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    API: ("chalicelib/cli/", "chalicelib/lifecycle/", "chalicelib/batch/", *TRAINING),
    **{name: ("chalicelib/cli/", "chalicelib/serving/", "chalicelib/lifecycle/", *TRAINING) for name in BATCH},
    **{name: ("chalicelib/cli/", "chalicelib/serving/", "chalicelib/batch/") for name in RETRAINING_STEPS},
    "DriftMonitorFunction": ("chalicelib/cli/", "chalicelib/serving/", "chalicelib/batch/", *TRAINING),
    "EmbedderFunction": ("chalicelib/cli/", "chalicelib/serving/", "chalicelib/model/", "chalicelib/registry/"),
}
# Data files a package's code reads at run time, read here through the code itself.
PROBES = {
    "chalicelib.serving.page": "clinician_page()",
    "chalicelib.model.explain": "load_ids_mapping()",
}


@cache
def package_script() -> ModuleType:
    """deploy/lambda/package.py, loaded as a module (it is a script, not part of chalicelib)."""
    spec = importlib.util.spec_from_file_location("lambda_package", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@cache
def makefile_functions() -> dict[str, str]:
    """Logical id → Handler of every function template.yaml builds with the Makefile."""
    resources = load_template(ROOT / "template.yaml")["Resources"]
    return {
        name: res["Properties"]["Handler"]
        for name, res in sorted(resources.items())
        if res.get("Metadata", {}).get("BuildMethod") == "makefile"
    }


def lay_out(function: str, dest: Path) -> list[str]:
    """Run what ``make build-<function>`` runs to put app.py and chalicelib in ``dest``, except pip and the bytecode
    step (the dependencies come from .venv here); returns those commands."""
    dest.mkdir(parents=True, exist_ok=True)
    commands = [
        line
        for line in make_dry_run(f"build-{function}", ARTIFACTS_DIR=str(dest), LAMBDA_PYTHON_BIN="")
        if "pip install" not in line and "compile_imports.py" not in line
    ]
    for command in commands:
        subprocess.run(["bash", "-c", command], cwd=ROOT, check=True, timeout=60)
    return commands


def package_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in (folder / "chalicelib").rglob("*") if p.is_file()}


# Run by an interpreter that sees only the package, the standard library and site-packages (sys.argv: folder,
# site-packages, then the handler's attribute or "*": every chalicelib module of the package, each of which must find
# what it imports at load in the package). Probes read a module's data files through its own code.
IMPORT_AS_LAMBDA = textwrap.dedent(
    """
    import importlib, json, os, pkgutil, sys
    folder, site_packages, attribute, probes = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    sys.path[:0] = [folder]
    sys.path.append(site_packages)
    failed, probed = {}, {}
    if attribute == "*":
        import chalicelib
        for module in pkgutil.walk_packages(chalicelib.__path__, "chalicelib.", onerror=lambda name: None):
            try:
                importlib.import_module(module.name)
            except Exception as exc:
                failed[module.name] = repr(exc)
        handler = None
    else:
        import app
        handler = getattr(app, attribute)
        for module, call in probes.items():  # after the handler: the data a route reads on first use
            if os.path.isfile(os.path.join(folder, *module.split(".")) + ".py"):
                probed[module] = bool(eval(call, vars(importlib.import_module(module))))
    loaded = sorted(n for n in sys.modules if n.split(".")[0] in ("app", "chalicelib"))
    files = sorted({sys.modules[n].__file__ for n in loaded})
    print(json.dumps({"callable": callable(handler), "loaded": loaded, "failed": failed, "files": files,
                      "probed": probed}))
    """
)


def import_as_lambda(folder: Path, attribute: str) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-I",  # no PYTHON* variables, no user site, no current folder on the path
            "-S",  # no site: .venv's .pth files (the editable install's finder among them) are not processed
            "-c",
            IMPORT_AS_LAMBDA,
            str(folder),
            sysconfig.get_path("purelib"),
            attribute,
            json.dumps(PROBES),
        ],
        cwd=folder,
        env={"PATH": "/usr/bin:/bin", "HOME": str(folder), "AWS_DEFAULT_REGION": "us-east-1", "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Everything came from the package folder, nothing from the project (the editable install is out of reach).
    outside = [f for f in result["files"] if not Path(f).resolve().is_relative_to(folder.resolve())]
    assert not outside, outside
    return result


def handler_file(function: str) -> Path:
    """The handler the Makefile packages: functions/<name>/app.py, or the project's app.py (the API)."""
    own = ROOT / "functions" / snake(function) / "app.py"
    return own if own.is_file() else ROOT / "app.py"


@cache
def distinct_packages() -> dict[str, list[str]]:
    """One function per distinct chalicelib subset (the four batch steps share one, so do the retraining steps)."""
    project = package_script().Project(ROOT)
    groups: dict[tuple[Path, ...], list[str]] = {}
    for function in makefile_functions():
        groups.setdefault(project.package(handler_file(function)).files, []).append(function)
    return {names[0]: names for names in groups.values()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Each function's package (chalicelib and app.py only), laid out once for this module's tests."""
    root = tmp_path_factory.mktemp("lambda")
    for name in makefile_functions():
        lay_out(name, root / name)
    yield {name: root / name for name in makefile_functions()}


def test_every_makefile_function_is_covered() -> None:
    """The FORBIDDEN table, the Makefile's LAMBDA_FUNCTIONS (`make lambda-sizes`) and template.yaml name the same
    functions: a new function gets a package check and a size line."""
    listed = subprocess.run(
        ["make", "--no-print-directory", "--eval", "print-functions: ; @echo $(LAMBDA_FUNCTIONS)", "print-functions"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert sorted(listed) == sorted(makefile_functions()) == sorted(FORBIDDEN)


@pytest.mark.parametrize("function", sorted(makefile_functions()))
@pytest.mark.slow
def test_build_target_copies_the_closure_not_chalicelib(function: str, built: dict[str, Path]) -> None:
    """The target lays out exactly the script's closure of the handler it names, never the whole of chalicelib."""
    commands = make_dry_run(f"build-{function}", ARTIFACTS_DIR="/nowhere", LAMBDA_PYTHON_BIN="")
    assert not any("cp " in c and "chalicelib" in c for c in commands), commands
    calls = [shlex.split(c) for c in commands if "deploy/lambda/package.py" in c]
    assert len(calls) == 1, commands
    handler = ROOT / calls[0][calls[0].index("deploy/lambda/package.py") + 1]
    assert handler == handler_file(function)
    package = package_script().Project(ROOT).package(handler)
    assert package_files(built[function]) == {f.relative_to(ROOT).as_posix() for f in package.files}
    assert (built[function] / "app.py").read_bytes() == handler.read_bytes()


@pytest.mark.parametrize(
    ("function", "forbidden"),
    [(name, path) for name in sorted(makefile_functions()) for path in FORBIDDEN.get(name, ())],
)
def test_package_leaves_out(function: str, forbidden: str, built: dict[str, Path]) -> None:
    files = package_files(built[function])
    assert files, f"{function}: no chalicelib at all"
    assert not [f for f in files if f == forbidden or f.startswith(forbidden)], f"{function} carries {forbidden}"


@pytest.mark.parametrize("function", sorted(makefile_functions()))
@pytest.mark.slow
def test_handler_imports_from_its_package_alone(function: str, built: dict[str, Path]) -> None:
    """Lambda imports module ``app`` and takes the handler's attribute (template.yaml's Handler) at init."""
    folder = built[function]
    module, attribute = makefile_functions()[function].rsplit(".", 1)
    assert module == "app", "the Makefile writes the handler as app.py"
    result = import_as_lambda(folder, attribute)
    assert result["callable"], f"{function}: {makefile_functions()[function]} is not callable"
    assert "chalicelib" in result["loaded"]
    assert all(result["probed"].values()), result["probed"]
    expected_probes = {m for m in PROBES if f"{m.replace('.', '/')}.py" in package_files(folder)}
    assert set(result["probed"]) == expected_probes  # each data-reading module the package has was probed


@pytest.mark.parametrize("function", sorted(distinct_packages()), ids=lambda f: "+".join(distinct_packages()[f]))
@pytest.mark.slow
def test_every_module_of_the_package_imports_from_it(function: str, built: dict[str, Path]) -> None:
    """What a route or step imports on first use is in the package too: every module of it loads from it alone."""
    folder = built[function]
    result = import_as_lambda(folder, "*")
    assert not result["failed"], result["failed"]
    modules = {
        p.relative_to(folder).with_suffix("").as_posix().removesuffix("/__init__").replace("/", ".")
        for p in (folder / "chalicelib").rglob("*.py")
    }
    assert set(result["loaded"]) == modules


def test_the_api_serves_its_page_and_explanations(built: dict[str, Path]) -> None:
    """The data files the API reads at run time are in its package (the probes above read them through the code)."""
    files = package_files(built[API])
    assert {
        "chalicelib/serving/web/index.html",
        "chalicelib/serving/web/app.css",
        "chalicelib/serving/web/app.js",
    } <= files
    assert "chalicelib/model/ids_mapping.json" in files


def test_every_data_file_is_found_by_a_module_that_reads_it() -> None:
    """Each non-Python file under chalicelib is claimed by the module that reads it (``__file__``-relative), so a
    new data file whose read the script does not recognise fails here rather than on Lambda."""
    project = package_script().Project(ROOT)
    data = {p for p in (ROOT / "chalicelib").rglob("*") if p.is_file() and p.suffix not in {".py", ".pyc"}}
    data = {p for p in data if "__pycache__" not in p.parts}
    readers = [p for p in (ROOT / "chalicelib").rglob("*.py") if "__file__" in p.read_text()]
    assert data and set(project.data_files(readers)) == data
    by_reader = {r.relative_to(ROOT).as_posix(): project.data_files([r]) for r in readers}
    assert {p.name for p in by_reader["chalicelib/serving/page.py"]} == {"index.html", "app.css", "app.js"}
    assert [p.name for p in by_reader["chalicelib/model/explain.py"]] == ["ids_mapping.json"]


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_closure_follows_lazy_and_aliased_imports_and_skips_type_checking(tmp_path: Path) -> None:
    """A tiny chalicelib: the closure takes function-level imports, ``from package import submodule as alias``,
    relative and string-named modules, and leaves out what only ``if TYPE_CHECKING:`` imports or nothing does."""
    write(
        tmp_path,
        {
            "handler.py": """
                from chalicelib.a import top
                def handler(event, context):
                    from chalicelib.b import lazy as renamed  # lazy: only on first call
                    return renamed.go()
            """,
            "chalicelib/__init__.py": "",
            "chalicelib/a/__init__.py": "",
            "chalicelib/a/top.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from chalicelib.d import typing_only
                else:
                    from . import sibling
                def run():
                    import chalicelib.c.deep
            """,
            "chalicelib/a/sibling.py": "CHILD = ['-m', 'chalicelib.e.spawned']",
            "chalicelib/b/__init__.py": "",
            "chalicelib/b/lazy.py": """
                from pathlib import Path
                def go():
                    return (Path(__file__).parent / "assets" / "x.txt").read_text()
            """,
            "chalicelib/b/assets/x.txt": "data",
            "chalicelib/b/other.txt": "not read by anything",
            "chalicelib/c/__init__.py": "",
            "chalicelib/c/deep.py": "from chalicelib.a.top import run",
            "chalicelib/d/__init__.py": "",
            "chalicelib/d/typing_only.py": "",
            "chalicelib/e/__init__.py": "",
            "chalicelib/e/spawned.py": "",
            "chalicelib/unused.py": "",
        },
    )
    script = package_script()
    dest = tmp_path / "out"
    assert script.main([str(tmp_path / "handler.py"), str(dest), "--root", str(tmp_path)]) == 0
    assert package_files(dest) == {
        "chalicelib/__init__.py",
        "chalicelib/a/__init__.py",
        "chalicelib/a/top.py",
        "chalicelib/a/sibling.py",
        "chalicelib/b/__init__.py",
        "chalicelib/b/lazy.py",
        "chalicelib/b/assets/x.txt",
        "chalicelib/c/__init__.py",
        "chalicelib/c/deep.py",
        "chalicelib/e/__init__.py",
        "chalicelib/e/spawned.py",
    }
    assert (dest / "app.py").read_text() == (tmp_path / "handler.py").read_text()


def test_a_missing_module_stops_the_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An import of a chalicelib module that is not there would fail on Lambda: the build fails instead."""
    write(tmp_path, {"handler.py": "def f():\n    import chalicelib.gone\n", "chalicelib/__init__.py": ""})
    assert package_script().main([str(tmp_path / "handler.py"), str(tmp_path / "out"), "--root", str(tmp_path)]) == 1
    assert "chalicelib.gone" in capsys.readouterr().err
