"""Clients are made on first use, once per object, and an injected client is used as given."""

from __future__ import annotations

from typing import Any, ClassVar

from chalicelib.core.aws_clients import LazyClient


class Holder:
    made: ClassVar[list[object]] = []

    client = LazyClient("s3", lambda: Holder.make())
    s3 = LazyClient("s3")

    @staticmethod
    def make() -> object:
        Holder.made.append(object())
        return Holder.made[-1]

    def __init__(self, client: Any = None) -> None:
        self._client = client
        self._s3 = None


def test_a_client_is_made_on_first_use_only_and_then_kept() -> None:
    Holder.made.clear()
    holder = Holder()
    assert Holder.made == []  # constructing needs no client
    first = holder.client
    assert holder.client is first and Holder.made == [first]
    assert Holder().client is not first  # one per object


def test_an_injected_client_is_used_as_given() -> None:
    injected = object()
    assert Holder(injected).client is injected


def test_without_a_factory_it_is_a_boto3_client_for_the_service() -> None:
    holder = Holder()
    assert holder.s3.meta.service_model.service_name == "s3"
    assert holder.s3 is holder.s3
