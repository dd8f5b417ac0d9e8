"""Similar past patients and /chat: embedders, the vector stores (numpy, Qdrant, OpenSearch), indexing, event-driven
ingestion from S3 via SQS, the search, and grounded answers (Bedrock or the deterministic template). Depends on model
and below."""

__all__ = [
    "chat",
    "embedding",
    "indexing",
    "ingest",
    "ingest_handler",
    "numpy_store",
    "opensearch_store",
    "qdrant_store",
    "search",
    "vectors",
]
