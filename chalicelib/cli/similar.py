"""`readmit index`: labelled encounters into the similar-patient index, here or (--queue) by the embedder Lambda."""

from __future__ import annotations

import argparse
import json
import sys
import time

from chalicelib.cli.common import Subcommands, emit, err


def cmd_index(args: argparse.Namespace) -> int:
    """Index the labelled encounters of a file for similar-patient search (the local twin of the embedder Lambda)."""
    if args.queue:
        return _enqueue_backfill(args)
    from tqdm import tqdm

    from chalicelib.data.dataset import locate
    from chalicelib.data.tabular import read_table
    from chalicelib.similar.embedding import open_embedder
    from chalicelib.similar.indexing import index_rows, select, take
    from chalicelib.similar.vectors import open_vector_store

    started = time.perf_counter()
    table = read_table(locate(args.data), require_target=True)
    assert table.target is not None
    chosen = select(table.cols, table.target)
    rows = chosen.keep.nonzero()[0]
    embedder, store = open_embedder(args.embedder), open_vector_store(args.store)
    if args.rebuild:
        store.reset()
    with tqdm(total=len(rows), unit="enc", desc="indexing", file=sys.stderr, disable=args.quiet) as bar:
        n = index_rows(
            take(table.cols, rows),
            table.encounter_id[rows].tolist(),
            table.target[rows].tolist(),
            embedder,
            store,
            progress=bar.update,
        )
    report = {
        "indexed": n,
        "points_in_store": store.count(),
        "excluded_from_cohort": chosen.excluded,
        "unlabelled": chosen.unlabelled,
        "invalid_rows": len(table.errors),
        "embedder": embedder.name,
        "dimension": embedder.dimension,
        "store": type(store).__name__,
        "seconds": round(time.perf_counter() - started, 1),
    }
    emit(args, report)
    return 0


def _enqueue_backfill(args: argparse.Namespace) -> int:
    """The backfill path on AWS: one message asks the embedder to index an S3 object; it fans out into chunks."""
    import boto3

    if not (args.data or "").startswith("s3://"):
        err("readmit index --queue URL needs --data s3://bucket/key")
        return 2
    bucket, _, key = args.data.removeprefix("s3://").partition("/")
    body = json.dumps({"backfill": {"bucket": bucket, "key": key}})
    response = boto3.client("sqs").send_message(QueueUrl=args.queue, MessageBody=body)
    emit(args, {"backfill": {"bucket": bucket, "key": key}, "message_id": response["MessageId"]})
    return 0


def register(sub: Subcommands) -> None:
    """index"""
    s = sub.add_parser("index", help="index labelled encounters for similar-patient search (progress bar)")
    s.add_argument("--data", help="labelled UCI-format file (default: as for `readmit data`)")
    s.add_argument("--store", choices=("numpy", "qdrant", "opensearch"), help="default: $READMIT_VECTOR_STORE or numpy")
    s.add_argument("--embedder", choices=("local", "bedrock"), help="default: $READMIT_EMBEDDER or local")
    s.add_argument("--rebuild", action="store_true", help="drop the existing index first")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--queue", help="on AWS: ask the embedder Lambda (its ingest queue URL) to index --data s3://…")
    s.set_defaults(func=cmd_index)
