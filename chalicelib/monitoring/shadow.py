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

Light on import (stdlib, pydantic via audit, the registry): the promote step imports ``shadow_ready`` from here;
numpy and the model stack are imported where scoring or a report needs them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from chalicelib.core.audit import AuditRecord, PredictionLog
from chalicelib.core.settings import min_shadow_hours, min_shadow_requests
from chalicelib.core.storage import StorageError
from chalicelib.registry.registry import SHADOW, Registry, RegistryError

if TYPE_CHECKING:
    import numpy as np

    from chalicelib.core.post_invoke import PostInvoke
    from chalicelib.model.bundle import ModelBundle
    from chalicelib.registry.provider import ModelProvider

SOURCE = "shadow"
TIERS = ("low", "medium", "high")
DEFAULT_CAPACITY_ROWS = 2_000  # queued encounters per process; past it new shadow work is dropped and counted
MAX_SCORE_ROWS = 512  # rows the worker scores in one call (requests queued meanwhile are scored together)
# The server's worker waits this long after its first queued request, so one model call and one log write serve all
# requests queued meanwhile: its Python work holds the GIL the request threads need (benchmarks/api_latency.py
# --shadow-compare measures what remains).
LINGER_S = 0.05
MATURITY = timedelta(days=30)  # as chalicelib/monitoring/outcomes.py: a 30-day readmission label is known 30 days later
DEFAULT_REPORT_WINDOW = timedelta(days=90)  # when the shadow's start is unknown: long enough for matured labels
NOTE = (
    "Shadow predictions are not the record of care: nobody saw them, and under load shadow work is dropped "
    "(counted in the worker's stats), so counts can be below the champion's."
)
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


# ---- the report ------------------------------------------------------------------------------------------------
def _pairs(
    records: Iterable[AuditRecord], version: str | None
) -> tuple[list[tuple[AuditRecord, AuditRecord]], dict[str, int]]:
    """(champion, shadow) records paired on (request_id, encounter_hash); keys that are not unique on a side (a
    batch whose encounters have no ids) are left out and counted."""
    champion: dict[tuple[str, str | None], AuditRecord | None] = {}
    shadow: dict[tuple[str, str | None], AuditRecord | None] = {}
    for record in records:
        if record.source == SOURCE:
            if version is not None and record.model_version != version:
                continue
            side = shadow
        elif record.source == "api":
            side = champion
        else:
            continue
        key = (record.request_id, record.encounter_hash)
        side[key] = None if key in side else record  # a second record under the same key: ambiguous
    pairs = []
    ambiguous = unpaired = 0
    for key, s in shadow.items():
        c = champion.get(key, False)
        if s is None or c is None:
            ambiguous += 1
        elif isinstance(c, AuditRecord):
            pairs.append((c, s))
        else:  # False: no champion record under the key
            unpaired += 1
    return pairs, {"ambiguous": ambiguous, "shadow_without_champion": unpaired}


def auc(y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray) -> float | None:
    """calibration.roc_auc (scikit-learn's value, without scikit-learn, which the API does not have)."""
    import numpy as np

    from chalicelib.model.calibration import roc_auc

    return roc_auc(np.asarray(y), np.asarray(p))


def ece(y: Sequence[int] | np.ndarray, p: Sequence[float] | np.ndarray, bins: int = 10) -> float:
    """calibration.ece (evaluation's definition, without scikit-learn, which the API does not have)."""
    import numpy as np

    from chalicelib.model.calibration import ece as expected_calibration_error

    return expected_calibration_error(np.asarray(y), np.asarray(p), bins)


def _realized(
    pairs: list[tuple[AuditRecord, AuditRecord]], labels: Mapping[str, bool] | None, now: datetime
) -> dict[str, Any]:
    """Both models on the paired encounters whose labels have matured (30 days) and are known: the outcome join
    of chalicelib/monitoring/outcomes.py (hashed encounter id → label), on the same encounters for both."""
    matured_before = now - MATURITY
    matured = [(c, s) for c, s in pairs if c.encounter_hash and c.timestamp <= matured_before]
    out: dict[str, Any] = {"matured": len(matured), "labelled": 0, "champion": None, "shadow": None}
    if labels is None:
        out["note"] = "no outcomes given"
        return out
    joined = [
        (c, s, labels[c.encounter_hash])
        for c, s in matured
        if c.encounter_hash is not None and c.encounter_hash in labels
    ]
    out["labelled"] = len(joined)
    if not joined:
        out["note"] = "no matured, labelled shadow predictions yet (labels mature 30 days after the prediction)"
        return out
    y = [int(label) for _, _, label in joined]
    for name, p in (("champion", [c.risk for c, _, _ in joined]), ("shadow", [s.risk for _, s, _ in joined])):
        out[name] = {"n": len(joined), "readmitted": sum(y), "roc_auc": auc(y, p), "ece": ece(y, p)}
    return out


def shadow_report(
    log: PredictionLog,
    since: datetime | None,
    until: datetime | None,
    outcomes: Mapping[str, bool] | None = None,
    *,
    version: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The challenger against the champion on the same requests in [since, until): requests compared, tier
    agreement (share and a 3×3 table, champion's tier by row), churn of the high-risk list, mean risk shift
    (shadow − champion) with its spread, and both models' realized AUC and ECE where labels have matured.
    ``outcomes`` maps hashed encounter ids to 30-day readmission; ``version`` keeps one challenger's records."""
    import numpy as np

    now = now or datetime.now(UTC)
    pairs, left_out = _pairs(log.read(since, until), version)
    report: dict[str, Any] = {
        "window": [None if since is None else since.isoformat(), None if until is None else until.isoformat()],
        "shadow_versions": dict(Counter(s.model_version for _, s in pairs)),
        "champion_versions": dict(Counter(c.model_version for c, _ in pairs)),
        "requests_compared": len({c.request_id for c, _ in pairs}),
        "encounters_compared": len(pairs),
        "left_out": left_out,
        "note": NOTE,
    }
    if not pairs:
        return {**report, "tier_agreement": None, "tier_table": None, "high_risk": None, "risk_shift": None,
                "realized": _realized(pairs, outcomes, now)}  # fmt: skip
    index = {t: i for i, t in enumerate(TIERS)}
    table = [[0] * len(TIERS) for _ in TIERS]
    for c, s in pairs:
        if c.risk_tier in index and s.risk_tier in index:
            table[index[c.risk_tier]][index[s.risk_tier]] += 1
    agree = sum(c.risk_tier == s.risk_tier for c, s in pairs)
    high_c = {i for i, (c, _) in enumerate(pairs) if c.risk_tier == "high"}
    high_s = {i for i, (_, s) in enumerate(pairs) if s.risk_tier == "high"}
    union = high_c | high_s
    shift = np.array([s.risk - c.risk for c, s in pairs], dtype=np.float64)
    report.update(
        {
            "tier_agreement": agree / len(pairs),
            "tier_table": {"tiers": list(TIERS), "rows": "champion", "columns": "shadow", "counts": table},
            "high_risk": {
                "champion": len(high_c),
                "shadow": len(high_s),
                "both": len(high_c & high_s),
                "entering": len(high_s - high_c),  # high under the shadow only: would join the list
                "leaving": len(high_c - high_s),  # high under the champion only: would leave it
                "jaccard_distance": 1 - len(high_c & high_s) / len(union) if union else None,
            },
            "risk_shift": {
                "mean": float(shift.mean()),
                "sd": float(shift.std(ddof=1)) if len(shift) > 1 else None,
                "p05": float(np.percentile(shift, 5)),
                "p95": float(np.percentile(shift, 95)),
                "mean_abs": float(np.abs(shift).mean()),
            },
            "realized": _realized(pairs, outcomes, now),
        }
    )
    return report


# ---- the promotion rule ----------------------------------------------------------------------------------------
def alias_set_at(registry: Registry, alias: str = SHADOW) -> tuple[str, datetime] | None:
    """(version, when it was set) of an alias, or None when unset."""
    doc = registry.alias_record(alias)
    return (doc["version"], datetime.fromisoformat(doc["updated_at"])) if doc else None


def shadow_requests(
    log: PredictionLog, version: str, since: datetime, until: datetime, enough: int | None = None
) -> int:
    """Distinct requests the challenger ``version`` scored in shadow in [since, until); stops counting at
    ``enough`` (the promote step needs only to know the minimum is reached, not read the whole log)."""
    seen: set[str] = set()
    for record in log.read(since, until):
        if record.source == SOURCE and record.model_version == version:
            seen.add(record.request_id)
            if enough is not None and len(seen) >= enough:
                break
    return len(seen)


def shadow_ready(
    registry: Registry,
    log: PredictionLog | None,
    version: str,
    now: datetime | None = None,
    *,
    min_requests: int | None = None,
    min_hours: float | None = None,
) -> tuple[bool, str]:
    """Whether ``version`` has been in shadow long enough to be promoted: at least READMIT_MIN_SHADOW_HOURS since
    the shadow alias named it, and READMIT_MIN_SHADOW_REQUESTS requests it scored in shadow since then (both 0 by
    default: no shadow needed). Returns (ready, why) for the promote step to record or refuse with."""
    min_requests = min_shadow_requests() if min_requests is None else min_requests
    min_hours = min_shadow_hours() if min_hours is None else min_hours
    if min_requests <= 0 and min_hours <= 0:
        return True, "no minimum shadow period is required"
    now = now or datetime.now(UTC)
    current = alias_set_at(registry)
    if current is None or current[0] != version:
        named = f"the shadow model is {current[0]}" if current else "there is no shadow model"
        return False, f"{version} has not run in shadow ({named}); set it as the shadow first"
    hours = (now - current[1]).total_seconds() / 3600
    if hours < min_hours:
        return False, f"{version} has been in shadow {hours:.1f} h of the {min_hours:g} h required"
    if min_requests > 0:
        if log is None:
            return False, "no prediction log to count shadow requests in"
        n = shadow_requests(log, version, current[1], now, enough=min_requests)
        if n < min_requests:
            return False, f"{version} has scored {n} requests in shadow of the {min_requests} required"
    return True, f"{version} has been in shadow {hours:.1f} h (≥ {min_hours:g} h) and met {min_requests} requests"


def report_window(registry: Registry | None, now: datetime) -> tuple[datetime, str | None]:
    """Where a report starts by default: when the current shadow alias was set, else DEFAULT_REPORT_WINDOW ago;
    and the current shadow version (None without a registry or a shadow alias)."""
    current = alias_set_at(registry) if registry is not None else None
    if current is None:
        return now - DEFAULT_REPORT_WINDOW, None
    return current[1], current[0]


def current_report(
    registry: Registry | None,
    log: PredictionLog,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    outcomes: Mapping[str, bool] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`readmit shadow-report` and GET /model/shadow: the current shadow model (None: "no shadow model") against
    the champion, from when the shadow alias was set (or ``since``). Without a shadow alias, every shadow record of
    the window is reported (a past shadow's)."""
    now = now or datetime.now(UTC)
    start, version = report_window(registry, now)
    champion = registry.champion() if registry is not None else None
    report = shadow_report(log, since or start, until, outcomes, version=version, now=now)
    return {"shadow_version": version, "champion_version": champion, **report}


def outcome_labels(uri: str | None = None) -> dict[str, bool] | None:
    """Labels for the realized metrics: the outcome uploads under ``uri`` or $READMIT_OUTCOMES_URI (as the drift
    monitor reads them), else the local store `readmit outcomes` writes; None when there are none."""
    from chalicelib.core import settings
    from chalicelib.monitoring.outcomes import OutcomeStore, load_outcome_uploads

    where = uri or settings.raw(settings.ENV_OUTCOMES_URI)  # per GET /model/shadow: no Settings built
    if where:
        labels, _problems = load_outcome_uploads(where)
        return labels
    store = OutcomeStore(settings.home() / "outcomes.jsonl")
    return store.labels() if store.path.exists() else None
