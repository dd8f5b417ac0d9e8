"""deploy/server/Dockerfile, read as text (no Docker here): what it runs, as whom, from what, and whether what it
copies exists and survives its .dockerignore."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "server" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def one(name: str) -> str:
    found = [args for word, args in instructions() if word == name]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"{args} is not exec form"
    return value


def test_the_image_starts_from_the_public_ecr_mirror_of_python_3_12_slim() -> None:
    assert one("FROM") == "public.ecr.aws/docker/library/python:3.12-slim"


def test_the_image_runs_readmit_serve_on_all_interfaces_as_pid_1() -> None:
    command = exec_form(one("ENTRYPOINT")) + exec_form(one("CMD"))
    assert command[:2] == ["readmit", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "--dev" not in command
    assert one("EXPOSE") == command[command.index("--port") + 1]


def test_the_server_runs_as_a_non_root_user() -> None:
    user = one("USER").split(":")
    assert user[0] not in ("root", "0") and int(user[0]) >= 1000
    assert re.search(rf"useradd .*--uid {user[0]}\b", one("RUN"))
    # USER comes after the RUN that needs root, and nothing runs as root after it
    words = [w for w, _ in instructions()]
    assert words.index("USER") > words.index("RUN") and "RUN" not in words[words.index("USER") :]


def test_dependencies_install_through_the_lock() -> None:
    run = one("RUN")
    pip = shlex.split(run.split("&&")[0])
    assert pip[:2] == ["pip", "install"] and "--only-binary=:all:" in pip
    constraint = Path(pip[pip.index("--constraint") + 1])
    copies = [shlex.split(args) for word, args in instructions() if word == "COPY"]
    assert any("deploy/constraints.txt" in c[:-1] and Path(c[-1]) == constraint.parent for c in copies)


def test_the_healthcheck_asks_health_on_the_served_port() -> None:
    healthcheck = one("HEALTHCHECK")
    command = exec_form(healthcheck.split("CMD", 1)[1].strip())
    port = exec_form(one("CMD"))[exec_form(one("CMD")).index("--port") + 1]
    assert command[0] == "python" and f"http://127.0.0.1:{port}/health" in command[-1]
    assert re.search(r"--timeout=\d+s", healthcheck) and re.search(r"--start-period=\d+s", healthcheck)


def ignored(path: str) -> bool:
    """Docker's rules: the last matching pattern wins; '!' re-includes (a directory re-includes its files)."""
    lines = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    verdict = False
    for raw in lines:
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/"):
            verdict = not negate
    return verdict


@pytest.mark.parametrize("source", sorted({s for w, a in instructions() if w == "COPY" for s in shlex.split(a)[:-1]}))
def test_every_copied_path_exists_and_is_in_the_build_context(source: str) -> None:
    assert (ROOT / source).exists(), source
    assert not ignored(source), f"{source} is excluded by Dockerfile.dockerignore"


def test_app_py_and_the_chalice_config_sit_beside_chalicelib_in_the_image() -> None:
    """`readmit serve` looks for app.py and .chalice/ in chalicelib's parent (cli.project_dir)."""
    copies = {shlex.split(a)[0]: shlex.split(a)[-1] for w, a in instructions() if w == "COPY" and "chalicelib" in a}
    package_parent = Path(copies["chalicelib"]).parent
    dests = [shlex.split(a) for w, a in instructions() if w == "COPY"]
    assert any("app.py" in d[:-1] and Path(d[-1]) == package_parent for d in dests)
    assert any(
        ".chalice/config.json" in d[:-1] and Path(d[-1]) == package_parent / ".chalice/config.json" for d in dests
    )
    assert "-e " + str(package_parent) in one("RUN")  # editable: chalicelib stays beside app.py
