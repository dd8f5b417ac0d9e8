"""Validate a model bundle in a separate process before any process that matters loads it.

A sha256 proves a file is the one recorded, not that XGBoost can read it: a truncated, empty or bit-flipped
``model.ubj`` whose manifest hash was recomputed makes XGBoost's loader segfault or abort, which kills the
process (no Python exception to catch). So a candidate is loaded in a child process (``python -m
chalicelib.registry.model_check BUNDLE``) exactly as serving loads it (``ModelBundle.load``), scored on the bundle's
probe set (``probes.json``: feature rows and the outputs training recorded) with both of serving's calls (the
probability and the SHAP walk), and compared with the recorded outputs. A crash, a timeout, a load error or a
different output is a failed verdict with the reason; the calling process never touches the model.

Bundles made before probes existed have no ``probes.json``: they are loaded and scored on synthetic probes in
the child (outputs must be finite probabilities) and pass with ``compared == 0`` (flagged "unverified").

Verdicts are cached per bundle content (the sha256 of ``manifest.json``, which pins every file's sha256), so a
serving process spawns once per new version, not on every champion check. Timeouts are not cached.

This side of the module is stdlib only (the registry and the light Lambdas import it); the child imports the
serving stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from chalicelib.registry.registry import RegistryError

MANIFEST = "manifest.json"
DEFAULT_TIMEOUT = 20.0  # seconds; the API's Lambda timeout is 29 s and a small model checks in about a second
RTOL, ATOL = 1e-6, 1e-6  # float32 outputs of the same model bytes on the same XGBoost agree to the last bit
# xgboost imports these when they are installed, for data-frame inputs the check never gives it; blocking them in
# the child makes it import what the serving Lambda has (numpy, scipy, xgboost) and start in ~0.7 s, not ~3.5 s.
_OPTIONAL = ("pandas", "sklearn", "pyarrow", "polars", "narwhals", "matplotlib", "dask", "cudf", "cupy")
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class InvalidModel(RegistryError):
    """The bundle's model failed validation: it would crash or mis-score whatever process loaded it."""


class ValidatorUnavailable(RegistryError):
    """The check could not run here (no serving stack installed, no interpreter): nothing is known of the model."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of one validation (``compared``: probes compared with recorded outputs; 0 = unverified)."""

    ok: bool
    reason: str
    version: str | None = None
    content: str | None = None
    compared: int = 0
    seconds: float = 0.0
    unavailable: bool = False  # the check could not run: neither a pass nor a verdict on the model

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


_cache: dict[str, Verdict] = {}
_cache_lock = threading.Lock()


def content_hash(path: Path) -> str | None:
    """sha256 of the bundle's manifest (which pins every file's sha256), or None when it has none."""
    try:
        return hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest()
    except OSError:
        return None


def check_bundle(path: str | Path, *, timeout: float = DEFAULT_TIMEOUT, use_cache: bool = True) -> Verdict:
    """Load and score the bundle at ``path`` in a child process; never raises for a bad model."""
    path = Path(path)
    content = content_hash(path)
    if content is None:
        return Verdict(False, f"{path.name} has no {MANIFEST}")
    if use_cache:
        with _cache_lock:
            if content in _cache:
                return _cache[content]
    verdict = _run_child(path, content, timeout)
    if verdict.version is None:  # the child died before saying: name the version from the manifest
        verdict = replace(verdict, version=_manifest_version(path))
    if use_cache and not verdict.unavailable and not verdict.reason.startswith("timed out"):
        with _cache_lock:
            _cache[content] = verdict
    return verdict


def _manifest_version(path: Path) -> str | None:
    try:
        version = json.loads((path / MANIFEST).read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return version if isinstance(version, str) else None


def require_valid(path: str | Path, *, timeout: float = DEFAULT_TIMEOUT) -> Verdict:
    """``check_bundle``, raising ``InvalidModel`` (one line: the version and the reason) on a failed verdict."""
    verdict = check_bundle(path, timeout=timeout)
    name = verdict.version or Path(path).name
    if verdict.unavailable:
        raise ValidatorUnavailable(f"model {name} could not be validated: {verdict.reason}")
    if not verdict.ok:
        raise InvalidModel(f"model {name} failed validation: {verdict.reason}")
    return verdict


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _run_child(path: Path, content: str, timeout: float) -> Verdict:
    # Lambda runs child processes (its quotas count "execution processes/threads", 1,024:
    # https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html); the child shares the function's
    # memory (~75 MB RSS for a small model) and its time counts towards the invocation's.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)}
    env["OMP_NUM_THREADS"] = "1"  # probes are a few rows; a thread pool only costs start-up time
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "chalicelib.registry.model_check", str(path)],
            capture_output=True,
            timeout=timeout,
            env=env,
            cwd=_PACKAGE_PARENT,
            check=False,
        )
    except subprocess.TimeoutExpired:  # subprocess.run kills the child before raising
        return Verdict(False, f"timed out after {timeout:g} s", content=content, seconds=timeout)
    except OSError as exc:
        return Verdict(False, f"could not start the validator: {exc}", content=content, unavailable=True)
    seconds = round(time.perf_counter() - started, 3)
    if done.returncode < 0:
        name = _signal_name(-done.returncode)
        return Verdict(False, f"loading or scoring crashed the process ({name})", content=content, seconds=seconds)
    try:
        report = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return Verdict(
            bool(report["ok"]),
            str(report["reason"]),
            report.get("version"),
            content,
            int(report.get("compared", 0)),
            seconds,
            bool(report.get("unavailable", False)),
        )
    except (IndexError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        tail = done.stderr.decode(errors="replace").strip().splitlines()
        last = tail[-1][:300] if tail else "no output"
        return Verdict(False, f"validator exited with code {done.returncode}: {last}", content=content, seconds=seconds)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# -- the child ----------------------------------------------------------------------------------------------
def _validate_here(path: Path) -> dict[str, object]:
    """Runs in the child: load as serving does, score the probes with serving's calls, compare."""
    for name in _OPTIONAL:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # `import name` now raises ImportError
    try:
        import numpy as np

        from chalicelib.model.bundle import ModelBundle, read_probes, synthetic_probes
    except ImportError as exc:  # e.g. a Lambda package without XGBoost: the check cannot run, the model is unjudged
        return {"ok": False, "unavailable": True, "reason": f"the serving stack is not installed here: {exc}"}

    version = None
    try:
        version = json.loads((path / MANIFEST).read_text()).get("version")
        model = ModelBundle.load(path)
        recorded = read_probes(path)
        X = recorded[0] if recorded is not None else synthetic_probes()
        raw = model.raw(X).astype(np.float64)
        risk = model.risk(X)
        contribs = model.contributions(X).astype(np.float64)
    except Exception as exc:  # BundleError, XGBoostError, a malformed probes.json: any of them fails the model
        first = (str(exc).strip().splitlines() or [""])[0][:300]  # XGBoost appends a native stack trace
        return {"ok": False, "reason": f"{type(exc).__name__}: {first}", "version": version}
    if not (np.all(np.isfinite(raw)) and np.all((raw >= 0) & (raw <= 1)) and np.all(np.isfinite(contribs))):
        return {"ok": False, "reason": "the model scores outside [0, 1] or to NaN", "version": version}
    margin = np.log(np.clip(raw, 1e-7, 1 - 1e-7) / np.clip(1 - raw, 1e-7, None))
    if not np.allclose(contribs.sum(axis=1), margin, atol=1e-3):
        return {"ok": False, "reason": "SHAP contributions do not add up to the model's output", "version": version}
    if recorded is None:
        return {"ok": True, "reason": "unverified: no recorded probes; loads and scores", "version": version}
    _, want_raw, want_risk = recorded
    for label, got, want in (("raw probability", raw, want_raw), ("calibrated risk", risk, want_risk)):
        if not np.allclose(got, want, rtol=RTOL, atol=ATOL):
            worst = float(np.max(np.abs(got - want)))
            return {"ok": False, "reason": f"{label} differs from the recorded probe outputs by up to {worst:.3g}",
                    "version": version}  # fmt: skip
    return {"ok": True, "reason": f"{len(X)} probes reproduce the recorded outputs", "version": version,
            "compared": len(X)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m chalicelib.registry.model_check BUNDLE_DIR", file=sys.stderr)
        return 2
    print(json.dumps(_validate_here(Path(args[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
