"""Lambda SnapStart for the API function: build and warm the API before the snapshot, and after each restore
renew what must not be shared between the environments restored from one snapshot.

With SnapStart, Lambda runs the function's initialisation when a version is published, snapshots the memory and
disk of the initialised environment (Firecracker), and starts new environments of that version from the snapshot
(https://docs.aws.amazon.com/lambda/latest/dg/snapstart.html; python3.12 and later). The hooks come from the
runtime's ``snapshot_restore_py`` (https://docs.aws.amazon.com/lambda/latest/dg/snapstart-runtime-hooks-python.html;
it is preinstalled in the managed Python runtimes, so it is imported here only if present, and is not a
dependency; PyPI's ``snapshot-restore-py`` 1.0.0 is the same module). Its limits, from that page:
- before-snapshot hooks count towards the initialisation limit (130 s, or the function timeout if longer);
- after-restore hooks must finish, with the runtime's own restore, within 10 s (else SnapStartTimeoutException),
  so ``after_restore`` makes no network call: it only marks things to be redone at their next use.

What one snapshot shares with every environment restored from it, and what is done about each
(https://docs.aws.amazon.com/lambda/latest/dg/snapstart-uniqueness.html and snapstart.html, "Compatibility
considerations": uniqueness, network connections, ephemeral data such as credentials and timestamps):
- ``random``'s state (botocore draws its retry jitter from it, botocore/retries/standard.py: restored environments
  would back off in step) and numpy's legacy global state: reseeded. Request ids (uuid4) and salts read os.urandom
  per call and keep no state.
- boto3 clients and their connection pools: every client ``aws_clients.LazyClient`` made is made again at its next
  use, and boto3's default session (which holds the credentials it resolved before the snapshot) is replaced by a
  new one that keeps only the parsed service models.
- the champion: the snapshot holds the champion of its publication, which may be days old; the provider checks the
  registry at the first request after the restore (one ETag read), and a newer champion is validated and swapped in
  as at any other check.
Nothing time-based is kept for metrics or /health: the only clock is the provider's check interval, reset above.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from chalicelib.core import aws_clients
from chalicelib.core.telemetry import logger as log

if TYPE_CHECKING:
    from chalicelib.serving.api import ReadmitAPI

ENV_FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"  # set by Lambda in every execution environment
WARM_UP_REQUEST_ID = "snapstart-warm-up"


class SnapStartHooks:
    """The two runtime hooks for an API made by ``api`` (app.py's ``api()``, which builds it once per process)."""

    def __init__(self, api: Callable[[], ReadmitAPI], env: Mapping[str, str] = os.environ) -> None:
        self.api = api
        self.env = env
        self.built: ReadmitAPI | None = None
        self.snapshot_at: float | None = None  # wall clock when the snapshot was prepared
        self._service_models: Any = None  # botocore's loader with the service models parsed before the snapshot

    def before_snapshot(self) -> None:
        """Build the API (the champion loaded and validated in a child process), parse the AWS service models it
        will call, and score a synthetic encounter so the first request after a restore imports, loads and
        compiles nothing. An exception here is an initialisation error at the version's publication, not at a
        request (what Lambda then reports for the version can only be seen on AWS). A missing champion is not one:
        the provider logs it and keeps checking at each request."""
        started = time.perf_counter()
        self.built = self.api()
        self._service_models = _preload_service_models(self.env)
        version = warm(self.built)
        self.snapshot_at = time.time()
        log.info(
            "snapshot prepared" if version else "snapshot prepared without a model",
            extra={"model_version": version, "seconds": round(time.perf_counter() - started, 3)},
        )

    def after_restore(self) -> None:
        """Renew the shared state described in the module docstring; no network call (the 10 s restore limit)."""
        reseed()
        aws_clients.forget_clients()
        if "boto3" in sys.modules:
            _new_boto3_session(self._service_models)
        if self.built is not None:
            self.built.provider.check_at_next_use()
            if self.built.predictor.shadow is not None:  # the shadow alias may have moved since the snapshot too
                self.built.predictor.shadow.check_at_next_use()
        age = round(time.time() - self.snapshot_at) if self.snapshot_at is not None else None
        log.info("restored from snapshot", extra={"snapshot_age_s": age})


def register(api: Callable[[], ReadmitAPI], env: Mapping[str, str] = os.environ) -> SnapStartHooks | None:
    """Register the hooks with the runtime, at import time of the handler's module (hooks registered later, or in
    a module the handler does not import, are ignored). Off Lambda, or without ``snapshot_restore_py``, nothing is
    registered and None is returned: the API is then built at the first request, as without SnapStart."""
    if not env.get(ENV_FUNCTION_NAME):
        return None
    try:
        from snapshot_restore_py import register_after_restore, register_before_snapshot
    except ImportError:
        return None
    hooks = SnapStartHooks(api, env)
    register_before_snapshot(hooks.before_snapshot)
    register_after_restore(hooks.after_restore)
    return hooks


def warm(api: ReadmitAPI) -> str | None:
    """Score the documented synthetic encounter (without its ids) through the request path's parsing, encoding,
    model, SHAP factors and serialisation, alone and as a batch of two, with and without factors. Nothing is
    recorded: no audit record, no history, no metric, no salt lookup. Returns the model's version, or None when no
    model is loaded (a first deployment before any champion: the provider keeps checking at each request)."""
    from chalicelib.data.schema import IDENTIFIERS
    from chalicelib.serving.api import Response
    from chalicelib.serving.api_models import MAX_BODY_BYTES, parse_encounter_body, parse_json
    from chalicelib.serving.openapi import EXAMPLE
    from chalicelib.serving.service import Predictor

    model = api.provider.model
    if model is None:
        return None
    body = json.dumps({k: v for k, v in EXAMPLE.items() if k not in IDENTIFIERS}).encode()
    record = parse_encounter_body(parse_json(body, MAX_BODY_BYTES))
    scorer = Predictor(api.provider)  # no history store and no prediction log
    for records in ([record], [record, record]):
        for explain in (True, False):
            scored = scorer.score(model, records, explain=explain, request_id=WARM_UP_REQUEST_ID)
            Response(200, [s.__dict__ for s in scored]).text()
    return model.version


def reseed() -> None:
    """New seeds for ``random`` and numpy's legacy global generator from the kernel's entropy and the clock (the
    clock alone separates environments if the kernel's pool were restored identical)."""
    seed = hashlib.sha512(os.urandom(32) + time.time_ns().to_bytes(8, "little")).digest()
    random.seed(seed)
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        import numpy as np

        numpy_random.seed(np.frombuffer(seed, dtype=np.uint32))


def _aws_services(env: Mapping[str, str]) -> list[str]:
    """The AWS services the API's settings point at (the stores' URIs, the salt's secret)."""
    from chalicelib.core.settings import Settings

    s = Settings.from_env(env)
    services = []
    if any((uri or "").startswith("s3://") for uri in (s.registry, s.model, s.prediction_log)):
        services.append("s3")
    if (s.prediction_log or "").startswith("firehose://"):
        services.append("firehose")
    if (s.history or "").startswith("dynamodb://"):
        services.append("dynamodb")
    if s.id_salt_secret:
        services.append("secretsmanager")
    return services


def _preload_service_models(env: Mapping[str, str]) -> Any:
    """Give boto3 a default session whose loader has parsed the models of the services the API calls (creating a
    client makes no request to the service) and return that loader, or None when the API calls no AWS service.
    A failure only costs the first request after a restore the parsing (tens of ms), so it is logged, not raised."""
    services = _aws_services(env)
    if not services:
        return None
    import boto3
    import botocore.session

    session = botocore.session.get_session()
    boto3.setup_default_session(botocore_session=session)
    loader = session.get_component("data_loader")
    try:
        # parsing the JSON models is what costs; the loader caches them (no client, so no request and no call
        # the permission test must account for)
        for service in services:
            for kind in ("service-2", "endpoint-rule-set-1"):
                loader.load_service_model(service, kind)
    except Exception as exc:  # an optimisation: never the reason a version fails to publish
        log.warning("service models not preloaded", extra={"error_type": type(exc).__name__})
    return loader


def _new_boto3_session(service_models: Any) -> None:
    """A new default boto3 session, so credentials are resolved again after the restore; it reuses the loader
    (parsed service models only, no credentials) when there is one."""
    import boto3
    import botocore.session

    session = botocore.session.get_session()
    if service_models is not None:
        session.register_component("data_loader", service_models)
    boto3.setup_default_session(botocore_session=session)
