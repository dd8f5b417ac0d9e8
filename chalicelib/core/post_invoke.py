"""Work that must finish after a Lambda response is sent but before the environment freezes (the Firehose
prediction log's flush), done by an internal Lambda extension.

Why an extension: once the handler returns, Lambda freezes the execution environment; a background thread that
"did not complete when the function ended" resumes only if the environment is reused ("Lambda execution
environment lifecycle", https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html), so records
it holds could wait for hours or die with the environment. An extension registered for INVOKE events keeps the
Invoke phase open until it asks for the next event again, while the runtime has already posted the response: "The
Invoke phase ends after the runtime and all extensions signal that they are done by sending a Next API request",
and Lambda reports the extra time as PostRuntimeExtensionsDuration (Extensions API,
https://docs.aws.amazon.com/lambda/latest/dg/runtimes-extensions-api.html). An *internal* extension is a thread of
the runtime process; it may not register for SHUTDOWN (same page, "Register").

The protocol (Extensions API version 2020-01-01, same page):
- ``POST http://$AWS_LAMBDA_RUNTIME_API/2020-01-01/extension/register`` with header ``Lambda-Extension-Name`` and
  body ``{"events": ["INVOKE"]}``; 200 carries the ``Lambda-Extension-Identifier`` header. It must happen during
  Init: once the runtime asks for its first invocation it is too late, so ``start()`` registers synchronously,
  at import time, and only then starts the thread.
- ``GET .../2020-01-01/extension/event/next`` with ``Lambda-Extension-Identifier``, without a timeout ("Do not set
  a timeout on the GET call"): it blocks until the next event, ``{"eventType": "INVOKE", "deadlineMs": ...}``.
- ``POST .../2020-01-01/extension/exit/error`` with ``Lambda-Extension-Function-Error-Type`` before giving up.

On each INVOKE the thread waits (until the invocation's deadline at most) for the handler's ``invocation_done()``,
runs the registered flushes, and asks for the next event. When no extension can run (registration refused, or the
API stops answering), ``invocation_done()`` runs the flushes itself before the response: slower, never lossy.
Outside Lambda (no $AWS_LAMBDA_RUNTIME_API) everything here is a no-op.

SnapStart (Python 3.12+): its documented limitations (provisioned concurrency, Amazon EFS, ephemeral storage over
512 MB; https://docs.aws.amazon.com/lambda/latest/dg/snapstart.html) do not exclude extensions, and registration
happens in Init, before the snapshot. A connection open at snapshot time is not guaranteed after restore (same
page, "Network connections"), so a failed ``event/next`` is retried on a new connection before falling back.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

ENV_RUNTIME_API = "AWS_LAMBDA_RUNTIME_API"
EXTENSION_NAME = "readmit-post-invoke"
API = "/2020-01-01/extension"
REGISTER_TIMEOUT_S = 2.0  # the Runtime API is local: a registration that takes longer is not going to work
MAX_WAIT_S = 30.0  # longest wait for invocation_done() when the event's deadline is missing (API timeout: 29 s)
DEADLINE_MARGIN_S = 0.25  # flushes stop this long before the invocation's deadline (a timeout resets the sandbox)
NEXT_ATTEMPTS = 3

Mode = Literal["off", "extension", "sync"]
Flush = Callable[[float | None], object]  # flush(deadline in epoch seconds, or None); must not raise

log = logging.getLogger("readmit.post_invoke")


class ExtensionError(Exception):
    """The Extensions API refused a call or could not be reached."""


class PostInvoke:
    """One process's post-response work: ``start()`` at import, ``register(flush)`` by whoever queues work,
    ``invocation_done()`` at the end of each handler call."""

    def __init__(
        self, runtime_api: str | None = None, name: str = EXTENSION_NAME, max_wait_s: float = MAX_WAIT_S
    ) -> None:
        self.runtime_api = runtime_api
        self.name = name
        self.max_wait_s = max_wait_s
        self.mode: Mode = "off"
        self.started = False
        self.identifier: str | None = None
        self.fallback_reason: str | None = None
        self.unsignalled = 0  # invocations whose handler never called invocation_done() (flushed at the deadline)
        self._flushes: list[Flush] = []
        self._cond = threading.Condition()
        self._done = 0  # invocations the handler has finished (its count, as of the extension's next event)
        self._handled = 0  # INVOKE events the extension has finished
        self._conn: http.client.HTTPConnection | None = None
        self._thread: threading.Thread | None = None

    # -- the function's side ----------------------------------------------------------------------------------
    def register(self, flush: Flush) -> None:
        """Run ``flush(deadline)`` after every invocation (in the extension, or inline in the fallback)."""
        if flush not in self._flushes:
            self._flushes.append(flush)

    def start(self, env: Mapping[str, str] = os.environ) -> Mode:
        """Register the extension (on Lambda, during Init) and start its thread; idempotent."""
        if self.started:
            return self.mode
        self.started = True
        self.runtime_api = self.runtime_api or env.get(ENV_RUNTIME_API)
        if not self.runtime_api:
            return self.mode  # not on Lambda: a server flushes on its own
        try:
            self.identifier = self._register()
        except (OSError, http.client.HTTPException, ExtensionError) as exc:
            self._fall_back(f"registration failed: {_reason(exc)}")
            return self.mode
        self.mode = "extension"
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self.mode

    def invocation_done(self) -> None:
        """The handler has queued everything for this invocation: the extension may flush (or, without one, flush
        now, before the response)."""
        if self.mode == "extension":
            with self._cond:
                self._done = self._handled + 1  # idempotent within an invocation, whichever side runs first
                self._cond.notify_all()
        elif self.mode == "sync":
            self.flush(None)

    def flush(self, deadline: float | None) -> None:
        for flush in list(self._flushes):
            try:
                flush(deadline)
            except Exception as exc:  # a flush reports its own failures; this thread must reach event/next
                log.error("post-invoke flush failed: %s", type(exc).__name__)

    # -- the extension's side ---------------------------------------------------------------------------------
    def _register(self) -> str:
        conn = http.client.HTTPConnection(self.runtime_api or "", timeout=REGISTER_TIMEOUT_S)
        try:
            conn.request(
                "POST",
                f"{API}/register",
                body=json.dumps({"events": ["INVOKE"]}),  # SHUTDOWN is for external extensions only
                headers={"Lambda-Extension-Name": self.name, "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            response.read()
            identifier = response.getheader("Lambda-Extension-Identifier")
        finally:
            conn.close()
        if response.status != 200:
            raise ExtensionError(f"register answered HTTP {response.status}")
        if not identifier:
            raise ExtensionError("register answered without a Lambda-Extension-Identifier header")
        return identifier

    def _next_event(self) -> dict[str, Any]:
        """The next event; on a broken connection (a SnapStart restore) retried on a new one."""
        error = "no attempt"
        for attempt in range(NEXT_ATTEMPTS):
            try:
                if self._conn is None:  # no timeout: the call blocks until the next event
                    self._conn = http.client.HTTPConnection(self.runtime_api or "", timeout=None)
                self._conn.request(
                    "GET", f"{API}/event/next", headers={"Lambda-Extension-Identifier": self.identifier or ""}
                )
                response = self._conn.getresponse()
                body = response.read()
                if response.status == 200:
                    event = json.loads(body)
                    if isinstance(event, dict):
                        return event
                    error = "event/next answered a non-object"
                else:
                    error = f"event/next answered HTTP {response.status}"
                    if response.status in (403, 500):  # documented: forbidden / container error, exit promptly
                        break
            except (OSError, http.client.HTTPException, ValueError) as exc:
                error = _reason(exc)
                self._drop_connection()
            time.sleep(0.05 * 2**attempt)
        raise ExtensionError(error)

    def _loop(self) -> None:
        while True:
            try:
                event = self._next_event()
            except ExtensionError as exc:
                self._exit_error()
                self._fall_back(f"the Extensions API stopped answering: {exc}")
                self.flush(None)
                return
            if event.get("eventType") != "INVOKE":
                continue
            try:
                deadline = self._deadline(event)
                self._await_handler(deadline)
                self.flush(deadline - DEADLINE_MARGIN_S)
            except Exception as exc:  # never leave the loop: Lambda would hold every invocation until its timeout
                log.error("post-invoke extension error: %s", type(exc).__name__)

    def _deadline(self, event: Mapping[str, Any]) -> float:
        """The invocation's deadline in epoch seconds, at most max_wait_s away. ``deadlineMs`` is epoch
        milliseconds; the guide's example (676051) reads like milliseconds remaining, so small values are taken
        that way."""
        now = time.time()
        latest = now + self.max_wait_s
        value = event.get("deadlineMs")
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            return latest
        deadline = value / 1000 if value > 1e11 else now + value / 1000
        return min(deadline, latest)

    def _await_handler(self, deadline: float) -> None:
        with self._cond:
            target = self._handled + 1
            signalled = self._cond.wait_for(lambda: self._done >= target, timeout=max(0.0, deadline - time.time()))
            self._handled = target
        if not signalled:
            self.unsignalled += 1
            if self.unsignalled == 1:
                log.warning("an invocation ended without invocation_done(); its records were flushed at the deadline")

    def _exit_error(self) -> None:
        try:
            conn = http.client.HTTPConnection(self.runtime_api or "", timeout=REGISTER_TIMEOUT_S)
            conn.request(
                "POST",
                f"{API}/exit/error",
                body=json.dumps({"errorMessage": "event/next failed", "errorType": "Extension.NextFailed"}),
                headers={
                    "Lambda-Extension-Identifier": self.identifier or "",
                    "Lambda-Extension-Function-Error-Type": "Extension.NextFailed",
                },
            )
            conn.getresponse().read()
            conn.close()
        except (OSError, http.client.HTTPException):
            pass  # the API is gone already; falling back is all that is left

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _fall_back(self, why: str) -> None:
        self.mode = "sync"
        self.fallback_reason = why
        log.warning("post-invoke extension unavailable (%s): flushing before each response instead", why)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_default = PostInvoke()


def default() -> PostInvoke:
    """The process's instance (the one app.py starts)."""
    return _default


def start() -> Mode:
    """Call once at import time of the Lambda handler module (during Init)."""
    return _default.start()


def invocation_done() -> None:
    """Call at the end of every handler invocation, after the prediction records are queued."""
    _default.invocation_done()
