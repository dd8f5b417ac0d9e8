"""One lock, deploy/constraints.txt, for every environment that runs readmit's code (issue #14 item 13).

A model is trained in SageMaker (deploy/training/Dockerfile), gated by the evaluation Lambda (an image) and served by
zip Lambdas (the Makefile's build-* targets); the tests run in .venv and the container test in .tools/training.
Each must install XGBoost (and numpy, scipy) at the same version, so each must install through the lock.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from chalicelib.cli.sam_template import load_template
from tests.helpers import make_dry_run

ROOT = Path(__file__).resolve().parent.parent
LOCK = "deploy/constraints.txt"
TRAINING_DOCKERFILE = ROOT / "deploy" / "training" / "Dockerfile"
TRAINING_ENV_PYTHON = ROOT / ".tools" / "training" / "bin" / "python"
NUMERIC_STACK = ("xgboost-cpu", "numpy", "scipy")
LAMBDA_GLIBC = (2, 34)  # python3.12 runs on Amazon Linux 2023, glibc 2.34 (docs: lambda-runtimes, al2023 core-glibc)


def lock_lines() -> list[str]:
    return [line.strip() for line in (ROOT / LOCK).read_text().splitlines() if line.strip() and line[0] not in "# "]


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lock_lines():
        name, _, version = line.partition("==")
        assert version and ";" not in version, f"not an exact pin: {line!r}"
        assert canonicalize_name(name) not in out, f"{name} pinned twice"
        out[canonicalize_name(name)] = version
    return out


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def template_resources() -> dict:
    return load_template(ROOT / "template.yaml")["Resources"]


def makefile_functions() -> list[str]:
    return sorted(
        logical_id
        for logical_id, res in template_resources().items()
        if res.get("Metadata", {}).get("BuildMethod") == "makefile"
    )


def image_dockerfiles() -> list[Path]:
    files = [TRAINING_DOCKERFILE]
    for res in template_resources().values():
        if res.get("Properties", {}).get("PackageType") == "Image":
            files.append(ROOT / res["Metadata"].get("DockerContext", ".") / res["Metadata"]["Dockerfile"])
    return files


def test_xgboost_is_pinned_exactly_once_and_pyproject_names_one_distribution() -> None:
    assert len([line for line in lock_lines() if re.match(r"xgboost(-cpu)?==", line)]) == 1
    declared = [
        Requirement(r).name
        for r in pyproject()["dependencies"]
        + [r for extra in pyproject()["optional-dependencies"].values() for r in extra]
    ]
    assert [n for n in declared if n.startswith("xgboost")] == ["xgboost-cpu"]
    assert "xgboost" not in pins()  # the full package would shadow xgboost-cpu's module


def test_the_lock_pins_every_declared_dependency_within_its_range() -> None:
    """A stale lock (pyproject changed, `make constraints` not run) fails here, not in a Lambda build."""
    locked = pins()
    project = pyproject()
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for text in requirements:
        req = Requirement(text)
        if canonicalize_name(req.name) == "readmit":
            continue
        assert canonicalize_name(req.name) in locked, f"{req.name} is not in {LOCK}: run `make constraints`"
        assert req.specifier.contains(locked[canonicalize_name(req.name)], prereleases=True), (text, LOCK)


def test_this_venv_runs_the_pinned_numeric_stack() -> None:
    """The tests train and serve with the very XGBoost that Lambda and SageMaker install."""
    locked = pins()
    for name in NUMERIC_STACK:
        assert importlib.metadata.version(name) == locked[name], name


def test_the_container_test_env_runs_the_pinned_numeric_stack() -> None:
    assert TRAINING_ENV_PYTHON.exists(), "run `make training-env` (make test does)"
    code = f"import importlib.metadata as m, json; print(json.dumps({{n: m.version(n) for n in {NUMERIC_STACK!r}}}))"
    done = subprocess.run([TRAINING_ENV_PYTHON, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    locked = pins()
    assert json.loads(done.stdout) == {name: locked[name] for name in NUMERIC_STACK}


@pytest.mark.parametrize("logical_id", makefile_functions())
@pytest.mark.slow
def test_every_lambda_zip_installs_through_the_lock_for_the_runtime(logical_id: str, tmp_path: Path) -> None:
    template = load_template(ROOT / "template.yaml")
    runtime = (
        template["Resources"][logical_id]["Properties"].get("Runtime") or template["Globals"]["Function"]["Runtime"]
    )
    installs = [c for c in make_dry_run(f"build-{logical_id}", ARTIFACTS_DIR=str(tmp_path)) if "pip install" in c]
    assert installs, f"build-{logical_id} installs nothing"
    for command in installs:
        args = shlex.split(command)
        assert args[args.index("--constraint") + 1] == LOCK, command
        if "--no-deps" in args:
            continue
        platforms = {args[i + 1] for i, a in enumerate(args) if a == "--platform"}
        glibc = {tuple(map(int, m.groups())) for p in platforms if (m := re.match(r"manylinux_(\d+)_(\d+)_x86_64$", p))}
        assert max(glibc) == LAMBDA_GLIBC, "wheels for the runtime's glibc, no newer"
        assert {(2, minor) for minor in range(17, LAMBDA_GLIBC[1] + 1)} <= glibc, "pip does not widen manylinux_2_X"
        assert f"python{args[args.index('--python-version') + 1]}" == runtime
        assert "--only-binary=:all:" in args


@pytest.mark.parametrize("dockerfile", image_dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_image_installs_through_the_lock(dockerfile: Path) -> None:
    text = dockerfile.read_text().replace("\\\n", " ")
    copied = re.search(rf"^COPY (.*\b{re.escape(LOCK)}\b.*)$", text, flags=re.MULTILINE)
    assert copied, f"{dockerfile} does not copy {LOCK}"
    dest = copied.group(1).split()[-1]
    installed_at = dest.rstrip("/") + "/constraints.txt" if dest.endswith("/") else dest
    installs = [line for line in text.splitlines() if re.match(r"RUN .*pip install", line)]
    assert installs
    for line in installs:
        assert f"--constraint {installed_at}" in line, line
        assert "--only-binary=:all:" in line, line


def test_the_dev_venv_and_the_container_test_env_install_through_the_lock() -> None:
    for target, extra in (("setup", "'.[dev]'"), ("training-env", "'.[train]'")):
        installs = [c for c in make_dry_run(target) if "uv pip install" in c and extra in c]
        assert installs, target
        assert all(f"--constraint {LOCK}" in c for c in installs), installs
    assert re.search(r"^test:.*\btraining-env\b", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)


@pytest.mark.slow
def test_the_lambda_build_resolves_the_pinned_stack_on_pypi(tmp_path: Path) -> None:
    """The API function's pip command exactly as `sam build` runs it, as a dry run against the index (PyPI): the
    runtime's platform tags must find wheels of the pinned versions. About 5-30 s, depending on the index."""
    (command,) = [c for c in make_dry_run("build-ApiFunction", ARTIFACTS_DIR=str(tmp_path)) if "xgboost-cpu" in c]
    args = shlex.split(command)
    assert args[:3] == ["python3", "-m", "pip"]
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, *args[1:], "--dry-run", "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = {
        canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    locked = pins()
    assert {n: resolved[n] for n in NUMERIC_STACK} == {n: locked[n] for n in NUMERIC_STACK}
