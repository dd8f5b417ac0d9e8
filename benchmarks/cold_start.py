"""Cold start of the API function with and without Lambda SnapStart's hooks (chalicelib/serving/snapstart.py), each
figure measured in fresh processes. Prints the figures.

    .venv/bin/python benchmarks/cold_start.py --registry DIR    (default: $READMIT_REGISTRY, else .readmit/registry)
    make build-ApiFunction ARTIFACTS_DIR=$PWD/build/lambda && \\
        .venv/bin/python benchmarks/cold_start.py --package build/lambda --python python3.12
        (from the Lambda package with the runtime's Python: no pandas, no scikit-learn, precompiled bytecode)

(a) today's cold path: import app, build the API (champion loaded and validated) and answer the first /predict;
(b) the before-snapshot hook: what SnapStart moves out of the request path into the version's publication;
(c) in a process where (b) ran: the after-restore hook, then the first /predict — what a restored environment
    pays on top of the restore itself.
Each child runs with PYTHONDONTWRITEBYTECODE unset, after one discarded run, so modules are read from bytecode as
in the package (Lambda's code folder is read-only: the package ships its bytecode). The champion is read from a
local registry folder, so the check (c) makes after the restore is a file read here and one S3 HEAD on AWS.

What only AWS can measure: the restore itself (Lambda's "Restore Duration": resuming the microVM from the
snapshot, whose memory pages come from a tiered cache, fetched as they are first touched, so the first request also
pays page faults this process never sees), the S3 round trip of the champion check, and the runtime's own start.
On AWS, cold start = Restore Duration + Duration of the first invocation (REPORT lines;
https://docs.aws.amazon.com/lambda/latest/dg/snapstart-monitoring.html).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVENT = ROOT / "events" / "api_predict.json"

PRELUDE = """
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import app
imported = time.perf_counter()
class C: aws_request_id = "cold"; function_name = "readmit-api"; memory_limit_in_mb = 1769
C.invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:readmit-api"
event = json.load(open({event!r}))
def first_predict():
    started = time.perf_counter()
    response = app.app(event, C())
    assert response["statusCode"] == 200, response
    return time.perf_counter() - started, json.loads(response["body"])["model_version"]
"""

COLD = """
first, version = first_predict()
print(json.dumps({"import_s": imported - t0, "first_s": first, "total_s": time.perf_counter() - t0,
                  "version": version, "pandas": "pandas" in sys.modules, "sklearn": "sklearn" in sys.modules}))
"""

SNAPSTART = """
from chalicelib.serving import snapstart
hooks = snapstart.SnapStartHooks(app.api)  # what snapstart.register(app.api) hands the runtime
started = time.perf_counter(); hooks.before_snapshot(); hook = time.perf_counter() - started
started = time.perf_counter(); hooks.after_restore(); restore_hook = time.perf_counter() - started
first, version = first_predict()
second, _ = first_predict()
print(json.dumps({"import_s": imported - t0, "hook_s": hook, "after_restore_s": restore_hook, "first_s": first,
                  "second_s": second, "version": version}))
"""

# boto3's part of the first AWS call after a restore, without the call: a new session and an S3 client, with the
# service models the before-snapshot hook parsed, and without (no request is sent; fake credentials). Each child
# measures "not preloaded" second, in a process whose boto3 is already imported, as after a restore.
BOTO3 = """
import json, sys, time
sys.path.insert(0, {root!r})
from chalicelib.serving import snapstart
import boto3
preloaded = snapstart._preload_service_models({{"READMIT_REGISTRY": "s3://bucket/registry"}})
out = {{}}
for name, models in (("preloaded", preloaded), ("not_preloaded", None)):
    started = time.perf_counter()
    snapstart._new_boto3_session(models)
    boto3.client("s3")
    out[name] = time.perf_counter() - started
print(json.dumps(out))
"""


def child(python: str, code: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"median {statistics.median(ms):.0f} ms (min {min(ms):.0f}, max {max(ms):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", help="a local registry folder with a champion")
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per figure")
    parser.add_argument("--package", help="code from this build folder (make build-ApiFunction), not the repo")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the children (the runtime's)")
    args = parser.parse_args()
    registry = Path(args.registry or os.environ.get("READMIT_REGISTRY") or ROOT / ".readmit" / "registry").resolve()
    if not (registry / "aliases" / "champion.json").is_file():
        raise SystemExit(f"no champion in {registry}: run `readmit train --registry` or pass --registry")
    code_root = str(Path(args.package).resolve()) if args.package else str(ROOT)
    home = Path(tempfile.mkdtemp(prefix="cold-start-"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(
        {
            "READMIT_HOME": str(home),
            "READMIT_REGISTRY": str(registry),
            "READMIT_PREDICTION_LOG": str(home / "audit"),
            "READMIT_HISTORY": str(home / "history.sqlite3"),
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "PYTHONWARNINGS": "ignore",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "benchmark",
            "AWS_SECRET_ACCESS_KEY": "benchmark",
        }
    )
    env.pop("READMIT_MODEL", None)
    prelude = PRELUDE.format(root=code_root, event=str(EVENT))
    cold_code, snap_code = prelude + COLD, prelude + SNAPSTART
    print(f"code: {code_root}; python: {args.python}; champion from {registry}; PYTHONDONTWRITEBYTECODE unset")
    best = min(_loop() for _ in range(5))
    print(f"reference loop (sum(range(10**6))): {best * 1000:.1f} ms")
    child(args.python, cold_code, env)  # discarded: writes any missing bytecode
    child(args.python, snap_code, env)
    cold = []
    snap = []
    for _ in range(args.runs):  # interleaved, so the machine's drift falls on both
        cold.append(child(args.python, cold_code, env))
        snap.append(child(args.python, snap_code, env))
    # boto3 comes with the Lambda runtime, not the package: this one runs on this environment's boto3
    boto = [child(sys.executable, BOTO3.format(root=str(ROOT)), env) for _ in range(args.runs)]

    print(f"champion {cold[0]['version']}; {args.runs} fresh processes each; pandas imported: {cold[0]['pandas']}")
    print("(a) without SnapStart, init + first /predict:")
    print(f"    import app                          {spread([c['import_s'] for c in cold])}")
    print(f"    first /predict (API built in it)    {spread([c['first_s'] for c in cold])}")
    print(f"    total                               {spread([c['total_s'] for c in cold])}")
    print("(b) before-snapshot hook (at publication; import app is in the init too):")
    print(f"    import app                          {spread([s['import_s'] for s in snap])}")
    print(f"    hook: build, load, warm             {spread([s['hook_s'] for s in snap])}")
    print("(c) after the hooks, what a restored environment pays besides the restore:")
    print(f"    after-restore hook                  {spread([s['after_restore_s'] for s in snap])}")
    print(f"    first /predict (champion check)     {spread([s['first_s'] for s in snap])}")
    print(f"    second /predict, for reference      {spread([s['second_s'] for s in snap])}")
    print("boto3 part of the first AWS call after a restore (new session + S3 client, no request sent):")
    print(f"    service models preloaded            {spread([b['preloaded'] for b in boto])}")
    print(f"    not preloaded                       {spread([b['not_preloaded'] for b in boto])}")


def _loop() -> float:
    started = time.perf_counter()
    sum(range(1_000_000))
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
