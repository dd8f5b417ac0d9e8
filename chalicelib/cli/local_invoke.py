"""A Docker-free `sam local invoke`: run a template.yaml function's handler in this process.

The handler module is imported from the folders its deployment package is built from (as Lambda would: they go
first on sys.path), freshly for each invocation, with the function's environment from the template. Variables
that name stack resources (buckets, tables, secrets) cannot be resolved here: they stay unset, so the code's
local defaults apply (the local registry, prediction log and history store under $READMIT_HOME), unless the
caller's environment or ``--env`` sets them, e.g. to moto or real AWS resources.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.cli.sam_template import FunctionSpec
from chalicelib.core import settings

# Where local state lives is the caller's business: the template's /tmp/readmit is Lambda's scratch folder.
LOCAL_ONLY = (settings.ENV_HOME,)


class HandlerNotFound(ImportError):
    """The template's Handler does not name an importable callable."""


@dataclass
class LambdaContext:
    """The context object the Lambda Python runtime passes to a handler."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    function_version: str = "$LATEST"
    identity: Any = None
    client_context: Any = None
    deadline: float = field(default=0.0, repr=False)

    @classmethod
    def for_function(cls, spec: FunctionSpec, request_id: str | None = None) -> LambdaContext:
        region = os.environ.get("AWS_REGION", "us-east-1")
        return cls(
            function_name=spec.logical_id,
            memory_limit_in_mb=spec.memory,
            invoked_function_arn=f"arn:aws:lambda:{region}:123456789012:function:{spec.logical_id}",
            aws_request_id=request_id or str(uuid.uuid4()),
            log_group_name=f"/aws/lambda/{spec.logical_id}",
            log_stream_name=time.strftime("%Y/%m/%d/[$LATEST]local"),
            deadline=time.monotonic() + spec.timeout,
        )

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def environment(
    spec: FunctionSpec, overrides: Mapping[str, str] | None = None, caller: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The variables the invocation sets: the template's resolved ones, what the Lambda runtime sets, then
    ``overrides``. Unresolved ones keep the caller's value if it has one, else stay unset."""
    env = {k: v for k, v in spec.environment.items() if k not in LOCAL_ONLY}
    env |= {
        "AWS_LAMBDA_FUNCTION_NAME": spec.logical_id,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_REGION": caller.get("AWS_REGION") or caller.get("AWS_DEFAULT_REGION") or "us-east-1",
        "AWS_SAM_LOCAL": "true",  # what `sam local invoke` sets; Powertools' tracer then stays off
        "_HANDLER": spec.handler,
    }
    return env | dict(overrides or {})


@contextlib.contextmanager
def patched_environ(changes: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(changes)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def on_path(folders: list[Path]) -> Iterator[None]:
    saved = list(sys.path)
    sys.path[:0] = [str(f) for f in folders]
    try:
        yield
    finally:
        sys.path[:] = saved


def module_file(spec: FunctionSpec) -> Path | None:
    """The file the handler's module is imported from (the first on the search path)."""
    relative = Path(*spec.module.split("."))
    for folder in spec.search_path:
        for candidate in (folder / f"{relative}.py", folder / relative / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def load_handler(spec: FunctionSpec) -> Callable[..., Any]:
    """The handler, from a fresh import of its module (two functions may both have an ``app`` module)."""
    with on_path(spec.search_path):
        file = module_file(spec)
        if file is None or "." in spec.module:  # a package path: import it the ordinary way
            try:
                module = importlib.import_module(spec.module)
            except ImportError as exc:
                raise HandlerNotFound(f"{spec.logical_id}: cannot import {spec.module}: {exc}") from exc
        else:
            loader_spec = importlib.util.spec_from_file_location(spec.module, file)
            assert loader_spec and loader_spec.loader
            module = importlib.util.module_from_spec(loader_spec)
            previous = sys.modules.get(spec.module)
            sys.modules[spec.module] = module  # what the module's own imports and pydantic expect
            try:
                loader_spec.loader.exec_module(module)
            finally:
                if previous is None:
                    sys.modules.pop(spec.module, None)
                else:
                    sys.modules[spec.module] = previous
    handler = getattr(module, spec.attribute, None)
    if not callable(handler):
        raise HandlerNotFound(f"{spec.logical_id}: {spec.handler} is not a callable in {file or spec.module}")
    return handler


@dataclass
class Invocation:
    response: Any
    request_id: str
    duration_ms: float


def invoke(
    spec: FunctionSpec, event: Any, overrides: Mapping[str, str] | None = None, request_id: str | None = None
) -> Invocation:
    """Run the function on ``event`` as Lambda would; exceptions propagate (the CLI formats them)."""
    with patched_environ(environment(spec, overrides)), on_path(spec.search_path):
        handler = load_handler(spec)
        context = LambdaContext.for_function(spec, request_id)
        started = time.perf_counter()
        response = handler(event, context)
    return Invocation(response, context.aws_request_id, (time.perf_counter() - started) * 1000)


def error_payload(exc: BaseException, request_id: str) -> dict[str, Any]:
    """What the Lambda Python runtime returns for an unhandled exception."""
    here = {__file__, str(Path(__file__).with_name("main.py"))}  # the invoker's frames are not the function's
    frames = traceback.format_list([f for f in traceback.extract_tb(exc.__traceback__) if f.filename not in here])
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": request_id,
        "stackTrace": frames,
    }


def unset_message(spec: FunctionSpec, unset: list[str]) -> str:
    """Which of the function's variables are unset here (they name stack resources the template cannot resolve
    locally), and that the function reads them: code with a local default falls back to it, the rest fails."""
    names = ", ".join(f"{k} ({spec.unresolved[k]})" for k in unset)
    return (
        f"readmit invoke: {spec.logical_id} reads {len(unset)} variable(s) that name stack resources and are unset "
        f"here: {names}. Where its code has a local default ($READMIT_HOME) that applies; otherwise the function "
        "needs them: pass --env NAME=VALUE for each (e.g. a moto or real AWS resource)."
    )
