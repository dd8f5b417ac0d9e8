"""Environment variable names, once, and the documented settings they feed (explicit arguments win)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA = "READMIT_DATA"  # the UCI data set: zip, csv or csv.gz
ENV_REGISTRY = "READMIT_REGISTRY"  # registry URI: a folder or s3://bucket/prefix
ENV_MODEL = "READMIT_MODEL"  # a bundle folder or URI that overrides the registry's champion
ENV_HOME = "READMIT_HOME"  # where local state lives (registry, history store, logs)
ENV_SALT = "READMIT_ID_SALT"  # salt for hashing identifiers in logs and stores


def home() -> Path:
    """Local state folder: $READMIT_HOME, else ./.readmit (next to the project, easy to inspect and delete)."""
    return Path(os.environ.get(ENV_HOME) or ".readmit").expanduser()


def registry_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get(ENV_REGISTRY) or str(home() / "registry")


# ---- similar patients and /chat (issue #5) -------------------------------------------------------------------
ENV_EMBEDDER = "READMIT_EMBEDDER"  # local (default: offline, deterministic) | bedrock (Titan Text Embeddings v2)
ENV_EMBED_MODEL = "READMIT_EMBED_MODEL"  # Bedrock embedding model id
ENV_EMBED_DIMENSIONS = "READMIT_EMBED_DIMENSIONS"  # Titan v2: 256, 512 or 1024
ENV_VECTOR_STORE = "READMIT_VECTOR_STORE"  # numpy (default) | qdrant | opensearch
ENV_INDEX_DIR = "READMIT_INDEX_DIR"  # the numpy store's folder (default: $READMIT_HOME/index)
ENV_QDRANT_URL = "READMIT_QDRANT_URL"  # a Qdrant server (the EKS deployment); else embedded local mode
ENV_QDRANT_PATH = "READMIT_QDRANT_PATH"  # embedded local mode's folder (default: $READMIT_HOME/qdrant)
ENV_QDRANT_API_KEY = "READMIT_QDRANT_API_KEY"
ENV_QDRANT_API_KEY_SECRET = "READMIT_QDRANT_API_KEY_SECRET"  # on AWS: Secrets Manager id of the API key (wins)
ENV_QDRANT_REPLICATION_FACTOR = "READMIT_QDRANT_REPLICATION_FACTOR"  # copies of each shard on a server (default 2)
ENV_QDRANT_WRITE_CONSISTENCY = "READMIT_QDRANT_WRITE_CONSISTENCY"  # replicas that must ack a write (default 1)
ENV_OPENSEARCH_URL = "READMIT_OPENSEARCH_URL"  # https://… endpoint of Amazon OpenSearch Service / Serverless
ENV_VECTOR_COLLECTION = "READMIT_VECTOR_COLLECTION"  # Qdrant collection / OpenSearch index name
ENV_CHAT_MODEL = "READMIT_CHAT_MODEL"  # Bedrock Converse model id; unset means template answers only
ENV_GUARDRAIL_ID = "READMIT_GUARDRAIL_ID"  # Bedrock Guardrail (id or ARN) on /chat's Converse calls; unset: none
ENV_GUARDRAIL_VERSION = "READMIT_GUARDRAIL_VERSION"  # its version: a number, or DRAFT (the working draft)
ENV_INGEST_QUEUE_URL = "READMIT_INGEST_QUEUE_URL"  # the embedder's own queue (large files fan out into chunks)
ENV_INGEST_CHUNK_ROWS = "READMIT_INGEST_CHUNK_ROWS"  # larger files fan out into chunks of this many rows

DEFAULT_COLLECTION = "readmit-encounters"
DEFAULT_EMBED_MODEL = "amazon.titan-embed-text-v2:0"


def index_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get(ENV_INDEX_DIR) or home() / "index")


# ---- model governance: registry with approval (issue #15) ----------------------------------------------------
ENV_PROMOTION_POLICY = "READMIT_PROMOTION_POLICY"  # auto (default: gate pass → promoted) | manual (→ pending)
ENV_MODEL_PACKAGE_GROUP = "READMIT_MODEL_PACKAGE_GROUP"  # SageMaker Model Package Group; unset: no SageMaker copy
PROMOTION_POLICIES = ("auto", "manual")


def promotion_policy(explicit: str | None = None) -> str:
    """auto or manual: the explicit value, else $READMIT_PROMOTION_POLICY, else auto (today's behaviour)."""
    policy = (explicit or os.environ.get(ENV_PROMOTION_POLICY) or "auto").strip().lower()
    if policy not in PROMOTION_POLICIES:
        raise ValueError(f"{ENV_PROMOTION_POLICY} must be one of {PROMOTION_POLICIES}, got {policy!r}")
    return policy


# ---- shadow runs before promotion (issue #15) ----------------------------------------------------------------
ENV_MIN_SHADOW_REQUESTS = "READMIT_MIN_SHADOW_REQUESTS"  # requests a challenger must score in shadow (default 0)
ENV_MIN_SHADOW_HOURS = "READMIT_MIN_SHADOW_HOURS"  # hours it must have been the shadow model (default 0)
ENV_SHADOW_LOG = "READMIT_SHADOW_LOG"  # the readable log GET /model/shadow reports on when the API's is Firehose


def min_shadow_requests(explicit: int | None = None) -> int:
    """Minimum shadow requests before promotion: the explicit value, else $READMIT_MIN_SHADOW_REQUESTS, else 0."""
    value = explicit if explicit is not None else int(os.environ.get(ENV_MIN_SHADOW_REQUESTS) or 0)
    if value < 0:
        raise ValueError(f"{ENV_MIN_SHADOW_REQUESTS} must be 0 or more, got {value}")
    return value


def min_shadow_hours(explicit: float | None = None) -> float:
    """Minimum hours in shadow before promotion: the explicit value, else $READMIT_MIN_SHADOW_HOURS, else 0."""
    value = explicit if explicit is not None else float(os.environ.get(ENV_MIN_SHADOW_HOURS) or 0)
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{ENV_MIN_SHADOW_HOURS} must be 0 or more, got {value}")
    return value
