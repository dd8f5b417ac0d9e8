"""Lambda SnapStart hooks (chalicelib/serving/snapstart.py), driven the way the Python runtime drives them.

The runtime's ``snapshot_restore_py`` is stood in for by a module with the published library's behaviour
(snapshot-restore-py 1.0.0, https://github.com/aws/snapshot-restore-py): ``register_before_snapshot(func, *args,
**kwargs)`` and ``register_after_restore(...)`` append ``(func, args, kwargs)`` to a registry and return ``func``;
the runtime runs before-snapshot hooks in the reverse order of registration and after-restore hooks in the order of
registration (https://docs.aws.amazon.com/lambda/latest/dg/snapstart-runtime-hooks-python.html).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from chalicelib.core import aws_clients
from chalicelib.core.aws_clients import LazyClient
from chalicelib.core.storage import S3Storage
from chalicelib.core.telemetry import PREDICTIONS
from chalicelib.registry import provider as model_provider
from chalicelib.registry.registry import Registry
from chalicelib.serving import snapstart
from chalicelib.serving.api import ReadmitAPI, Request
from chalicelib.serving.openapi import EXAMPLE

Hook = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class FakeRuntime:
    """snapshot_restore_py as published, plus what the runtime does with its registries."""

    def __init__(self) -> None:
        self.before: list[Hook] = []
        self.after: list[Hook] = []
        module = types.ModuleType("snapshot_restore_py")

        def register_before_snapshot(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
            self.before.append((func, args, kwargs))
            return func

        def register_after_restore(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
            self.after.append((func, args, kwargs))
            return func

        module.register_before_snapshot = register_before_snapshot  # type: ignore[attr-defined]
        module.register_after_restore = register_after_restore  # type: ignore[attr-defined]
        module.get_before_snapshot = lambda: self.before  # type: ignore[attr-defined]
        module.get_after_restore = lambda: self.after  # type: ignore[attr-defined]
        self.module = module

    def snapshot(self) -> None:
        for func, args, kwargs in reversed(self.before):
            func(*args, **kwargs)

    def restore(self) -> None:
        for func, args, kwargs in self.after:
            func(*args, **kwargs)


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    fake = FakeRuntime()
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", fake.module)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "readmit-api")
    return fake


@pytest.fixture(autouse=True)
def _process_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The hooks change process-wide state (RNG seeds, boto3's default session, the client generation): put it
    back for the other tests in this process."""
    monkeypatch.setattr(aws_clients, "_generation", getattr(aws_clients, "_generation", 0), raising=False)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


def deployed_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, registry: Path) -> None:
    monkeypatch.setenv("READMIT_REGISTRY", str(registry))
    monkeypatch.delenv("READMIT_MODEL", raising=False)
    monkeypatch.setenv("READMIT_PREDICTION_LOG", str(tmp_path / "audit"))
    monkeypatch.setenv("READMIT_HISTORY", str(tmp_path / "history.sqlite3"))
    monkeypatch.delenv("READMIT_CHECK_INTERVAL", raising=False)  # the deployed default: 300 s


def app_api() -> Callable[[], ReadmitAPI]:
    """app.py's ``api()``: one API per process, built at first use."""
    built: list[ReadmitAPI] = []

    def api() -> ReadmitAPI:
        if not built:
            built.append(ReadmitAPI.from_env())
        return built[0]

    return api


def predict(api: ReadmitAPI) -> dict[str, Any]:
    response = api.predict(Request(json.dumps(EXAMPLE).encode(), {"Content-Type": "application/json"}))
    assert response.status == 200, response.body
    return response.body


def second_version(bundle: Path, tmp_path: Path, version: str) -> Path:
    """The same model under another version: what a retraining would register."""
    copy = tmp_path / version
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["version"] = version
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every model the provider loads, by version."""
    loaded: list[str] = []
    real = model_provider.ModelBundle.load

    def counting(folder: Path) -> Any:
        model = real(folder)
        loaded.append(model.version)
        return model

    monkeypatch.setattr(model_provider.ModelBundle, "load", staticmethod(counting))
    return loaded


def test_nothing_is_registered_off_lambda_or_without_the_runtime_library(
    runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert snapstart.register(app_api(), {}) is None  # no AWS_LAMBDA_FUNCTION_NAME: not on Lambda
    assert runtime.before == [] and runtime.after == []
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)  # import fails: no SnapStart runtime
    assert snapstart.register(app_api()) is None
    assert runtime.before == [] and runtime.after == []


def test_on_lambda_one_hook_of_each_kind_is_registered_with_the_runtime(runtime: FakeRuntime) -> None:
    hooks = snapstart.register(app_api())

    assert hooks is not None
    assert runtime.before == [(hooks.before_snapshot, (), {})]
    assert runtime.after == [(hooks.after_restore, (), {})]


def test_the_snapshot_holds_the_loaded_champion_so_the_first_request_after_a_restore_loads_nothing(
    runtime: FakeRuntime, small_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loads: list[str]
) -> None:
    registry = Registry.open(tmp_path / "registry")
    registry.promote(registry.register(small_bundle), "champion")
    deployed_env(monkeypatch, tmp_path, tmp_path / "registry")
    api = app_api()
    snapstart.register(api)
    predictions_before = sum(s.value for s in PREDICTIONS.collect()[0].samples if s.name.endswith("_total"))

    runtime.snapshot()

    assert loads == [registry.champion()]  # loaded (and validated) before the snapshot
    assert not (tmp_path / "audit").exists() or not any((tmp_path / "audit").rglob("*.jsonl"))  # warm-up: no record
    predictions_after = sum(s.value for s in PREDICTIONS.collect()[0].samples if s.name.endswith("_total"))
    assert predictions_after == predictions_before  # nor a counted prediction

    runtime.restore()
    body = predict(api())

    assert body["model_version"] == registry.champion()
    assert loads == [registry.champion()]  # the first request after the restore loaded nothing


@pytest.mark.slow
def test_a_champion_promoted_after_the_snapshot_answers_the_first_request_after_a_restore(
    runtime: FakeRuntime, small_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loads: list[str]
) -> None:
    registry = Registry.open(tmp_path / "registry")
    old = registry.register(small_bundle)
    registry.promote(old, "champion at publication")
    deployed_env(monkeypatch, tmp_path, tmp_path / "registry")
    api = app_api()
    snapstart.register(api)
    runtime.snapshot()
    # days later: a retrained champion; the snapshot still holds the old one, and the check interval (300 s) has
    # not passed on the restored process's monotonic clock
    new = registry.register(second_version(small_bundle, tmp_path, "20991231T000000Z-newchamp"))
    registry.promote(new, "retrained")

    runtime.restore()

    assert predict(api())["model_version"] == new
    assert loads == [old, new]


def test_a_first_deployment_without_a_champion_snapshots_and_serves_the_first_one_promoted(
    runtime: FakeRuntime, small_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed_env(monkeypatch, tmp_path, tmp_path / "registry")
    api = app_api()
    snapstart.register(api)
    runtime.snapshot()  # no champion yet: the snapshot is still taken (publishing the version must not fail)
    assert api().provider.model is None
    registry = Registry.open(tmp_path / "registry")
    registry.promote(registry.register(small_bundle), "first champion")

    runtime.restore()

    assert predict(api())["model_version"] == registry.champion()


def test_environments_restored_from_one_snapshot_draw_different_random_numbers(runtime: FakeRuntime) -> None:
    import numpy.random  # noqa: F401 (the global generator exists, as it does once xgboost is imported)

    hooks = snapstart.register(app_api())
    assert hooks is not None
    random.seed(1)
    np.random.seed(1)
    at_snapshot = random.getstate(), np.random.get_state()

    draws = []
    for _ in range(2):  # two environments resumed from the same memory
        random.setstate(at_snapshot[0])
        np.random.set_state(at_snapshot[1])
        runtime.restore()
        draws.append((random.random(), float(np.random.random())))

    assert draws[0][0] != draws[1][0]
    assert draws[0][1] != draws[1][1]


class Holder:
    client = LazyClient("s3", lambda: object())


def test_clients_made_before_the_snapshot_are_made_anew_after_a_restore_and_injected_ones_kept(
    runtime: FakeRuntime,
) -> None:
    snapstart.register(app_api())
    made, injected, sentinel = Holder(), Holder(), object()
    injected._client = sentinel
    storage = S3Storage("bucket")  # the registry's, the audit log's and the model store's client
    before = made.client, storage.client
    assert made.client is before[0] and storage.client is before[1]  # made once, then kept

    runtime.restore()

    assert made.client is not before[0] and storage.client is not before[1]
    assert made.client is made.client  # and kept again
    assert injected.client is sentinel


def test_after_a_restore_boto3_resolves_its_credentials_again(
    runtime: FakeRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed_env(monkeypatch, tmp_path, tmp_path / "registry")
    monkeypatch.setenv("READMIT_HISTORY", "dynamodb://history")  # an AWS service: boto3 is set up before the snapshot
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "credentials-at-publication")
    snapstart.register(app_api())
    runtime.snapshot()
    assert boto3.DEFAULT_SESSION.get_credentials().access_key == "credentials-at-publication"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "credentials-at-restore")

    runtime.restore()

    assert boto3.DEFAULT_SESSION.get_credentials().access_key == "credentials-at-restore"
    assert boto3.client("dynamodb").meta.region_name == "us-east-1"  # a working session
