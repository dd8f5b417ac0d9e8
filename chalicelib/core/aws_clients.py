"""boto3 clients made on first use, so building a store or a job needs no credentials or network, and local runs
never import boto3 (~0.4 s of cold start)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

# The services LazyClient makes clients for: boto3's type stubs type client() per service name, so a name outside
# this list is a type error rather than a runtime surprise (add it here when a module needs a new service).
AwsService = Literal["bedrock-runtime", "dynamodb", "firehose", "s3", "sagemaker"]
_generation = 0  # bumped by forget_clients(); a made client remembers the generation it was made in


class LazyClient:
    """A class attribute ``client = LazyClient("s3")``: the instance's ``_client`` (injected by tests, or None),
    else a client made once by ``factory`` (default ``boto3.client(service)``) and kept there until
    ``forget_clients()`` (an injected client is kept)."""

    def __init__(self, service: AwsService, factory: Callable[[], Any] | None = None) -> None:
        self.service = service
        self.factory = factory
        self.slot = ""
        self.made_slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"
        self.made_slot = f"_{name}_generation"

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        client = getattr(obj, self.slot, None)
        if client is None or getattr(obj, self.made_slot, _generation) != _generation:
            if self.factory is not None:
                client = self.factory()
            else:
                import boto3

                client = boto3.client(self.service)
            setattr(obj, self.slot, client)
            setattr(obj, self.made_slot, _generation)
        return client


def forget_clients() -> None:
    """Every client LazyClient has made is made again at its next use; injected ones are kept. After a Lambda
    SnapStart restore a client made before the snapshot would reuse connections whose state is not guaranteed, in
    every environment restored from that snapshot (https://docs.aws.amazon.com/lambda/latest/dg/snapstart.html,
    "Compatibility considerations": network connections)."""
    global _generation
    _generation += 1


@functools.lru_cache(maxsize=8)
def secret_string(secret_id: str, client: Any = None) -> str:
    """A Secrets Manager secret's SecretString, fetched once per container (the identifier salt, the Qdrant API
    key): every container must use the same value, and a per-request call would cost a round trip."""
    if client is None:
        import boto3

        client = boto3.client("secretsmanager")
    return client.get_secret_value(SecretId=secret_id)["SecretString"]
