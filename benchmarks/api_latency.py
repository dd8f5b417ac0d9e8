"""Warm in-process latency of the API handler for an API Gateway proxy event, beside raw XGBoost latency;
cold start in a new process; batch-route throughput. Prints the figures.

    .venv/bin/python benchmarks/api_latency.py --model DIR   (default: the local registry's champion)
    make lambda-size && .venv/bin/python benchmarks/api_latency.py --package build/lambda --python python3.12
        (cold start from the Lambda package with the runtime's Python, as Lambda starts it: no pandas, no sklearn)

Targets (issue #3): /predict with factors p50 ≤ 1 ms, p99 ≤ 3 ms over ≥ 2,000 calls; cold start ≤ 0.8 s;
batch ≥ 5,000 encounters/s.

    .venv/bin/python benchmarks/api_latency.py --model DIR --log-compare [--put-ms 20]
        (issue #16: /predict with each prediction log, nothing else: the local folder; the per-request S3 object,
        against a stub S3 client whose put_object sleeps --put-ms; the Firehose stream, against a stub client
        whose PutRecordBatch sleeps --put-ms, flushed after each call as the Lambda extension does after the
        response. The stubs make the network's cost visible without a network: the figure is an assumption.)

    .venv/bin/python benchmarks/api_latency.py --model DIR --shadow-compare [--challenger DIR]
        (issue #15: warm /predict with factors, interleaved blocks of 100: no shadow; a shadow configured but no
        shadow alias; a challenger scored after each response as the Lambda extension does (its flush timed apart:
        billed, not waited for); a challenger scored by the server's daemon thread, concurrently. Prints p50/p99
        and their difference from no shadow, and the off-path work per request. The challenger defaults to the
        registry's shadow alias, else its newest version that is not the champion.)
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


class Context:
    """The Lambda context fields the app reads."""

    aws_request_id = "bench"
    function_name = "readmit-api"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:readmit-api"


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
    parser.add_argument("--log-compare", action="store_true", help="only /predict under each prediction log")
    parser.add_argument("--auth-compare", action="store_true", help="only /predict under each authenticator")
    parser.add_argument("--put-ms", type=float, default=20.0, help="stub S3 PUT / Firehose PutRecordBatch time")
    parser.add_argument("--shadow-compare", action="store_true", help="only /predict without and with a shadow")
    parser.add_argument("--challenger", help="the shadow bundle for --shadow-compare (default: see above)")
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
    from chalicelib.registry.loader import bundle_path

    registry = os.environ.get("READMIT_REGISTRY") or str(ROOT / ".readmit" / "registry")
    model_dir = str(bundle_path(args.model or registry))
    os.environ["READMIT_MODEL"] = model_dir

    print(machine_speed())
    if args.log_compare:
        compare_logs(args.calls, args.put_ms)
        return
    if args.auth_compare:
        compare_auth(args.calls)
        return
    if args.shadow_compare:
        compare_shadow(args.calls, args.challenger or challenger_dir(registry, model_dir))
        return
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
    from chalicelib.model.bundle import ModelBundle

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
    from chalicelib.data.schema import columns_from_records
    from chalicelib.features.encoding import encode
    from chalicelib.serving.api_models import parse_encounter_body

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


class SleepingS3:
    """put_object as the per-request S3 log calls it, taking a fixed time (a same-Region PUT)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def put_object(self, **_: Any) -> dict[str, Any]:
        time.sleep(self.seconds)
        return {"ETag": '"stub"'}


class SleepingFirehose:
    """PutRecordBatch taking a fixed time, answering with the documented shape (every record accepted)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def put_record_batch(self, DeliveryStreamName: str, Records: list[dict[str, bytes]]) -> dict[str, Any]:
        time.sleep(self.seconds)
        return {"FailedPutCount": 0, "RequestResponses": [{"RecordId": str(i)} for i in range(len(Records))]}


def compare_logs(calls: int, put_ms: float) -> None:
    """/predict (warm, with factors) under each prediction log; for Firehose, the flush the Lambda extension runs
    after the response is timed apart: it is billed duration, not latency."""
    sys.path.insert(0, str(ROOT))
    import app
    from chalicelib.core.audit import LocalPredictionLog, S3PredictionLog
    from chalicelib.core.post_invoke import PostInvoke
    from chalicelib.serving.prediction_stream import FirehosePredictionLog

    event = json.loads(EVENT.read_text())
    predictor = app.api().predictor
    firehose = FirehosePredictionLog("bench", SleepingFirehose(put_ms / 1000), mode="deferred", hooks=PostInvoke())
    logs = {
        "local folder log": LocalPredictionLog(Path(tempfile.mkdtemp())),
        f"S3 object per request (stub PUT {put_ms:g} ms)": S3PredictionLog(
            "bench", "predictions", SleepingS3(put_ms / 1000)
        ),
        f"Firehose stream (stub PutRecordBatch {put_ms:g} ms)": firehose,
    }
    for name, log in logs.items():
        predictor.log = log
        for _ in range(50):
            app.app(event, Context())
            firehose.flush()
        request: list[float] = []
        after: list[float] = []
        for _ in range(calls):
            started = time.perf_counter()
            response = app.app(event, Context())
            request.append(time.perf_counter() - started)
            started = time.perf_counter()
            if log is firehose:
                firehose.flush()  # what the extension does once the response has gone
            after.append(time.perf_counter() - started)
        assert response["statusCode"] == 200, response
        print(f"/predict, {calls} calls, {name}: {percentiles(request)}")
        if log is firehose:
            print(f"    flush after the response (billed, not waited for): {percentiles(after)}")


def compare_auth(calls: int) -> None:
    """/predict (warm, with factors) through app.app(event) under each authenticator, interleaved in blocks of 100
    so the machine's drift falls on all: none; API Gateway's claims (what the function does on AWS: read the claims,
    hash the subject); a dev HS256 token and a Cognito-style RS256 token verified in the process (a container)."""
    sys.path.insert(0, str(ROOT))
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    import app
    from chalicelib.serving import auth

    event = json.loads(EVENT.read_text())
    claims = event["requestContext"]["authorizer"]["claims"]
    bare = {**event, "requestContext": {k: v for k, v in event["requestContext"].items() if k != "authorizer"}}
    dev = auth.DevAuth("benchmark-secret-of-at-least-thirty-two-characters")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Bench"
    rs256 = jwt.encode(
        {
            **{k: claims[k] for k in ("sub", "client_id", "token_use", "scope")},
            "iss": issuer,
            "exp": int(time.time()) + 3600,
        },
        key,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    jwks = auth.JwksAuth(issuer, frozenset({claims["client_id"]}), jwks_url="http://127.0.0.1:9/unused")
    jwks.key_for = lambda _token: key.public_key()  # the key set as PyJWKClient caches it after the first fetch

    def with_token(token: str) -> dict[str, Any]:
        return {**bare, "headers": {**bare["headers"], "Authorization": f"Bearer {token}"}}

    cases = {
        "no authentication (local default)": (auth.Authenticator(), bare),
        "API Gateway's verified claims (on AWS)": (auth.ApiGatewayAuth(), event),
        "dev HS256 token verified in process": (dev, with_token(dev.issue("bench"))),
        "Cognito RS256 token verified in process (jwks, key cached)": (jwks, with_token(rs256)),
    }
    api = app.api()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for name, (checker, ev) in cases.items():  # warm each path and check it answers 200
        api.auth = checker
        assert app.app(ev, Context())["statusCode"] == 200, name
    for _ in range(max(1, calls // 100)):
        for name, (checker, ev) in cases.items():
            api.auth = checker
            samples[name] += timed(lambda ev=ev: app.app(ev, Context()), 100)
    base = np.percentile(samples[next(iter(cases))], 50)
    for name, times in samples.items():
        extra = (np.percentile(times, 50) - base) * 1000
        print(f"/predict, {len(times)} calls, {name}: {percentiles(times)}; p50 vs none {extra:+.3f} ms")


def challenger_dir(registry_uri: str, champion_dir: str) -> str:
    """The registry's shadow model, else its newest version that is not the served one, downloaded."""
    from chalicelib.registry.registry import SHADOW, Registry

    registry = Registry.open(registry_uri, validate=False)
    served = Path(champion_dir).name
    version = registry.get_alias(SHADOW)
    if version is None or version == served:
        others = [v for v in registry.list_versions() if v != served]
        if not others:
            sys.exit("--shadow-compare needs a second model: --challenger DIR, or two versions in the registry")
        version = others[-1]
    return str(registry.download(version, Path(tempfile.mkdtemp())))


def compare_shadow(calls: int, challenger: str) -> None:
    """/predict (warm, with factors) through app.app(event), interleaved in blocks of 100 so the machine's drift
    falls on every case: no shadow; a shadow scorer with no shadow alias (nothing loaded); Lambda's way (the
    challenger scores in the post-invoke flush, run here after each response and timed apart); a server's way (the
    daemon thread scores while the next requests are served: two cores, one GIL)."""
    sys.path.insert(0, str(ROOT))
    import app
    from chalicelib.core.post_invoke import PostInvoke
    from chalicelib.monitoring.shadow import ShadowScorer
    from chalicelib.registry.provider import ModelProvider

    event = json.loads(EVENT.read_text())
    predictor = app.api().predictor
    log = predictor.log

    def scorer(mode: str, loaded: bool) -> ShadowScorer:
        provider = ModelProvider(model_uri=challenger, check_interval=3600)
        if loaded:
            provider.refresh_now()  # validated in a child process, then loaded
        made = ShadowScorer(provider, log, mode=mode, hooks=PostInvoke(), check_interval=3600)  # type: ignore[arg-type]
        made._last_check = made.clock()  # no alias checks during the run: the case is fixed
        return made

    deferred, background = scorer("deferred", True), scorer("background", True)
    cases: dict[str, ShadowScorer | None] = {
        "no shadow": None,
        "shadow configured, no shadow alias": scorer("deferred", False),
        "Lambda: challenger scored in the post-invoke flush": deferred,
        "server: challenger scored by the daemon thread": background,
    }
    print(f"champion {predictor.model().version}, challenger {deferred.version}")
    samples: dict[str, list[float]] = {name: [] for name in cases}
    after: list[float] = []
    for name, shadow in cases.items():  # warm each path
        predictor.shadow = shadow
        for _ in range(50):
            assert app.app(event, Context())["statusCode"] == 200, name
            if shadow is deferred:
                deferred.flush()
    for _ in range(max(1, calls // 100)):
        for name, shadow in cases.items():
            predictor.shadow = shadow
            for _ in range(100):
                started = time.perf_counter()
                app.app(event, Context())
                samples[name].append(time.perf_counter() - started)
                if shadow is deferred:
                    started = time.perf_counter()
                    deferred.flush()  # what the extension does once the response has gone
                    after.append(time.perf_counter() - started)
            while background.pending():  # the thread's backlog must not spill into the next case
                time.sleep(0.001)
    predictor.shadow = None
    base = samples["no shadow"]
    for name, times in samples.items():
        p50 = (np.percentile(times, 50) - np.percentile(base, 50)) * 1000
        p99 = (np.percentile(times, 99) - np.percentile(base, 99)) * 1000
        print(f"/predict, {len(times)} calls, {name}: {percentiles(times)}; vs no shadow p50 {p50:+.3f} ms, "
              f"p99 {p99:+.3f} ms")  # fmt: skip
    print(
        f"    off the request path, Lambda: the flush after each response (billed, not awaited): {percentiles(after)}"
    )
    stats = background.stats.as_dict()
    print(
        f"    off the request path, server: {stats['busy_ms_per_request']:.3f} ms of the daemon thread per request "
        f"(scored {stats['scored_requests']}, dropped {stats['dropped_requests']})"
    )
    background.close()


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

    from chalicelib.data.dataset import locate, open_text
    from chalicelib.data.schema import EXCLUDED_DISPOSITIONS

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
