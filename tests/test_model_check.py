"""A broken model file never crashes a process and never replaces a working model (issue #20).

Each broken bundle has a recomputed manifest hash, so the checksum passes: only loading the model shows it is
broken, and on the code before model_check that load segfaulted (truncated, bit-flipped) or aborted (empty) the
process doing it. Anything that could load a broken model in-process runs here in a subprocess (the CLI, the
server), so the old behaviour fails these tests instead of killing the test run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from chalicelib.core.storage import open_storage
from chalicelib.features.table import FEATURE_NAMES
from chalicelib.model.bundle import PROBES, dmatrix, probe_rows, write_bundle
from chalicelib.model.calibration import fit
from chalicelib.registry import model_check
from chalicelib.registry.model_check import InvalidModel, ValidatorUnavailable, check_bundle
from chalicelib.registry.registry import Registry
from tests.test_server_e2e import Server, example, start_server

pytestmark = pytest.mark.slow  # scores broken models in child processes and servers (about 90 s together)

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("truncated", "empty", "bit-flipped")


def _flip(data: bytes, at: int, mask: int) -> bytes:
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]


def _mutate(data: bytes, kind: str) -> bytes:
    """truncated: the first 1,000 bytes; empty: none; bit-flipped: one bit of the stored base score (a string such
    as "[5.125E-1]": the first decimal, 1 -> 0), so the model loads and silently scores differently, the
    case a load-only check misses; scrambled: one byte in the middle inverted, which crashes XGBoost's reader."""
    if kind == "truncated":
        return data[:1000]
    if kind == "empty":
        return b""
    if kind == "bit-flipped":
        start = data.index(b"[", data.index(b"base_score")) + 1
        point = data.find(b".", start, start + 3)
        digit = point + 1 if point != -1 else start  # the first decimal: a change of a few hundredths at most
        assert chr(data[digit]).isdigit()
        return _flip(data, digit, 0x01)
    return _flip(data, len(data) // 2, 0xFF)


def rewrite_booster(src: Path, dest: Path, booster: bytes, version: str) -> Path:
    """A copy of ``src`` with another model.ubj and a manifest whose sha256 (and version) match it."""
    shutil.copytree(src, dest)
    (dest / "model.ubj").write_bytes(booster)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["files"]["model.ubj"] = hashlib.sha256(booster).hexdigest()
    manifest["version"] = version
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


def broken(src: Path, root: Path, kind: str) -> Path:
    version = f"{src.name[:16]}-{kind}"
    return rewrite_booster(src, root / version, _mutate((src / "model.ubj").read_bytes(), kind), version)


def _tiny_booster(X: np.ndarray, y: np.ndarray, trees: int) -> xgb.Booster:
    return xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1}, dmatrix(X, y), trees)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real bundle (20 trees on synthetic features) with recorded probes: seconds to build, not minutes."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, len(FEATURE_NAMES))).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.float32)
    booster = _tiny_booster(X, y, 20)
    calibrator = fit("platt", booster.inplace_predict(X).astype(np.float64), y)
    meta = {"thresholds": {"high": 0.7, "medium": 0.4}}
    return write_bundle(tmp_path_factory.mktemp("tiny"), booster, calibrator, meta, probes=probe_rows(X))


@pytest.fixture(autouse=True)
def _fresh_verdicts() -> Iterator[None]:
    model_check.clear_cache()  # each test sees a real check, not a verdict cached by an earlier one
    yield
    model_check.clear_cache()


# ---- the validator ----------------------------------------------------------------------------------------------
def test_a_good_bundle_reproduces_its_recorded_probes_in_well_under_a_second(tiny: Path) -> None:
    started = time.perf_counter()
    verdict = check_bundle(tiny)
    elapsed = time.perf_counter() - started
    assert verdict.ok and verdict.compared == 24 and verdict.version == tiny.name, verdict
    probes = json.loads((tiny / PROBES).read_text())
    assert len(probes["features"]) == 24 and all(v is None for v in probes["features"][-1])  # the all-missing row
    print(f"validation of a 20-tree bundle in a child process: {elapsed:.3f} s")
    assert elapsed < 3.0  # ~0.7 s measured on an idle core; the margin is for a loaded 2-core machine


@pytest.mark.parametrize("kind", [*KINDS, "scrambled"])
def test_a_broken_model_with_a_matching_hash_fails_validation_and_this_process_survives(
    tiny: Path, tmp_path: Path, kind: str
) -> None:
    bad = broken(tiny, tmp_path, kind)
    verdict = check_bundle(bad)
    assert not verdict.ok and verdict.version == bad.name
    if kind == "bit-flipped":  # loads and scores: only the recorded probe outputs show it is not the same model
        assert "differs from the recorded probe outputs" in verdict.reason, verdict.reason
    with pytest.raises(InvalidModel, match=f"model {bad.name} failed validation"):
        model_check.require_valid(bad)


def test_a_loadable_model_that_scores_differently_from_its_probes_fails(tiny: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, len(FEATURE_NAMES))).astype(np.float32)
    other = _tiny_booster(X, (X[:, 2] > 0).astype(np.float32), 5)
    swapped = rewrite_booster(tiny, tmp_path / "swapped", bytes(other.save_raw(raw_format="ubj")), "swapped")
    verdict = check_bundle(swapped)
    assert not verdict.ok and "differs from the recorded probe outputs" in verdict.reason, verdict


def test_a_bundle_from_before_probes_passes_flagged_unverified(tiny: Path, tmp_path: Path) -> None:
    legacy = Path(shutil.copytree(tiny, tmp_path / "legacy"))
    (legacy / PROBES).unlink()
    manifest = json.loads((legacy / "manifest.json").read_text())
    del manifest["files"][PROBES]
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    verdict = check_bundle(legacy)
    assert verdict.ok and verdict.compared == 0 and verdict.reason.startswith("unverified"), verdict
    assert not check_bundle(broken(legacy, tmp_path, "truncated")).ok  # still loaded and scored in the child


def test_a_verdict_is_cached_per_content_and_a_timeout_is_not(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not check_bundle(tiny, timeout=0.001).ok  # no interpreter starts in a millisecond
    first = check_bundle(tiny)  # the timeout was not cached: this one ran
    assert first.ok

    def no_spawn(*_a: object, **_k: object) -> None:
        raise AssertionError("a cached verdict must not start a process")

    monkeypatch.setattr(model_check.subprocess, "run", no_spawn)
    assert check_bundle(tiny) == first
    same_content = Path(shutil.copytree(tiny, tmp_path / "copy"))
    assert check_bundle(same_content) == first  # the key is the content, not the path


def test_a_check_that_cannot_run_is_no_verdict_and_records_no_rejection(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in a Lambda package without XGBoost: the child starts but cannot import the serving stack."""
    bare = Path("/usr/bin/python3")
    probe = subprocess.run([str(bare), "-c", "import numpy"], capture_output=True) if bare.exists() else None
    if probe is None or probe.returncode == 0:
        pytest.skip("needs a Python without numpy at /usr/bin/python3")
    registry = Registry.open(tmp_path / "registry")
    registry.promote(registry.register(tiny), "good")
    other = Registry(registry.storage).register(broken(tiny, tmp_path, "truncated"))
    monkeypatch.setattr(model_check.sys, "executable", str(bare))
    model_check.clear_cache()  # register cached a verdict on tiny
    verdict = check_bundle(tiny)
    assert verdict.unavailable and not verdict.ok and "not installed" in verdict.reason, verdict
    from chalicelib.lifecycle import pipeline

    headline = {"n": 100, "roc_auc": 0.7, "brier": 0.1, "ece": 0.01}
    event = {
        "registry_uri": str(tmp_path / "registry"),
        "trigger": "manual",
        "decision": {"promote": True, "reasons": ["auc ok"], "challenger": headline, "challenger_version": other},
    }
    with pytest.raises(ValidatorUnavailable, match="could not be validated"):
        pipeline.promote(event)
    assert registry.champion() == tiny.name and registry.history()[-1]["event"] == "registered"  # no rejection
    monkeypatch.undo()
    assert check_bundle(tiny).ok  # the unavailable check was not cached


# ---- register and promote ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_register_refuses_a_broken_model_and_writes_nothing(tiny: Path, tmp_path: Path, kind: str) -> None:
    registry = Registry.open(tmp_path / "registry")
    with pytest.raises(InvalidModel, match="failed validation"):
        registry.register(broken(tiny, tmp_path, kind))
    assert registry.list_versions() == [] and registry.history() == []
    assert registry.register(tiny) == tiny.name  # a good one still registers


@pytest.mark.parametrize("kind", KINDS)
def test_promote_refuses_a_broken_stored_model_and_keeps_the_champion(tiny: Path, tmp_path: Path, kind: str) -> None:
    registry = Registry.open(tmp_path / "registry")
    registry.promote(registry.register(tiny), "good")
    bad = Registry(registry.storage).register(broken(tiny, tmp_path, kind))  # planted past validation
    with pytest.raises(InvalidModel, match=f"model {bad} failed validation"):
        registry.promote(bad, "should be refused")
    assert registry.champion() == tiny.name
    assert [e["event"] for e in registry.history()] == ["registered", "promoted", "registered"]


def test_the_retraining_promote_step_refuses_a_broken_winner_and_records_why(tiny: Path, tmp_path: Path) -> None:
    from chalicelib.lifecycle import pipeline

    uri = str(tmp_path / "registry")
    registry = Registry.open(uri)
    registry.promote(registry.register(tiny), "good")
    bad = Registry(registry.storage).register(broken(tiny, tmp_path, "truncated"))
    headline = {"n": 100, "roc_auc": 0.7, "brier": 0.1, "ece": 0.01}
    event = {
        "registry_uri": uri,
        "trigger": "manual",
        "decision": {"promote": True, "reasons": ["auc ok"], "challenger": headline, "challenger_version": bad},
    }
    with pytest.raises(InvalidModel):
        pipeline.promote(event)
    assert registry.champion() == tiny.name
    last = registry.history()[-1]
    assert last["event"] == "rejected" and last["version"] == bad and "failed validation" in last["reason"]


# ---- the command line -------------------------------------------------------------------------------------------
def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "READMIT_HOME": str(home), "HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "chalicelib.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_readmit_predict_with_a_broken_model_exits_2_with_one_line(tiny: Path, tmp_path: Path, kind: str) -> None:
    bad = broken(tiny, tmp_path, kind)
    done = _cli("predict", "--model", str(bad), "--out", str(tmp_path / "out.csv"), home=tmp_path / "home")
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"readmit predict: model {bad.name} failed validation"), lines
    assert "Traceback" not in done.stderr and not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_readmit_registry_promote_of_a_broken_model_exits_2(tiny: Path, tmp_path: Path, kind: str) -> None:
    registry = Registry.open(tmp_path / "registry")
    registry.promote(registry.register(tiny), "good")
    bad = Registry(registry.storage).register(broken(tiny, tmp_path, kind))
    done = _cli("registry", "promote", bad, "--registry", str(tmp_path / "registry"), home=tmp_path / "home")
    assert done.returncode == 2 and "failed validation" in done.stderr and "Traceback" not in done.stderr, done
    assert registry.champion() == tiny.name


# ---- a serving process ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def serving(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Registry, Path]]:
    """`readmit serve` following a registry whose champion is a real (small) model."""
    tmp = tmp_path_factory.mktemp("serving")
    registry = Registry.open(tmp / "registry")
    registry.promote(registry.register(small_bundle), "good")
    server = start_server(tmp, tmp / "registry")
    yield server, registry, tmp
    stop(server)


def stop(server: Server) -> None:
    server.process.terminate()  # gunicorn drains its workers (slow on a loaded machine); kill if it hangs
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


def _restarts(server: Server) -> int:
    """Worker processes gunicorn has started (it restarts one that dies); 0 with the single-process dev server."""
    return server.logs().count("Booting worker")


@pytest.mark.parametrize("kind", KINDS)
def test_a_serving_process_keeps_its_model_when_the_new_champion_is_broken(
    serving: tuple[Server, Registry, Path], small_bundle: Path, kind: str
) -> None:
    server, registry, tmp = serving
    planted = Registry(registry.storage)  # as a direct write to the bucket would: past every check
    bad = planted.register(broken(small_bundle, tmp / kind, kind))
    booted = _restarts(server)
    planted.promote(bad, f"{kind} on purpose")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and f"model {bad} failed validation" not in server.logs():
        server.call("GET", "/health")  # checks happen on requests
        time.sleep(0.2)
    assert f"model {bad} failed validation" in server.logs(), server.logs()[-3000:]
    for _ in range(10):  # over a second of checks, reaching every worker: none swaps, none dies
        status, body = server.call("POST", "/predict", example())
        assert status == 200 and body["model_version"] == small_bundle.name, (status, body)
        time.sleep(0.1)
    status, health = server.call("GET", "/health")
    assert health["ready"] and health["model_version"] == small_bundle.name
    assert server.process.poll() is None and _restarts(server) == booted, server.logs()[-3000:]
    assert "model refresh failed; keeping the current model" in server.logs()
    planted.promote(small_bundle.name, "restore")


@pytest.mark.parametrize("kind", KINDS)
def test_a_server_starting_on_a_broken_champion_is_not_ready_and_does_not_die(
    small_bundle: Path, tmp_path: Path, kind: str
) -> None:
    planted = Registry(open_storage(tmp_path / "registry"))
    planted.promote(planted.register(broken(small_bundle, tmp_path / "bad", kind)), f"{kind} on purpose")
    server = start_server(tmp_path, tmp_path / "registry")
    try:
        status, health = server.call("GET", "/health")
        assert status == 200 and health["ready"] is False and health["model_version"] is None
        assert "failed validation" in health["detail"], health
        booted = _restarts(server)
        for _ in range(6):  # a few champion checks later (interval 0.2 s) every worker is up and still refusing
            status, body = server.call("POST", "/predict", example())
            assert status == 503 and "failed validation" in json.dumps(body), (status, body)
            time.sleep(0.2)
        assert server.process.poll() is None and _restarts(server) == booted, server.logs()[-3000:]
    finally:
        stop(server)
