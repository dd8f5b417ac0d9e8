"""Batch scoring speed: the scoring handler on Distributed Map batches of 1,000 real rows, the prepare step and the
merge on a million rows, a cold start, and the resulting estimate for a 1,000,000-row list. Prints the figures.

    .venv/bin/python benchmarks/batch_scoring.py [--model DIR|URI] [--data PATH] [--batches 30] [--concurrency 100]

What is measured, in this process, on this machine: the scoring function's work for one batch event
(``batch_job.score`` with ``{"Items", "BatchInput"}``: parse the event, validate 1,000 rows, features, risk, SHAP,
factors, audit records serialised and written, the part CSV written) against an in-memory S3 client, so S3
latency is not in it; ``prepare`` and ``merge`` on a 1,000,000-row file (the UCI data repeated with fresh ids),
again without S3 transfer. What is assumed, and printed as such: S3 transfer and Step Functions overheads.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Assumptions (not measured here; stated in the output).
S3_MB_PER_S = 80.0  # one Lambda's single-stream S3 GET/PUT throughput
CHILD_START_S = 0.1  # Step Functions starting an EXPRESS child execution and invoking its Lambda, per wave
PART_FETCH_S = 0.03  # one GET of a ~130 kB part from S3 (the merge fetches 16 at a time)

COLD = """
import importlib.abc, json, sys, time
class NotInThePackage(importlib.abc.MetaPathFinder):  # the Lambda package has neither (xgboost would import them)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pandas", "sklearn"):
            raise ImportError(name)
sys.meta_path.insert(0, NotInThePackage())
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
import importlib.util
spec = importlib.util.spec_from_file_location("fn", {app!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
t1 = time.perf_counter()
from chalicelib.model.bundle import ModelBundle
ModelBundle.load({bundle!r})
print(json.dumps({{"import_s": t1 - t0, "load_s": time.perf_counter() - t1,
                  "pandas": "pandas" in sys.modules, "sklearn": "sklearn" in sys.modules}}))
"""


class MemoryS3:
    """The S3 calls the scoring and merge steps make, kept in memory."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> None:
        self.objects[(Bucket, Key)] = Body

    def upload_fileobj(self, fh: Any, bucket: str, key: str, ExtraArgs: Any = None) -> None:
        self.objects[(bucket, key)] = fh.read()


def million_row_file(data: Path, rows: int, dest: Path) -> int:
    """The UCI rows repeated with fresh encounter and patient ids until ``rows``; returns the row count."""
    from chalicelib.data.dataset import open_text

    with open_text(data) as fh:
        reader = csv.reader(fh)
        header = next(reader)
        source = list(reader)
    written = 0
    with dest.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        copy = 0
        while written < rows:
            offset = copy * 10**9
            for row in source[: rows - written]:
                writer.writerow([str(int(row[0]) + offset), str(int(row[1]) + offset), *row[2:]])
            written += min(len(source), rows - written)
            copy += 1
    return written


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="bundle folder or registry URI (default: the local registry's champion)")
    parser.add_argument("--data", help="the UCI data (default: $READMIT_DATA or the shared copy)")
    parser.add_argument("--batches", type=int, default=30, help="batches of 1,000 rows to time (>= 20)")
    parser.add_argument("--concurrency", type=int, default=100, help="Distributed Map MaxConcurrency")
    parser.add_argument("--rows", type=int, default=1_000_000, help="the list size to estimate (and to prepare/merge)")
    args = parser.parse_args()
    if args.batches < 20:
        parser.error("--batches must be at least 20")

    os.environ.setdefault("READMIT_ID_SALT", "benchmark-salt")  # as READMIT_ID_SALT_SECRET on AWS: resolved once
    os.environ.update({"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"})
    from chalicelib.batch import job as batch_job
    from chalicelib.batch.output import from_csv
    from chalicelib.batch.rows import prepare, write_items
    from chalicelib.core import settings
    from chalicelib.core.audit import S3PredictionLog
    from chalicelib.data.dataset import locate
    from chalicelib.registry.loader import bundle_path

    bundle = bundle_path(args.model or settings.registry_uri())
    data = locate(Path(args.data) if args.data else None)
    s3 = MemoryS3()
    cfg = batch_job.BatchSettings(registry_uri="unused", model_uri=str(bundle))
    jobs = batch_job.BatchJobs(
        cfg, s3_client=s3, log=S3PredictionLog("logs", "predictions", client=s3), models=batch_job.ModelCache(cfg)
    )
    model = jobs.models.get(None)
    print(f"model {model.version}: {model.booster.num_boosted_rounds()} trees; data {data.name}")
    print(
        f"machine: {os.cpu_count()} cores shared with other jobs, load average {os.getloadavg()[0]:.1f}: wall times "
        "include waiting for a core; CPU times are this process's own\n"
    )

    # -- cold start: what a new container pays before its first batch (model from local disk) --
    cold = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-c",
                COLD.format(root=str(ROOT), app=str(ROOT / "functions/batch_score/app.py"), bundle=str(bundle)),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    print(
        f"cold start: import {cold['import_s']:.2f} s + model load {cold['load_s']:.2f} s "
        f"(pandas and scikit-learn blocked, as in the Lambda package: imported {cold['pandas'] or cold['sklearn']})"
    )

    with tempfile.TemporaryDirectory() as tmp:
        # -- prepare on the full list --
        big = Path(tmp) / "list.csv"
        n_rows = million_row_file(data, args.rows, big)
        size_mb = big.stat().st_size / 1e6
        started, cpu = time.perf_counter(), time.process_time()
        columns, items = prepare(lambda: big.open(newline="", encoding="utf-8-sig"))
        with (Path(tmp) / "items.csv").open("w", newline="") as fh:
            prepared_rows = write_items(items, fh)
        prepare_s, prepare_cpu = time.perf_counter() - started, time.process_time() - cpu
        items_mb = (Path(tmp) / "items.csv").stat().st_size / 1e6
        assert prepared_rows == n_rows
        print(
            f"prepare: {n_rows:,} rows ({size_mb:.0f} MB in, {items_mb:.0f} MB prepared) in {prepare_s:.1f} s "
            f"(CPU {prepare_cpu:.1f} s)"
        )

        # -- the scoring handler on batches of 1,000 prepared rows (the Distributed Map's batch input) --
        with (Path(tmp) / "items.csv").open(newline="") as fh:
            reader = csv.DictReader(fh)
            batch_items = [next(reader) for _ in range(args.batches * batch_job.BATCH_ROWS)]
        info = {"run_id": "bench", "bucket": "data", "model_version": model.version, "columns": columns}
        events = [
            {"Items": batch_items[i : i + batch_job.BATCH_ROWS], "BatchInput": info}
            for i in range(0, len(batch_items), batch_job.BATCH_ROWS)
        ]
        payload = max(len(json.dumps(e, separators=(",", ":")).encode()) for e in events)
        batch_job.score(events[0], jobs)  # warm: first-call allocations
        times, cpu_times = [], []
        for event in events:
            started, cpu = time.perf_counter(), time.process_time()
            result = batch_job.score(event, jobs)
            times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - cpu)
        assert result["rows"] == batch_job.BATCH_ROWS
        p50, p95 = statistics.median(times), percentile(times, 95)
        print(
            f"scoring handler, {len(times)} batches of {batch_job.BATCH_ROWS:,} rows (largest batch event "
            f"{payload / 1024:.0f} KiB of 256): p50 {p50:.3f} s  p95 {p95:.3f} s  max {max(times):.3f} s "
            f"({batch_job.BATCH_ROWS / p50:,.0f} rows/s per Lambda); CPU p50 {statistics.median(cpu_times):.3f} s"
        )

        # -- merge on the full list: the measured parts, repeated with fresh line numbers --
        parts_measured = [v for (_, k), v in s3.objects.items() if "/parts/" in k]
        n_batches = math.ceil(n_rows / batch_job.BATCH_ROWS)
        parts = []
        for i in range(n_batches):
            template = from_csv(parts_measured[i % len(parts_measured)])
            lines = sorted(int(r[-1]) for r in template)
            renumber = {line: i * batch_job.BATCH_ROWS + j + 2 for j, line in enumerate(lines)}
            rows = [(*r[:-1], str(renumber[int(r[-1])])) for r in template][: n_rows - i * batch_job.BATCH_ROWS]
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows([batch_job.OUTPUT_COLUMNS, *rows])
            parts.append(buffer.getvalue().encode())
        job = batch_job.BatchJob(bucket="data", key="incoming/list.csv", run_id="bench")
        started, cpu = time.perf_counter(), time.process_time()
        parsed = [from_csv(p) for p in parts]
        notice = jobs._finish(job, parsed, expected_rows=n_rows, model_version=model.version)
        merge_s, merge_cpu = time.perf_counter() - started, time.process_time() - cpu
        scored_mb = len(s3.objects[("data", job.scored_key)]) / 1e6
        print(
            f"merge: {n_rows:,} rows from {n_batches:,} parts ({scored_mb:.0f} MB scored file) in {merge_s:.1f} s "
            f"(CPU {merge_cpu:.1f} s)"
        )
        assert notice["rows"] == n_rows

    # -- the estimate: once with the wall times measured here, once with CPU times (an uncontended core) --
    waves = math.ceil(n_batches / args.concurrency)
    transfer = (size_mb + items_mb) / S3_MB_PER_S  # prepare: download the list, upload the prepared rows
    fetch = n_batches / 16 * PART_FETCH_S + scored_mb / S3_MB_PER_S  # merge: get the parts, put the scored file
    cold_s = cold["import_s"] + cold["load_s"]
    print(
        f"\n{n_rows:,}-row estimate at MaxConcurrency {args.concurrency} ({n_batches:,} batches of "
        f"{batch_job.BATCH_ROWS:,}, {waves} waves). Assumed: S3 at {S3_MB_PER_S:.0f} MB/s, {CHILD_START_S} s per "
        f"child start, one cold start ({cold_s:.1f} s as measured above) per wave-1 container; the rest is measured:"
    )
    cpu_p50, cpu_p95 = statistics.median(cpu_times), percentile(cpu_times, 95)
    for label, prep, batch, batch95, merged in (
        ("wall times here", prepare_s, p50, p95, merge_s),
        ("CPU times (one uncontended core)", prepare_cpu, cpu_p50, cpu_p95, merge_cpu),
    ):
        fanout = waves * (batch + CHILD_START_S) + cold_s
        total = prep + transfer + fanout + merged + fetch
        total95 = total + waves * (batch95 - batch)
        print(
            f"  {label}: prepare {prep:.0f} s + transfer {transfer:.0f} s + fan-out {waves} x ({batch:.2f} + "
            f"{CHILD_START_S}) s + cold {cold_s:.0f} s = {fanout:.0f} s + merge {merged:.0f} s + fetch {fetch:.0f} s "
            f"= {total / 60:.1f} min ({total95 / 60:.1f} min with p95 batches); one Lambda alone: "
            f"{(prep + n_batches * batch + merged) / 60:.0f} min"
        )


if __name__ == "__main__":
    main()
