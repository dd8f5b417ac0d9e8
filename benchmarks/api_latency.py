"""Warm in-process latency of the API handler for an API Gateway proxy event, beside raw XGBoost latency;
cold start in a new process; batch-route throughput. Prints the figures.

    .venv/bin/python benchmarks/api_latency.py --model DIR   (default: the local registry's champion)
    make lambda-size && .venv/bin/python benchmarks/api_latency.py --package build/lambda --python python3.12
        (cold start from the Lambda package with the runtime's Python, as Lambda starts it: no pandas, no sklearn)

Targets (issue #3): /predict with factors p50 ≤ 1 ms, p99 ≤ 3 ms over ≥ 2,000 calls; cold start ≤ 0.8 s;
batch ≥ 5,000 encounters/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EVENT = ROOT / "events" / "api_predict.json"

COLD = """
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import app
class C: aws_request_id = "cold"; function_name = "readmit-api"; memory_limit_in_mb = 1024
C.invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:readmit-api"
event = json.load(open({event!r}))
response = app.app(event, C())
assert response["statusCode"] == 200, response
cold = time.perf_counter() - t0
print(json.dumps({{"cold_s": cold, "pandas": "pandas" in sys.modules, "sklearn": "sklearn" in sys.modules}}))
"""


def percentiles(samples: list[float]) -> str:
    a = np.array(samples) * 1000
    return f"p50 {np.percentile(a, 50):.3f} ms  p99 {np.percentile(a, 99):.3f} ms  mean {a.mean():.3f} ms"


def timed(call: Callable[[], object], calls: int) -> list[float]:
    """Wall seconds of each of ``calls`` calls."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="bundle folder (default: local champion)")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--package", help="cold start from this build folder (make lambda-size) instead of the repo")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the cold start (the runtime's)")
    parser.add_argument(
        "--data", help="UCI file for the real-encounter batch (default: wherever `readmit data` finds it)"
    )
    parser.add_argument("--batches", type=int, default=20, help="timed batch requests per batch kind")
    args = parser.parse_args()
    home = tempfile.mkdtemp()
    os.environ.update(
        {
            "READMIT_HOME": home,
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
    )
    from chalicelib.loader import bundle_path

    model_dir = str(bundle_path(args.model or os.environ.get("READMIT_REGISTRY") or ROOT / ".readmit" / "registry"))
    os.environ["READMIT_MODEL"] = model_dir

    print(machine_speed())
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONWARNINGS": "ignore"}
    code_root = str(Path(args.package).resolve()) if args.package else str(ROOT)
    cold = [
        json.loads(
            subprocess.run(
                [args.python, "-c", COLD.format(root=code_root, event=str(EVENT))],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
        )
        for _ in range(3)
    ]
    print(
        f"cold start from {code_root} (new process: import app, load champion, first /predict): "
        f"{', '.join(format(c['cold_s'], '.2f') for c in cold)} s; pandas imported: {cold[0]['pandas']}, "
        f"scikit-learn imported: {cold[0]['sklearn']}"
    )

    sys.path.insert(0, str(ROOT))
    import app
    from chalicelib.bundle import ModelBundle

    class Context:
        aws_request_id = "bench"
        function_name = "readmit-api"
        memory_limit_in_mb = 1024
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:readmit-api"

    event = json.loads(EVENT.read_text())
    for _ in range(200):
        app.app(event, Context())
    samples = timed(lambda: app.app(event, Context()), args.calls)
    print(f"/predict with factors, warm, {args.calls} calls through app.app(event): {percentiles(samples)}")

    no_explain = {
        **event,
        "queryStringParameters": {"explain": "false"},
        "multiValueQueryStringParameters": {"explain": ["false"]},
    }
    samples = timed(lambda: app.app(no_explain, Context()), args.calls)
    print(f"/predict?explain=false, warm: {percentiles(samples)}")

    # As deployed: each request's EMF metrics line goes to stdout, which Lambda's runtime (awslambdaric's
    # Unbuffered) flushes on every write; here it goes to /dev/null the same way. EMF off and on alternate in
    # blocks of 100 calls so the machine's drift falls on both.
    emf: dict[bool, list[float]] = {False: [], True: []}
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(LambdaStdout(devnull)):
        for block in range(2 * max(1, args.calls // 100)):
            on = block % 2 == 1
            os.environ["POWERTOOLS_METRICS_DISABLED"] = "false" if on else "true"
            emf[on] += timed(lambda: app.app(event, Context()), 100)
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    print(f"/predict with factors and EMF metrics on, as on Lambda: {percentiles(emf[True])}")
    cost = (np.percentile(emf[True], 50) - np.percentile(emf[False], 50)) * 1000
    print(f"EMF metrics cost per /predict (p50 on - p50 off, interleaved, {len(emf[True])} calls each): {cost:.3f} ms")

    model = ModelBundle.load(model_dir)
    x = np.zeros((1, len(model.meta["feature_names"])), dtype=np.float32)
    raw = timed(lambda: model.booster.inplace_predict(x), args.calls)
    shap = timed(lambda: model.contributions(x), args.calls)
    print(f"raw XGBoost inplace_predict, 1 row: {percentiles(raw)}")
    print(f"raw XGBoost SHAP contributions, 1 row: {percentiles(shap)}")

    def batch_event(encounters: list[dict[str, object]]) -> dict[str, object]:
        batch = {**event, "path": "/predict/batch", "resource": "/predict/batch"}
        batch["body"] = json.dumps({"encounters": encounters})
        batch["requestContext"] = {**event["requestContext"], "resourcePath": "/predict/batch"}
        return batch

    body = json.loads(event["body"])
    batches = {
        "500 real encounters (varied, as a hospital sends them)": batch_event(real_encounters(args.data, 500)),
        "500 copies of the fixture encounter": batch_event([{**body, "encounter_id": 10_000 + i} for i in range(500)]),
    }
    from chalicelib.api_models import parse_encounter_body
    from chalicelib.features import encode
    from chalicelib.schema import columns_from_records

    records = [
        parse_encounter_body(e, batch_item=True) for e in json.loads(next(iter(batches.values()))["body"])["encounters"]
    ]
    X500 = encode(columns_from_records(records), np.zeros((500, 5), dtype=np.float32))
    shap500 = timed(lambda: model.contributions(X500), args.batches)
    print(f"raw XGBoost SHAP contributions, the 500 real encounters, all cores: best {min(shap500) * 1000:.0f} ms")
    for name, batch in batches.items():
        times = []
        for _ in range(args.batches):
            t = time.perf_counter()
            response = app.app(batch, Context())
            times.append(time.perf_counter() - t)
        assert json.loads(response["body"])["scored"] == 500, json.loads(response["body"])["invalid"]
        print(
            f"/predict/batch, {name}, with factors: best {min(times) * 1000:.0f} ms → "
            f"{500 / min(times):,.0f} encounters/s (median {500 / np.median(times):,.0f}/s over {args.batches})"
        )


class LambdaStdout:
    """awslambdaric's Unbuffered stdout: every write is flushed."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        self.stream.flush()
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def real_encounters(data: str | None, n: int) -> list[dict[str, object]]:
    """n in-cohort rows of the UCI file as the API receives them (its own strings; '?' = missing)."""
    import csv

    from chalicelib.dataset import locate, open_text
    from chalicelib.schema import EXCLUDED_DISPOSITIONS

    with open_text(locate(data, download=False)) as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["discharge_disposition_id"]) not in EXCLUDED_DISPOSITIONS]
    picked = np.random.default_rng(0).choice(len(rows), n, replace=False)
    return [rows[i] for i in picked]


def machine_speed() -> str:
    """A fixed pure-Python loop, so figures from runs minutes apart can be compared (this VM's speed drifts)."""
    best = min(timed(lambda: sum(range(1_000_000)), 5))
    return f"reference loop (sum(range(10**6))): {best * 1000:.1f} ms"


if __name__ == "__main__":
    main()
