"""The serving side's model: loaded once per process, hot-swapped when the registry's champion changes.

Checks are cheap (the alias object's ETag, never a download) and happen at most every
``check_interval`` seconds, on the request path (Lambda has no background threads) but never blocking
a request: one thread checks while the others keep scoring with the current model. A new champion that
is missing, corrupt or incompatible is not swapped in; the last good model keeps serving.

Every model is validated in a separate process (``model_check``: load, score the recorded probes, compare)
before this process loads it, at the first load as at a swap: a model file that would segfault XGBoost's
loader fails its check instead of killing the server. Verdicts are cached per bundle content, so a refused
champion costs one child process, not one per check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.core import settings
from chalicelib.core.storage import StorageError
from chalicelib.core.telemetry import logger
from chalicelib.model.bundle import MANIFEST, BundleError, ModelBundle
from chalicelib.registry.loader import NoChampion, bundle_path
from chalicelib.registry.model_check import InvalidModel, require_valid
from chalicelib.registry.registry import Registry, RegistryError

log = logger
DEFAULT_CHECK_INTERVAL: float = settings.default("check_interval")  # $READMIT_CHECK_INTERVAL's default
NOT_READY_RETRY = 5.0


@dataclass
class ProviderStatus:
    version: str | None = None
    last_check: float | None = None
    swaps: int = 0
    failures: int = 0
    last_error: str | None = None
    listeners: list[Callable[[str, str], None]] = field(default_factory=list)


class ModelProvider:
    """Serves a fixed bundle (``model_uri``) or follows a registry alias (``registry_uri``)."""

    def __init__(
        self,
        *,
        registry_uri: str | None = None,
        model_uri: str | None = None,
        alias: str = "champion",
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        cache_dir: Path | None = None,
        s3_client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (registry_uri or model_uri):
            raise ValueError("a registry URI or a model URI is needed")
        self.registry_uri, self.model_uri, self.alias = registry_uri, model_uri, alias
        self.check_interval = check_interval
        self.cache_dir, self.s3_client, self.clock = cache_dir, s3_client, clock
        self._model: ModelBundle | None = None
        self._etag: str | None = None
        self._lock = threading.Lock()
        self.status = ProviderStatus()

    # -- public -----------------------------------------------------------------------------------
    @property
    def model(self) -> ModelBundle | None:
        return self._model

    def current(self) -> ModelBundle | None:
        """The model to score with now; checks for a new champion when the interval has passed."""
        # Without a model, retry soon (a champion may appear any moment); with one, every check_interval.
        interval = self.check_interval if self._model is not None else min(self.check_interval, NOT_READY_RETRY)
        due = self.status.last_check is None or self.clock() - self.status.last_check >= interval
        if due and self._lock.acquire(blocking=self._model is None):
            try:
                self._refresh()
            finally:
                self._lock.release()
        return self._model

    def refresh_now(self) -> None:
        with self._lock:
            self._refresh()

    def forget(self) -> None:
        """Drop the loaded model: a shadow provider whose alias was removed must stop scoring, whereas the
        champion's provider keeps its last good model when its alias goes (``_refresh``)."""
        with self._lock:
            self._model = None
            self._etag = None
            self.status.version = None

    def check_at_next_use(self) -> None:
        """The next ``current()`` checks for a new champion whatever the interval. After a SnapStart restore the
        loaded model is as old as the snapshot (hours or days), and the monotonic clock the interval is measured on
        need not have advanced while the snapshot was stored."""
        self.status.last_check = None

    # -- internals --------------------------------------------------------------------------------
    def _refresh(self) -> None:
        self.status.last_check = self.clock()
        try:
            if self.model_uri:
                if self._model is None:
                    self._swap(self._load(bundle_path(self.model_uri, cache=self.cache_dir, s3_client=self.s3_client)))
                return
            registry = Registry.open(self.registry_uri or "", s3_client=self.s3_client)
            etag = registry.alias_etag(self.alias)
            if etag is not None and etag == self._etag and self._model is not None:
                return
            version = registry.get_alias(self.alias)
            if version is None:
                raise NoChampion(f"the registry has no {self.alias!r} model yet")
            if self._model is None or version != self._model.version:
                folder = registry.download(version, self.cache_dir or _default_cache())
                if not (folder / MANIFEST).is_file():
                    raise BundleError(f"version {version} has no manifest")
                self._swap(self._load(folder))
            self._etag = etag
        except (BundleError, RegistryError, StorageError, NoChampion, OSError, ValueError) as exc:
            self.status.failures += 1
            self.status.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "model refresh failed; keeping the current model",
                extra={
                    "error_type": type(exc).__name__,
                    "model_version": self.status.version,
                    # the reason names a version, a file and a signal or a number: never a patient's data
                    "reason": str(exc)[:300] if isinstance(exc, InvalidModel) else None,
                },
            )

    @staticmethod
    def _load(folder: Path) -> ModelBundle:
        """Load only what a separate process has loaded and scored (raises InvalidModel otherwise)."""
        require_valid(folder)
        return ModelBundle.load(folder)

    def _swap(self, model: ModelBundle) -> None:
        previous = self._model.version if self._model else None
        self._model = model  # a single reference assignment: requests see the old or the new model, never half
        self.status.version = model.version
        self.status.last_error = None
        if previous is not None:
            self.status.swaps += 1
        log.info("model loaded", extra={"model_version": model.version, "previous_version": previous})
        for listener in self.status.listeners:
            listener(previous or "", model.version)


def _default_cache() -> Path:
    from chalicelib.core.settings import home

    return home() / "cache" / "models"
