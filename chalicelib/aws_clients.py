"""boto3 clients made on first use, so building a store or a job needs no credentials or network, and local runs
never import boto3 (~0.4 s of cold start)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class LazyClient:
    """A class attribute ``client = LazyClient("s3")``: the instance's ``_client`` (injected by tests, or None),
    else a client made once by ``factory`` (default ``boto3.client(service)``) and kept there."""

    def __init__(self, service: str, factory: Callable[[], Any] | None = None) -> None:
        self.service = service
        self.factory = factory
        self.slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        client = getattr(obj, self.slot, None)
        if client is None:
            if self.factory is not None:
                client = self.factory()
            else:
                import boto3

                client = boto3.client(self.service)
            setattr(obj, self.slot, client)
        return client


@functools.lru_cache(maxsize=8)
def secret_string(secret_id: str, client: Any = None) -> str:
    """A Secrets Manager secret's SecretString, fetched once per container (the identifier salt, the Qdrant API
    key): every container must use the same value, and a per-request call would cost a round trip."""
    if client is None:
        import boto3

        client = boto3.client("secretsmanager")
    return client.get_secret_value(SecretId=secret_id)["SecretString"]
