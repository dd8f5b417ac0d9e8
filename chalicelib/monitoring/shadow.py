"""Shadow scoring: an approved challenger (the registry alias ``shadow``) scores the API's requests beside the
champion, off the request path, so it can be compared on real traffic before it is promoted.

The response is always the champion's alone. After the champion has scored a request (``Predictor.score``, source
``api`` only: the nightly batch and /chat never shadow) its encoded feature matrix, request id, time and encounter
hashes are queued and the request returns; the challenger scores them later and its ``AuditRecord``\\ s (source
``shadow``, the challenger's version) go to the same prediction log. Who scores, and when:

- a long-running server (``readmit serve``): a daemon thread per worker process, woken by the queue;
- Lambda: a post-invoke flush (chalicelib/core/post_invoke.py), which the internal extension runs once the handler has
  finished. Where no extension could be registered the flushes run *before* the response, so there shadow scoring
  is off (queued work is dropped and counted) rather than on the request path; without the hook at all it is off.

Shadow records are not the record of care: under overload (the queue holds ``capacity`` rows) new work is dropped
and counted, never waited for, and readers of the record of care (the drift monitor, realized performance) must
leave ``source == "shadow"`` out. With no shadow alias the request path reads one attribute and returns; the alias is
checked off the request path (the worker thread, or the post-invoke flush) every ``check_interval`` seconds.

The report and the promotion rule are in chalicelib/monitoring/shadow_report.py. Light on import (stdlib, pydantic
via audit, the registry): numpy and the model stack are imported where scoring needs them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from chalicelib.core.audit import AuditRecord, PredictionLog
from chalicelib.core.storage import StorageError
from chalicelib.registry.registry import SHADOW, Registry, RegistryError

if TYPE_CHECKING:
    import numpy as np

    from chalicelib.core.post_invoke import PostInvoke
    from chalicelib.model.bundle import ModelBundle
    from chalicelib.registry.provider import ModelProvider

SOURCE = "shadow"
DEFAULT_CAPACITY_ROWS = 2_000  # queued encounters per process; past it new shadow work is dropped and counted
MAX_SCORE_ROWS = 512  # rows the worker scores in one call (requests queued meanwhile are scored together)
# The server's worker waits this long after its first queued request, so one model call and one log write serve all
# requests queued meanwhile: its Python work holds the GIL the request threads need (benchmarks/api_latency.py
# --shadow-compare measures what remains).
LINGER_S = 0.05
Mode = Literal["background", "deferred", "off"]
log = logging.getLogger("readmit.shadow")


# ---- the request path and the worker ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ShadowWork:
    """What the challenger needs from one request: the champion's encoded features (the feature path is one), the
    request's identity and time (its records pair with the champion's on request id and encounter hash)."""

    X: np.ndarray
    request_id: str
    at: str
    encounter_hashes: Sequence[str | None]
    caller: str | None
    champion_version: str
    champion_features: Sequence[str]


@dataclass
class ShadowStats:
    """This process's shadow worker, since it started (GET /model/shadow shows them)."""

    queued_requests: int = 0
    scored_requests: int = 0
    scored_rows: int = 0
    dropped_requests: int = 0  # the queue was full (overload), or no extension ran the flush after the response
    dropped_rows: int = 0
    skipped_same_version: int = 0  # the shadow alias names the champion: nothing to compare
    skipped_features: int = 0  # the challenger's feature names differ from the champion's: its X would be wrong
    failures: int = 0
    busy_seconds: float = 0.0  # time spent scoring and logging off the request path
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["busy_ms_per_request"] = 1000 * self.busy_seconds / self.scored_requests if self.scored_requests else None
        return out


class ShadowScorer:
    """Follows the registry alias ``shadow`` with its own ModelProvider and scores queued requests off the request
    path (see the module docstring for who runs it where)."""

    def __init__(
        self,
        provider: ModelProvider,
        log: PredictionLog,
        *,
        mode: Mode | None = None,
        hooks: PostInvoke | None = None,
        capacity: int = DEFAULT_CAPACITY_ROWS,
        check_interval: float | None = None,
        linger_s: float = LINGER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from chalicelib.core import post_invoke

        self.provider = provider
        self.log = log
        self.capacity = capacity
        self.linger_s = linger_s
        self.check_interval = provider.check_interval if check_interval is None else check_interval
        self.clock = clock
        self.stats = ShadowStats()
        self.hooks = hooks or post_invoke.default()
        self.mode: Mode = mode or _mode_for(self.hooks)
        self._queue: deque[ShadowWork] = deque()
        self._rows = 0
        self._cond = threading.Condition()
        self._last_check: float | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        if self.mode == "deferred":
            self.hooks.register(self.flush)
        elif self.mode == "background":
            self._ensure_worker()

    @classmethod
    def from_env(cls, registry_uri: str, log: PredictionLog, check_interval: float) -> ShadowScorer:
        from chalicelib.registry.provider import ModelProvider

        provider = ModelProvider(registry_uri=registry_uri, alias=SHADOW, check_interval=check_interval)
        return cls(provider, log)

    @property
    def version(self) -> str | None:
        """The loaded challenger's version, or None (no shadow alias, or not loaded yet)."""
        model = self.provider.model
        return model.version if model is not None else None

    # -- the request path -------------------------------------------------------------------------------------------
    def submit(
        self,
        champion: ModelBundle,
        X: np.ndarray,
        request_id: str,
        at: str,
        encounter_hashes: Sequence[str | None],
        caller: str | None = None,
    ) -> bool:
        """Queue one scored request for the challenger and return at once; False when nothing was queued (no
        challenger loaded, the challenger is the champion, or the queue is full: dropped and counted)."""
        model = self.provider.model
        if model is None or self.mode == "off":
            return False
        if model.version == champion.version:
            self.stats.skipped_same_version += 1
            return False
        work = ShadowWork(X, request_id, at, encounter_hashes, caller, champion.version, champion.meta["feature_names"])
        with self._cond:
            if self._rows + len(X) > self.capacity:
                self.stats.dropped_requests += 1
                self.stats.dropped_rows += len(X)
                if self.stats.dropped_requests in (1, 10, 100) or self.stats.dropped_requests % 1000 == 0:
                    log.warning(
                        "shadow queue full (%d rows): %d requests dropped", self.capacity, self.stats.dropped_requests
                    )
                return False
            self._queue.append(work)
            self._rows += len(X)
            self.stats.queued_requests += 1
            if self.mode == "background":
                self._ensure_worker()
                self._cond.notify()
        return True

    # -- off the request path ---------------------------------------------------------------------------------------
    def refresh_if_due(self) -> None:
        """Check the shadow alias when ``check_interval`` has passed (ETag first; a new challenger is validated in
        a child process, then loaded). Always off the request path."""
        now = self.clock()
        if self._last_check is not None and now - self._last_check < self.check_interval:
            return
        self._last_check = now
        self._refresh()

    def check_at_next_use(self) -> None:
        """The next refresh runs whatever the interval (after a SnapStart restore, as the champion's provider)."""
        self._last_check = None

    def _refresh(self) -> None:
        provider = self.provider
        if provider.model_uri:  # a fixed challenger bundle (tests, the benchmark): load it once
            provider.current()
            return
        try:
            registry = Registry.open(provider.registry_uri or "", s3_client=provider.s3_client, validate=False)
            present = registry.alias_etag(provider.alias) is not None
        except (RegistryError, StorageError, OSError, ValueError) as exc:
            log.warning("shadow alias check failed: %s", type(exc).__name__)
            return
        if not present:  # no shadow alias (or it was removed): nothing to score, and nothing worth a warning
            if provider.model is not None:
                log.info("shadow alias removed: shadow scoring stops", extra={"model_version": provider.model.version})
            provider.forget()  # unlike the champion's provider, which keeps its last good model
            return
        provider.refresh_now()  # loads what the alias names (validated in a child process first)

    def flush(self, deadline: float | None = None) -> int:
        """The post-invoke hook: refresh when due, then score what is queued (by ``deadline``, epoch seconds). When
        the hook runs before the response (no extension), queued work is dropped instead: never on the path."""
        if self.hooks.mode == "sync":
            return self._drop_all()
        self.refresh_if_due()
        scored = self.drain(deadline)
        flush_log = getattr(self.log, "flush_quietly", None)
        if scored and flush_log is not None:  # the log's own flush ran before this one: send the shadow's records too
            flush_log(deadline)
        return scored

    def drain(self, deadline: float | None = None) -> int:
        """Score everything queued (in batches of up to MAX_SCORE_ROWS rows); the number of rows logged."""
        done = 0
        while True:
            if deadline is not None and time.time() >= deadline:
                self._drop_all()
                return done
            batch = self._take()
            if not batch:
                return done
            done += self._score(batch)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after scoring what is queued (at most ``timeout`` seconds)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.drain(time.time() + timeout)

    def pending(self) -> int:
        """Rows queued and not yet scored."""
        with self._cond:
            return self._rows

    # -- internals ----------------------------------------------------------------------------------------------
    def _take(self) -> list[ShadowWork]:
        batch: list[ShadowWork] = []
        rows = 0
        with self._cond:
            while self._queue and (not batch or rows + len(self._queue[0].X) <= MAX_SCORE_ROWS):
                work = self._queue.popleft()
                batch.append(work)
                rows += len(work.X)
            self._rows -= rows
        return batch

    def _drop_all(self) -> int:
        with self._cond:
            self.stats.dropped_requests += len(self._queue)
            self.stats.dropped_rows += self._rows
            self._queue.clear()
            self._rows = 0
        return 0

    def _score(self, batch: list[ShadowWork]) -> int:
        import numpy as np

        started = time.perf_counter()
        model = self.provider.model
        try:
            if model is None:  # the alias went away after the work was queued
                self.stats.dropped_requests += len(batch)
                self.stats.dropped_rows += sum(len(w.X) for w in batch)
                return 0
            features = list(model.meta["feature_names"])
            usable = []
            for work in batch:
                if work.champion_version == model.version:
                    self.stats.skipped_same_version += 1
                elif list(work.champion_features) != features:
                    self.stats.skipped_features += 1
                    if self.stats.skipped_features == 1:
                        log.warning(
                            "shadow skipped: the challenger's features differ from the champion's",
                            extra={"model_version": model.version, "champion_version": work.champion_version},
                        )
                else:
                    usable.append(work)
            if not usable:
                return 0
            X = usable[0].X if len(usable) == 1 else np.vstack([w.X for w in usable])
            risk = model.risk(X)
            tiers = model.tiers(risk)
            records: list[AuditRecord] = []
            row = 0
            for work in usable:
                for i in range(len(work.X)):
                    records.append(
                        AuditRecord.scored(
                            request_id=work.request_id,
                            at=work.at,  # the request's time: the pair shares its window
                            model_version=model.version,
                            risk=float(risk[row]),
                            risk_tier=tiers[row],
                            encounter_hash=work.encounter_hashes[i],
                            features=X[row].astype(np.float64).tolist(),
                            source=SOURCE,
                            caller=work.caller,
                        )
                    )
                    row += 1
            self.log.append(records)
            self.stats.scored_requests += len(usable)
            self.stats.scored_rows += len(records)
            return len(records)
        except Exception as exc:  # a shadow failure never reaches a caller; it is counted and logged by type only
            self.stats.failures += 1
            self.stats.last_error = type(exc).__name__
            log.error("shadow scoring failed: %s", type(exc).__name__)
            return 0
        finally:
            self.stats.busy_seconds += time.perf_counter() - started

    def _ensure_worker(self) -> None:
        """Start the daemon worker (again in a forked child, whose copy of the thread does not run)."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="readmit-shadow", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.refresh_if_due()
            except Exception as exc:  # the worker must survive a bad registry moment
                log.error("shadow refresh failed: %s", type(exc).__name__)
            with self._cond:
                if not self._queue and not self._closing:
                    self._cond.wait(timeout=max(0.05, self.check_interval))
                if self._closing:
                    return
                lone = 0 < self._rows < MAX_SCORE_ROWS
            if lone and self.linger_s > 0:
                time.sleep(self.linger_s)  # not a wait on the condition: each submit's notify would wake it
            self.drain()


def _mode_for(hooks: PostInvoke) -> Mode:
    """deferred when the post-invoke hook runs (on Lambda), off on Lambda without it (scoring would sit on the
    request path), else background (a server's thread)."""
    from chalicelib.core.post_invoke import ENV_RUNTIME_API

    if hooks.mode in ("extension", "sync"):
        return "deferred"
    if os.environ.get(ENV_RUNTIME_API):
        log.warning("post_invoke.start() was not called: shadow scoring is off")
        return "off"
    return "background"
