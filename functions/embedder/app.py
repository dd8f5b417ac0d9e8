"""Ingest queue consumer: S3 upload → SQS → embed + upsert. A thin handler over chalicelib.similar.ingest_handler."""

from chalicelib.similar.ingest_handler import make_handler

handler = make_handler()
