"""Similar-patient search at 100,000 encounters: local embedding + indexing time, then query latency as the API
sees it (a fresh process-like store loaded from disk; embed one encounter, search, shape). Prints the figures.

    .venv/bin/python benchmarks/similar_patients.py [--data PATH] [--rows 100000] [--queries 2000]
    .venv/bin/python benchmarks/similar_patients.py --store qdrant-memory --rows 20000   (for comparison)

Targets (issue #5): 100,000 encounters embedded and indexed locally ≤ 60 s with the local embedder; query
p99 ≤ 20 ms with 100,000 indexed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def ms(samples: list[float]) -> str:
    a = np.array(samples) * 1000
    return (
        f"p50 {np.percentile(a, 50):.2f} ms  p95 {np.percentile(a, 95):.2f} ms  "
        f"p99 {np.percentile(a, 99):.2f} ms  max {a.max():.2f} ms"
    )


def open_store(kind: str, folder: Path) -> tuple[Any, Any]:
    from chalicelib.similar.numpy_store import NumpyStore
    from chalicelib.similar.qdrant_store import QdrantStore, qdrant_client

    if kind == "numpy":
        return NumpyStore(folder / "index"), None
    client = qdrant_client(path=":memory:" if kind == "qdrant-memory" else str(folder / "qdrant"))
    return QdrantStore(client, "bench"), client


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", help="UCI file (default: $READMIT_DATA / the shared copy)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--store", choices=("numpy", "qdrant-memory", "qdrant-path"), default="numpy")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp())
    os.environ.update({"READMIT_HOME": str(home), "READMIT_ID_SALT": "benchmark-salt"})

    from chalicelib.data.dataset import locate
    from chalicelib.data.tabular import read_table
    from chalicelib.similar.embedding import LocalEmbedder, row_record
    from chalicelib.similar.indexing import index_rows, take
    from chalicelib.similar.search import SimilarPatients

    t0 = time.perf_counter()
    table = read_table(locate(args.data), require_target=True)
    assert table.target is not None
    read_s = time.perf_counter() - t0
    n = min(args.rows, len(table.encounter_id))
    rows = np.arange(n)
    cols = take(table.cols, rows)
    print(f"read + validate {len(table.encounter_id):,} rows: {read_s:.2f} s (not part of the indexing figure)")

    store, client = open_store(args.store, home)
    t0 = time.perf_counter()
    index_rows(cols, table.encounter_id[:n].tolist(), table.target[:n].tolist(), LocalEmbedder(), store)
    index_s = time.perf_counter() - t0
    print(f"embed + index + persist {n:,} encounters ({args.store}): {index_s:.2f} s ({n / index_s:,.0f}/s)")

    if client is not None and args.store == "qdrant-path":
        client.close()
        store, client = open_store(args.store, home)
    elif args.store == "numpy":
        store, _ = open_store("numpy", home)  # what a fresh API process does: load from disk
    t0 = time.perf_counter()
    print(f"points in store: {store.count():,} (load {time.perf_counter() - t0:.2f} s)")

    service = SimilarPatients(LocalEmbedder(), store)
    rng = np.random.default_rng(0)
    picks = rng.choice(n, size=args.queries, replace=True)
    records = [row_record(cols, int(i)) for i in picks]
    for record in records[:20]:  # warm-up
        service.find(record, args.k)
    for same_band in (False, True):
        samples = []
        for record in records:
            t0 = time.perf_counter()
            found = service.find(record, args.k, same_age_band=same_band)
            samples.append(time.perf_counter() - t0)
            assert found.count == args.k
        label = "same age band" if same_band else "no filter"
        print(f"query k={args.k} ({label}), {args.queries} queries at {n:,} indexed: {ms(samples)}")
    if client is not None:
        client.close()


if __name__ == "__main__":
    main()
