"""`readmit data`, `readmit features`: the data set found and checked, the feature document written."""

from __future__ import annotations

import argparse
from pathlib import Path

from chalicelib.cli.common import Subcommands, emit, err


def cmd_data(args: argparse.Namespace) -> int:
    from chalicelib.data.dataset import CONTENT_SHA256, content_sha256, keep_in_cache, locate
    from chalicelib.data.tabular import read_table

    path = locate(args.data, download=not args.offline)
    digest = content_sha256(path)
    table = read_table(path, require_target=True)
    report = {
        "path": str(path),
        "cached_at": str(keep_in_cache(path)) if digest == CONTENT_SHA256 else None,
        "sha256": digest,
        "official_copy": digest == CONTENT_SHA256,
        "rows": table.n_rows,
        "invalid_rows": len(table.errors),
        "first_errors": [{"line": e.line, "reason": e.reason} for e in table.errors[:20]],
    }
    emit(args, report)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from chalicelib.features.docs import feature_spec_markdown

    text = feature_spec_markdown()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        err(f"wrote {args.out}")
    else:
        print(text)
    return 0


def register(sub: Subcommands) -> None:
    """data, features"""
    s = sub.add_parser("data", help="find, verify and validate the UCI data set")
    s.add_argument("--data", help="UCI zip, .csv or .csv.gz (default: $READMIT_DATA, cache, download)")
    s.add_argument("--offline", action="store_true", help="never download")
    s.set_defaults(func=cmd_data)

    s = sub.add_parser("features", help="print or write the feature-spec document")
    s.add_argument("--out", help="write Markdown here (e.g. docs/features.md)")
    s.set_defaults(func=cmd_features)
