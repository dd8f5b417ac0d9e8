"""Load benchmark for `readmit serve`: N keep-alive clients POST one encounter to /predict for a fixed time.

Stdlib only (http.client, threads): each client holds one persistent connection, as a hospital system or a
browser would, so the figures show what keep-alive costs on each server (Chalice's dev server stalls ~40 ms on
every response of a kept-alive connection: headers and body leave in separate writes, and Nagle's algorithm holds
the second until the client's delayed ACK). Loopback only, bounded by --duration and --max-requests.

    .venv/bin/readmit serve --port 8000 &          # gunicorn (or add --dev for Chalice's dev server)
    .venv/bin/python benchmarks/load.py --url http://127.0.0.1:8000 --clients 1 8 --duration 10
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import math
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

EVENT = Path(__file__).resolve().parent.parent / "events" / "api_predict.json"
MAX_DURATION = 120.0
MAX_CLIENTS = 64


@dataclass
class ClientResult:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    reconnects: int = 0


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def client(
    host: str, port: int, path: str, body: bytes, stop_at: float, budget: list[int], lock: threading.Lock
) -> ClientResult:
    result = ClientResult()
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    conn = http.client.HTTPConnection(host, port, timeout=30)
    while time.monotonic() < stop_at:
        with lock:
            if budget[0] <= 0:
                break
            budget[0] -= 1
        started = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            if response.status == 200:
                result.latencies.append(elapsed)
            else:
                result.errors += 1
            if response.will_close:  # the server ended keep-alive: count it, reconnect
                conn.close()
                result.reconnects += 1
        except (OSError, http.client.HTTPException):
            result.errors += 1
            conn.close()
            result.reconnects += 1
    conn.close()
    return result


def run(host: str, port: int, path: str, body: bytes, clients: int, duration: float, max_requests: int) -> dict:
    budget, lock = [max_requests], threading.Lock()
    results: list[ClientResult] = [ClientResult() for _ in range(clients)]
    stop_at = time.monotonic() + duration

    def work(i: int) -> None:
        results[i] = client(host, port, path, body, stop_at, budget, lock)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies = sorted(x for r in results for x in r.latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": sum(r.errors for r in results),
        "reconnects": sum(r.reconnects for r in results),
        "seconds": round(wall, 2),
        "throughput_rps": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (loopback only)")
    p.add_argument("--path", default="/predict", help="POSTed with events/api_predict.json's encounter")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="concurrent keep-alive clients per run")
    p.add_argument("--duration", type=float, default=10.0, help=f"seconds per run (at most {MAX_DURATION:.0f})")
    p.add_argument("--max-requests", type=int, default=100_000, help="stop a run after this many requests")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured requests before the runs")
    p.add_argument("--json", action="store_true", help="one JSON object per run instead of a table")
    args = p.parse_args(argv)
    url = urlsplit(args.url)
    host, port = url.hostname or "", url.port or 80
    if url.scheme != "http" or not loopback(host):
        p.error("only http:// on a loopback address: this is a local benchmark, not a load generator")
    if not 0 < args.duration <= MAX_DURATION or not all(0 < c <= MAX_CLIENTS for c in args.clients):
        p.error(f"duration in (0, {MAX_DURATION:.0f}] s and 1..{MAX_CLIENTS} clients")
    body = json.loads(EVENT.read_text())["body"].encode()
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        p.error(f"nothing answers on {host}:{port} ({exc})")
    if args.warmup > 0:
        run(host, port, args.path, body, max(args.clients), args.warmup, args.max_requests)
    if not args.json:
        print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for clients in args.clients:
        r = run(host, port, args.path, body, clients, args.duration, args.max_requests)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(
                f"{r['clients']:>7} {r['requests']:>8} {r['errors']:>6} {r['throughput_rps']:>8} "
                f"{r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
