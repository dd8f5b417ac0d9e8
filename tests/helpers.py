"""Helpers several test files share: a Lambda context, the events/ fixtures, a function's handler module, moto S3
with buckets, threads started together, and the commands a make target would run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"


@dataclass(frozen=True)
class FakeContext:
    """The LambdaContext fields Powertools' Logger (inject_lambda_context) and Metrics read."""

    function_name: str
    memory_limit_in_mb: int = 1024
    aws_request_id: str = "fixture"
    remaining_ms: int = 600_000

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def load_event(name: str) -> dict[str, Any]:
    """An event fixture of events/, by file name."""
    return json.loads((EVENTS / name).read_text())


def load_function(name: str) -> ModuleType:
    """functions/<name>/app.py, freshly imported (every function's module is called app)."""
    spec = importlib.util.spec_from_file_location(f"fn_{name}", ROOT / "functions" / name / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def moto_s3(*buckets: str) -> Iterator[Any]:
    """An S3 client inside moto's mock, with these buckets created (empty)."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3")
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield client


def errors_in_threads(work: Callable[[int], None], threads: int) -> list[BaseException]:
    """Run ``work(0)`` … ``work(threads - 1)`` in as many threads, released together by a barrier; what they raised
    (a thread swallows its exceptions otherwise)."""
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            start.wait()
            work(t)
        except BaseException as exc:
            errors.append(exc)

    started = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return errors


def make_dry_run(*targets: str, **variables: str) -> list[str]:
    """The commands `make -n` would run (forced with -B), one per line, continuation lines joined."""
    done = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", *targets, *(f"{k}={v}" for k, v in variables.items())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line for line in done.stdout.replace("\\\n", " ").splitlines() if line.strip()]
