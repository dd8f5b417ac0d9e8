"""The packages' layers (.importlinter): a package imports only packages below it, lazy imports included.

The contract is import-linter's; these tests run it, show it catches a function-level import that points upwards,
and keep every package (and no loose module) inside the layering."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _layer_names() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layers = config["importlinter:contract:layers"]["layers"].split("\n")
    return {name.strip() for line in layers for name in line.split("|") if name.strip()}


def test_the_packages_keep_their_layers() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_a_lazy_import_upwards_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "chalicelib", tmp_path / "chalicelib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    storage = tmp_path / "chalicelib" / "core" / "storage.py"
    upwards = "\n\ndef _upwards() -> None:\n    from chalicelib.serving import api  # noqa: F401\n"
    storage.write_text(storage.read_text() + upwards)
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert "chalicelib.core.storage -> chalicelib.serving.api" in done.stdout


def test_every_package_is_a_layer_and_no_module_is_loose() -> None:
    packages = {p.parent.name for p in (ROOT / "chalicelib").glob("*/__init__.py")}
    assert packages == _layer_names()
    loose = sorted(p.name for p in (ROOT / "chalicelib").glob("*.py") if p.name != "__init__.py")
    assert loose == []


def test_each_package_says_what_it_holds() -> None:
    for init in (ROOT / "chalicelib").glob("*/__init__.py"):
        namespace: dict[str, object] = {}
        exec(compile(init.read_text(), str(init), "exec"), namespace)
        assert namespace.get("__doc__"), init
        modules = {p.stem for p in init.parent.glob("*.py") if not p.name.startswith("__")}  # not __main__
        names = namespace["__all__"]
        assert isinstance(names, list)
        assert set(names) == modules, init
