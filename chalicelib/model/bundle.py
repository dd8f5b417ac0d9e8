"""A model bundle: the booster (XGBoost UBJSON), calibrator, thresholds and metadata, hash-checked.

This is what serving loads, so it imports neither pandas nor scikit-learn. A bundle that fails its
hash check, or was built for a different feature set, refuses to load: a broken artifact never
replaces a working one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from chalicelib.features.table import FEATURE_NAMES
from chalicelib.model import xgboost_calls
from chalicelib.model.calibration import Calibrator

FORMAT = "readmit-bundle/1"
MANIFEST = "manifest.json"
BOOSTER = "model.ubj"
META = "model.json"
PROBES = "probes.json"  # a fixed probe set and the model's outputs on it: what model_check compares against
PROBE_ROWS = 24
TIERS = ("low", "medium", "high")
# Below this many rows one thread is fastest (a thread pool costs more than the trees); above it, a batch
# uses every core the function has (Lambda gives 2 vCPUs from 3,009 MB).
PARALLEL_ROWS = 64
CPUS = os.cpu_count() or 1  # read once: the call costs ~25 µs, a tenth of a single-row prediction


class BundleError(Exception):
    """A bundle cannot be loaded."""


class CorruptBundle(BundleError):
    """A file is missing or does not match its recorded sha256."""


class IncompatibleBundle(BundleError):
    """The bundle was built for another feature set or format."""


def dmatrix(X: np.ndarray, y: np.ndarray | None = None) -> xgb.DMatrix:
    """The booster is trained with feature names, so SHAP output and `xgboost` tools name them."""
    return xgb.DMatrix(X, label=y, missing=np.nan, feature_names=list(FEATURE_NAMES))


def probe_rows(X: np.ndarray, n: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """``n`` feature vectors for validating a bundle, none of them a patient's: each column holds that column's
    quantiles of ``X`` (0 to 100%) in a fixed shuffled order, so the rows cover each feature's range and mix
    values across features without copying any encounter. The last row is all missing (NaN)."""
    X = np.asarray(X, dtype=np.float32)
    levels = np.linspace(0.0, 1.0, n - 1)
    rng = np.random.default_rng(seed)
    probes = np.full((n, X.shape[1]), np.nan, dtype=np.float32)
    for j in range(X.shape[1]):
        column = X[:, j][~np.isnan(X[:, j])]
        if len(column):
            probes[: n - 1, j] = np.quantile(column, rng.permutation(levels), method="nearest")
    return probes


def synthetic_probes(n: int = PROBE_ROWS) -> np.ndarray:
    """Probes for a bundle that recorded none (made before probes existed): zeros, small counts and a missing
    row. Without recorded outputs they can only show that the model loads and scores to finite probabilities."""
    rows = np.tile(np.arange(n, dtype=np.float32)[:, None] % 4, (1, len(FEATURE_NAMES)))
    rows[-1] = np.nan
    return rows


def probe_document(booster_bytes: bytes, calibrator: Calibrator, probes: np.ndarray) -> dict[str, Any]:
    """The probe set and the outputs the written model gives on it, scored exactly as serving scores (the booster
    reloaded from the bytes written, one thread, the same C call), so a faithful copy reproduces them exactly."""
    booster = xgb.Booster()
    booster.load_model(bytearray(booster_bytes))
    booster.set_param({"nthread": 1})
    raw = xgboost_calls.probabilities(booster, probes)
    return {
        "features": [[None if np.isnan(v) else float(v) for v in row] for row in probes.tolist()],
        "raw": [float(v) for v in raw],
        "risk": [float(v) for v in calibrator(raw)],
    }


def read_probes(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(features, raw, risk) recorded in a bundle, or None when it has none."""
    file = path / PROBES
    if not file.is_file():
        return None
    doc = json.loads(file.read_text())
    X = np.array([[np.nan if v is None else v for v in row] for row in doc["features"]], dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES) or len(doc["raw"]) != len(X) or len(doc["risk"]) != len(X):
        raise CorruptBundle(f"{PROBES} does not match the feature set")
    return X, np.asarray(doc["raw"], dtype=np.float64), np.asarray(doc["risk"], dtype=np.float64)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelBundle:
    """A loaded, verified model ready to score feature matrices."""

    path: Path
    version: str
    booster: xgb.Booster
    calibrator: Calibrator
    meta: dict[str, Any]
    _parallel: xgb.Booster | None = field(default=None, repr=False, compare=False)

    def _booster_for(self, rows: int) -> tuple[xgb.Booster, int]:
        """The single-threaded booster for small requests; a multi-threaded copy (made once) for batches."""
        threads = CPUS
        if rows < PARALLEL_ROWS or threads < 2:
            return self.booster, 1
        if self._parallel is None:
            parallel = self.booster.copy()
            parallel.set_param({"nthread": threads})
            self._parallel = parallel  # a race only builds it twice; both copies are equal
        return self._parallel, threads

    @property
    def thresholds(self) -> dict[str, float]:
        return self.meta["thresholds"]

    @property
    def threshold(self) -> float:
        """The operating threshold: at or above it, a patient is flagged high risk."""
        return float(self.thresholds["high"])

    def raw(self, X: np.ndarray) -> np.ndarray:
        booster, _ = self._booster_for(len(X))
        return xgboost_calls.probabilities(booster, X)

    def risk(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probability of readmission within 30 days."""
        return self.calibrator(self.raw(X))

    def tiers(self, risk: np.ndarray) -> list[str]:
        high, medium = self.thresholds["high"], self.thresholds["medium"]
        return ["high" if r >= high else "medium" if r >= medium else "low" for r in risk.tolist()]

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """XGBoost's native SHAP values (log-odds), one column per feature plus the bias last.

        Single-threaded for small requests: a thread pool costs more than the trees for one row."""
        booster, threads = self._booster_for(len(X))
        return xgboost_calls.contributions(booster, X, threads)

    def risk_and_contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both from one tree walk: SHAP values sum to the raw margin, so the probability follows from them."""
        contribs = self.contributions(X)
        raw = 1.0 / (1.0 + np.exp(-np.add.reduce(contribs, axis=1, dtype=np.float64)))
        return self.calibrator(raw), contribs

    @classmethod
    def load(cls, path: str | Path) -> ModelBundle:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise CorruptBundle(f"{path} has no {MANIFEST}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise CorruptBundle(f"{manifest_path} is not JSON: {exc}") from exc
        if manifest.get("format") != FORMAT:
            raise IncompatibleBundle(f"bundle format {manifest.get('format')!r}, expected {FORMAT!r}")
        files = manifest.get("files", {})
        for required in (BOOSTER, META):
            if required not in files:
                raise CorruptBundle(f"{required} is not listed in {MANIFEST}")
        for name in (BOOSTER, META):
            file = path / name
            if not file.is_file() or sha256_file(file) != files[name]:
                raise CorruptBundle(f"{name} is missing or does not match its sha256")
        meta = json.loads((path / META).read_text())
        if tuple(meta.get("feature_names", ())) != FEATURE_NAMES:
            raise IncompatibleBundle("the bundle's features differ from this code's features")
        booster = xgb.Booster()
        try:
            booster.load_model(bytearray((path / BOOSTER).read_bytes()))
        except xgb.core.XGBoostError as exc:
            raise CorruptBundle(f"{BOOSTER} does not load: {exc}") from exc
        booster.set_param({"nthread": 1})
        return cls(path, manifest["version"], booster, Calibrator.from_dict(meta["calibration"]), meta)


def write_bundle(
    dest_root: Path,
    booster: xgb.Booster,
    calibrator: Calibrator,
    meta: dict[str, Any],
    extra: Callable[[dict[str, Any]], dict[str, bytes]] | None = None,
    probes: np.ndarray | None = None,
) -> Path:
    """Write a complete bundle to ``dest_root/<version>`` (temp dir + rename: all or nothing).

    ``extra`` renders further files (model card, plots) from the final metadata, which is when the
    version, the booster's hash, becomes known. ``probes`` (feature rows, see ``probe_rows``) are stored with
    the model's outputs on them in ``probes.json``, covered by the manifest, for ``model_check``."""
    model_bytes = bytes(booster.save_raw(raw_format="ubj"))
    created = datetime.now(UTC)
    version = f"{created:%Y%m%dT%H%M%SZ}-{hashlib.sha256(model_bytes).hexdigest()[:8]}"
    meta = {
        **meta,
        "version": version,
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "feature_names": list(FEATURE_NAMES),
        "calibration": calibrator.to_dict(),
        "xgboost_version": xgb.__version__,
    }
    files: dict[str, bytes] = {
        BOOSTER: model_bytes,
        META: json.dumps(meta, indent=2).encode(),
        **(extra(meta) if extra else {}),
    }
    if probes is not None:
        files[PROBES] = json.dumps(probe_document(model_bytes, calibrator, probes)).encode()
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest_root))
    for name, data in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    manifest = {
        "format": FORMAT,
        "version": version,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be read
    final = dest_root / version
    os.replace(tmp, final)
    return final
