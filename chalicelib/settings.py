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
