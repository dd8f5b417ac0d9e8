"""The API's prediction log on Amazon Data Firehose (``firehose://STREAM_NAME`` in $READMIT_PREDICTION_LOG): one
JSON line per record, delivered by Firehose as a few large JSON Lines objects a buffer interval into
``predictions/dt=YYYY-MM-DD/`` of the prediction log bucket, where S3PredictionLog reads them.

Writing one S3 object per request put an S3 PUT (tens of ms) inside every /predict and left 4.3 M objects a day at
50 requests/s for the drift monitor to list. Here ``append`` only queues the encoded lines; they are sent in
``PutRecordBatch`` calls off the request path:

- on Lambda, by the post-invoke extension after the response (chalicelib/core/post_invoke.py: a thread of our own
  would be frozen with the records in it), or before the response if no extension could be registered;
- in a long-running server (``readmit serve``), by a background sender thread, and at exit (atexit, bounded).

Limits (botocore firehose/2015-08-04/service-2.json, PutRecordBatch; https://docs.aws.amazon.com/firehose/latest/
dev/limits.html): at most 500 records per call (PutRecordBatchRequestEntryList max 500), each record's data at most
1,000 KiB (Data max 1024000), "up to a limit of 4 MB for the entire request" (the quota page says 4 MiB; the smaller
reading is used). A call can succeed with ``FailedPutCount`` > 0: ``RequestResponses[i]`` matches ``Records[i]``
and carries an ``ErrorCode`` (ServiceUnavailableException or InternalFailure) for the records to resend, and only
those are resent, with bounded exponential backoff. Records are never dropped: what cannot be sent stays queued
for the next flush, and an append that finds the queue full sends synchronously (raising if even that fails,
as the per-request S3 put did).
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, Literal

from chalicelib.core import post_invoke as post_invoke_module
from chalicelib.core.audit import (
    FIREHOSE_SCHEME,
    AuditLogError,
    AuditRecord,
    InvalidLogUri,
    PredictionLog,
    open_prediction_log,
)
from chalicelib.core.aws_clients import LazyClient
from chalicelib.core.settings import Settings

MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 4_000_000
MAX_RECORD_BYTES = 1_024_000
QUEUE_CAPACITY = 50_000  # records (~2 KB each: ~100 MB); past it an append sends synchronously
LINGER_S = 0.5  # the server's sender waits this long for a fuller batch (Firehose buffers for minutes anyway)
MAX_ATTEMPTS = 5
BASE_DELAY_S = 0.1
MAX_DELAY_S = 2.0
EXIT_TIMEOUT_S = 5.0  # gunicorn's graceful_timeout (30 s by default) leaves room for this
# Whole-call errors worth retrying: the operation's modelled ServiceUnavailableException ("Back off and retry the
# operation") and the generic throttling / internal codes every AWS JSON service may return. Anything else
# (ResourceNotFound, InvalidArgument, InvalidKMSResource, AccessDenied) will not heal by itself.
RETRYABLE_CALL_ERRORS = frozenset(
    {"ServiceUnavailableException", "ThrottlingException", "InternalFailure", "InternalServerError", "RequestTimeout"}
)

SendMode = Literal["background", "deferred", "inline"]
log = logging.getLogger("readmit.prediction_stream")


class StreamSendFailed(AuditLogError):
    """Records could not be sent to Firehose; they are still queued."""


class WriteOnlyLog(AuditLogError):
    """A Firehose stream cannot be read back: read its S3 destination (s3://bucket/predictions)."""


class _Unsent(Exception):
    def __init__(self, records: list[bytes], reason: str) -> None:
        super().__init__(reason)
        self.records, self.reason = records, reason


def encode(record: AuditRecord) -> bytes:
    """One Firehose record: the JSON line with its newline, so the delivered objects are JSON Lines (Firehose
    concatenates records as they are: "use delimiters in the data, such as a newline")."""
    data = (record.model_dump_json() + "\n").encode()
    if len(data) > MAX_RECORD_BYTES:
        raise AuditLogError(f"an audit record of {len(data)} bytes exceeds Firehose's {MAX_RECORD_BYTES}-byte limit")
    return data


class FirehosePredictionLog:
    """``append`` queues; ``flush`` sends what is queued in PutRecordBatch calls. Which thread flushes depends on
    where it runs (``mode``): ``deferred`` on Lambda (the post-invoke hook), ``background`` in a server, ``inline``
    on Lambda when nobody started the hook (every append sends before returning: correct, slow)."""

    client = LazyClient("firehose")

    def __init__(
        self,
        stream: str,
        client: Any = None,
        *,
        mode: SendMode | None = None,
        hooks: post_invoke_module.PostInvoke | None = None,
        capacity: int = QUEUE_CAPACITY,
        linger_s: float = LINGER_S,
        max_attempts: int = MAX_ATTEMPTS,
        base_delay_s: float = BASE_DELAY_S,
        max_delay_s: float = MAX_DELAY_S,
        exit_timeout_s: float = EXIT_TIMEOUT_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.stream = stream
        self._client = client
        self.capacity = capacity
        self.linger_s = linger_s
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.exit_timeout_s = exit_timeout_s
        self._sleep = sleep
        self._lock = threading.Lock()  # the queue
        self._wake = threading.Condition(self._lock)
        self._send_lock = threading.Lock()  # one sender at a time, so batches leave in queue order
        self._queue: deque[bytes] = deque()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._closing = False
        self._exit_hook = False
        self.calls = 0  # PutRecordBatch calls made (for tests and the benchmark)
        self.failures = 0  # flushes that left records queued
        hooks = hooks or post_invoke_module.default()
        self.mode: SendMode = mode or _mode_for(hooks)
        if self.mode == "deferred":
            hooks.register(self.flush_quietly)

    @property
    def uri(self) -> str:
        return f"{FIREHOSE_SCHEME}{self.stream}"

    def __len__(self) -> int:
        """Records queued and not yet acknowledged by Firehose."""
        with self._lock:
            return len(self._queue)

    # -- writing ----------------------------------------------------------------------------------------------
    def append(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        lines = [encode(r) for r in records]  # all or nothing: an oversized record queues none of the request's
        with self._lock:
            self._queue.extend(lines)
            full = len(self._queue) >= self.capacity
            if self.mode == "background":
                self._ensure_sender()
                self._wake.notify()
        if self.mode == "inline" or full:
            if full:
                log.warning("prediction stream queue full (%d records): sending synchronously", self.capacity)
            self.flush(raise_errors=True)

    def read(self, since: datetime | None = None, until: datetime | None = None) -> Iterator[AuditRecord]:
        raise WriteOnlyLog(f"{self.uri} is write-only: read the S3 prefix the stream delivers to")

    def flush_quietly(self, deadline: float | None = None) -> None:
        """The post-invoke hook's flush: failures are logged and the records stay queued."""
        self.flush(deadline)

    def flush(self, deadline: float | None = None, raise_errors: bool = False) -> int:
        """Send everything queued (by ``deadline``, epoch seconds, if given); the number of records sent.
        On failure the unsent records go back to the front of the queue."""
        wait = -1 if deadline is None else max(0.0, deadline - time.time())
        if not self._send_lock.acquire(timeout=wait):
            if raise_errors:
                raise StreamSendFailed("another flush is still sending")
            return 0
        try:
            sent = 0
            while True:
                batch = self._take_batch()
                if not batch:
                    return sent
                try:
                    self._send(batch, deadline)
                except _Unsent as exc:
                    self._requeue(exc.records)
                    self.failures += 1
                    log.error(
                        "Firehose %s: %d prediction records not sent (%s); kept for the next flush",
                        self.stream,
                        len(exc.records),
                        exc.reason,
                    )
                    if raise_errors:
                        raise StreamSendFailed(f"{len(exc.records)} records not sent: {exc.reason}") from None
                    return sent
                sent += len(batch)
        finally:
            self._send_lock.release()

    def close(self, timeout: float | None = None) -> None:
        """Stop the sender after sending what is queued (at most ``timeout`` seconds); what is left is reported."""
        timeout = self.exit_timeout_s if timeout is None else timeout
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        self.flush(time.time() + timeout)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(0.1, min(1.0, timeout)))
        left = len(self)
        if left:
            log.error("Firehose %s: %d prediction records still unsent at exit", self.stream, left)

    # -- internals --------------------------------------------------------------------------------------------
    def _take_batch(self) -> list[bytes]:
        batch: list[bytes] = []
        size = 0
        with self._lock:
            while self._queue and len(batch) < MAX_BATCH_RECORDS and size + len(self._queue[0]) <= MAX_BATCH_BYTES:
                line = self._queue.popleft()
                batch.append(line)
                size += len(line)
        return batch

    def _requeue(self, records: list[bytes]) -> None:
        with self._lock:
            self._queue.extendleft(reversed(records))

    def _send(self, records: list[bytes], deadline: float | None) -> None:
        """One batch, resending only the entries that failed, until all are in or the attempts (or time) run out."""
        from botocore.exceptions import BotoCoreError, ClientError

        pending = records
        reason = ""
        for attempt in range(self.max_attempts):
            try:
                self.calls += 1
                response = self.client.put_record_batch(
                    DeliveryStreamName=self.stream, Records=[{"Data": data} for data in pending]
                )
            except ClientError as exc:
                reason = str(exc.response.get("Error", {}).get("Code") or "ClientError")
                if reason not in RETRYABLE_CALL_ERRORS:
                    raise _Unsent(pending, reason) from None
                failed = pending
            except BotoCoreError as exc:  # connection or read timeouts: the call may or may not have landed
                reason, failed = type(exc).__name__, pending
            else:
                results = response.get("RequestResponses") or []
                if len(results) != len(pending):  # documented to match; if not, resend all (duplicates, not loss)
                    reason, failed = "RequestResponses does not match Records", pending
                else:
                    failed = [data for data, result in zip(pending, results, strict=True) if result.get("ErrorCode")]
                    if failed:
                        reason = next(str(r["ErrorCode"]) for r in results if r.get("ErrorCode"))
                if not failed:
                    return
            pending = failed
            if attempt + 1 == self.max_attempts:
                break
            delay = min(self.max_delay_s, self.base_delay_s * 2**attempt) * random.uniform(0.5, 1.0)
            if deadline is not None and time.time() + delay > deadline:
                break
            self._sleep(delay)
        raise _Unsent(pending, reason)

    def _ensure_sender(self) -> None:
        """Start the background sender (call with the queue lock held); again in a forked child."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=f"firehose-{self.stream}", daemon=True)
        self._thread.start()
        if not self._exit_hook:
            atexit.register(self.close)
            self._exit_hook = True

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if self._closing:
                    return  # close() sends the rest
                end = time.monotonic() + self.linger_s
                while len(self._queue) < MAX_BATCH_RECORDS and not self._closing:
                    remaining = end - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wake.wait(remaining)
            failures = self.failures
            self.flush()
            if self.failures != failures:
                self._sleep(self.max_delay_s)  # Firehose is failing: do not spin


def open_api_prediction_log(uri: str | None = None, s3_client: Any = None) -> PredictionLog:
    """The API's log: ``firehose://STREAM_NAME`` (from $READMIT_PREDICTION_LOG when ``uri`` is None) is this
    module's stream, anything else what audit.open_prediction_log opens. Kept apart from that function so the
    batch scorer and the drift monitor, which open logs too, cannot reach PutRecordBatch."""
    text = uri or Settings.from_env().prediction_log or ""
    if text.startswith(FIREHOSE_SCHEME):
        stream = text[len(FIREHOSE_SCHEME) :].strip("/")
        if not stream or "/" in stream:
            raise InvalidLogUri(f"expected firehose://STREAM_NAME, got {text!r}")
        return FirehosePredictionLog(stream)
    return open_prediction_log(uri, s3_client)


_warned_inline = False


def _mode_for(hooks: post_invoke_module.PostInvoke) -> SendMode:
    """deferred when the post-invoke hook is running (on Lambda), inline on Lambda without it, else background."""
    global _warned_inline
    if hooks.mode in ("extension", "sync"):
        return "deferred"
    if os.environ.get(post_invoke_module.ENV_RUNTIME_API):
        if not _warned_inline:
            _warned_inline = True
            log.warning("post_invoke.start() was not called: prediction records are sent inside each request")
        return "inline"
    return "background"
