"""Who may call which route: 401 without a valid token, 403 without the scope, the caller in the audit record as a
salted hash. Each authenticator as it runs: API Gateway's verified claims (replayed fixtures), dev tokens over real
HTTP (`readmit serve --auth dev`), and Cognito-style RS256 tokens checked against a JWKS served over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from chalicelib.core.audit import LocalPredictionLog
from chalicelib.core.identifiers import hash_id
from chalicelib.registry.provider import ModelProvider
from chalicelib.serving import auth
from chalicelib.serving.api import ReadmitAPI, Request
from chalicelib.serving.service import Predictor
from tests.helpers import load_event
from tests.replay import EVENTS, proxy, run
from tests.test_server_e2e import start_server

SECRET = "a-dev-secret-that-is-long-enough-for-hs256"
PREDICT_ROUTES = ("/predict", "/similar-patients", "/chat")
ADMIN_ROUTES = ("/predict/batch", "/model", "/model/card", "/model/plots/{name}", "/metrics")


def example() -> dict[str, Any]:
    return json.loads(json.loads((EVENTS / "api_predict.json").read_text())["body"])


fixture_event = load_event


# ---- the rule itself ------------------------------------------------------------------------------------------
def test_every_route_of_the_template_has_exactly_the_scope_the_app_requires() -> None:
    """template.yaml's per-method scopes and chalicelib/serving/auth.py's ROUTE_SCOPES are one rule written twice."""
    from tests.replay import template

    events = template().resources["ApiFunction"]["Properties"]["Events"]
    declared: dict[str, str | None] = {}
    for event in events.values():
        props = event["Properties"]
        if props["Path"] == "/{proxy+}":
            continue
        event_auth = props.get("Auth") or {}
        if event_auth.get("Authorizer") == "NONE":
            declared[props["Path"]] = None
        else:
            scopes = event_auth.get("AuthorizationScopes") or ["readmit/predict"]  # the authorizer's default
            assert len(scopes) == 1
            declared[props["Path"]] = scopes[0].removeprefix("readmit/")
    expected = {**{r: s for r, s in auth.ROUTE_SCOPES.items()}, **dict.fromkeys(auth.PUBLIC_ROUTES)}
    assert declared == expected


def test_scopes_are_read_from_the_resource_server_only() -> None:
    claims = {"scope": "openid email readmit/predict other/admin readmit/unknown readmit/admin"}
    assert auth.scopes_of(claims) == {"predict", "admin"}
    assert auth.scopes_of({"scope": "admin predict"}) == frozenset()  # unprefixed names are not our scopes
    assert auth.scopes_of({}) == frozenset()


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "token abc"])
def test_anything_but_a_bearer_token_is_a_401_naming_the_scheme(header: str) -> None:
    with pytest.raises(auth.Unauthenticated) as err:
        auth.DevAuth(SECRET).authorize("/predict", header, None)
    assert err.value.status == 401 and err.value.details[0].field == "Authorization"
    assert 'error="invalid_token"' in err.value.headers()["WWW-Authenticate"]


def test_an_incomplete_setting_is_refused_at_start_up() -> None:
    with pytest.raises(auth.AuthConfigError, match="READMIT_AUTH"):
        auth.from_env({"READMIT_AUTH": "cognito"})
    with pytest.raises(auth.AuthConfigError, match="READMIT_AUTH_CLIENT_IDS"):
        auth.from_env({"READMIT_AUTH": "jwks", "READMIT_AUTH_ISSUER": "https://cognito-idp.x.amazonaws.com/p"})
    with pytest.raises(auth.AuthConfigError, match="32"):
        auth.from_env({"READMIT_AUTH": "dev", "READMIT_DEV_AUTH_SECRET": "short"})
    assert type(auth.from_env({})) is auth.Authenticator  # off unless asked for


# ---- in process: every route × every outcome ------------------------------------------------------------------
@pytest.fixture
def api_with(small_bundle: Path, tmp_path: Path) -> Any:
    def build(authenticator: auth.Authenticator) -> tuple[ReadmitAPI, LocalPredictionLog]:
        log = LocalPredictionLog(tmp_path / "log")
        return ReadmitAPI(
            Predictor(ModelProvider(model_uri=str(small_bundle)), None, log), None, None, authenticator
        ), log

    return build


def _call(api: ReadmitAPI, route: str, headers: dict[str, str], claims: dict[str, Any] | None = None) -> Any:
    request = Request(
        json.dumps(example()).encode(), {"Content-Type": "application/json", **headers}, {}, claims=claims
    )
    method = {
        "/predict": api.predict,
        "/predict/batch": api.predict_batch,
        "/similar-patients": api.similar_patients,
        "/chat": api.chat,
        "/model": api.model_info,
        "/model/card": api.model_card,
        "/metrics": api.metrics,
        "/health": api.health,
        "/openapi.json": api.openapi,
        "/": api.page,
    }.get(route)
    if route == "/model/plots/{name}":
        return api.model_plot(request, "calibration")
    return method(request)


@pytest.mark.parametrize("route", PREDICT_ROUTES + ADMIN_ROUTES)
def test_without_a_token_every_data_route_is_a_401_with_the_bare_challenge(api_with: Any, route: str) -> None:
    api, log = api_with(auth.DevAuth(SECRET))
    response = _call(api, route, {})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="readmit"'  # no error code: none was tried
    assert response.body["error"] == "unauthenticated" and response.body["details"][0]["field"] == "Authorization"
    assert list(log.read()) == []  # nothing was scored


@pytest.mark.parametrize("route", ADMIN_ROUTES)
def test_a_predict_only_token_is_a_403_on_admin_routes_naming_the_scope(api_with: Any, route: str) -> None:
    dev = auth.DevAuth(SECRET)
    api, _ = api_with(dev)
    token = dev.issue("nurse-1", (auth.PREDICT,))
    response = _call(api, route, {"Authorization": f"Bearer {token}"})
    assert response.status == 403
    assert 'error="insufficient_scope", scope="readmit/admin"' in response.headers["WWW-Authenticate"]
    assert "readmit/admin" in response.body["details"][0]["message"]


@pytest.mark.parametrize("route", sorted(auth.PUBLIC_ROUTES))
def test_public_routes_answer_without_a_token(api_with: Any, route: str) -> None:
    api, _ = api_with(auth.DevAuth(SECRET))
    assert _call(api, route, {}).status == 200


def test_a_token_signed_with_another_key_expired_or_an_id_token_is_a_401(api_with: Any) -> None:
    dev = auth.DevAuth(SECRET)
    api, _ = api_with(dev)
    forged = auth.DevAuth("another-secret-that-is-long-enough-too!!").issue("nurse-1")
    expired = dev.issue("nurse-1", ttl_seconds=-120)  # past the 30 s leeway
    id_token = jwt.encode(
        {"sub": "nurse-1", "iss": auth.DEV_ISSUER, "token_use": "id", "exp": int(time.time()) + 60}, SECRET
    )
    none_alg = jwt.encode({"sub": "x", "iss": auth.DEV_ISSUER, "exp": int(time.time()) + 60}, None, algorithm="none")
    for token, why in ((forged, "not valid"), (expired, "expired"), (id_token, "access token"), (none_alg, "valid")):
        response = _call(api, "/predict", {"Authorization": f"Bearer {token}"})
        assert response.status == 401, why
        assert why in response.body["details"][0]["message"]
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_the_audit_record_carries_the_hashed_subject_and_never_the_subject(api_with: Any) -> None:
    dev = auth.DevAuth(SECRET)
    api, log = api_with(dev)
    subject = "jane.doe@hospital.example"  # what a careless client might put in sub
    response = _call(api, "/predict", {"Authorization": f"Bearer {dev.issue(subject)}"})
    assert response.status == 200
    [record] = list(log.read())
    assert record.caller == hash_id(subject, kind="caller") and len(record.caller) == 32
    raw = "".join(p.read_text() for p in log.root.rglob("*.jsonl"))
    assert "jane.doe" not in raw and "hospital.example" not in raw


def test_without_authentication_nothing_is_required_and_nobody_is_recorded(api_with: Any) -> None:
    api, log = api_with(auth.Authenticator())
    assert _call(api, "/predict", {}).status == 200
    assert _call(api, "/model", {}).status == 200
    assert [r.caller for r in log.read()] == [None]


# ---- on Lambda: API Gateway's verified claims (the replayed fixtures) -------------------------------------------
def test_the_template_turns_on_api_gateway_claims_for_the_function() -> None:
    from tests.replay import template

    env = template().resources["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert env["READMIT_AUTH"] == "apigateway"


@pytest.mark.slow
def test_the_fixture_claims_become_the_hashed_caller_of_the_audit_record(small_bundle: Path, tmp_path: Path) -> None:
    event = fixture_event("api_predict.json")
    status, body = proxy(
        run("ApiFunction", event, READMIT_MODEL=str(small_bundle), READMIT_PREDICTION_LOG=str(tmp_path))
    )
    assert status == 200
    [record] = list(LocalPredictionLog(tmp_path).read())
    assert record.request_id == body["request_id"]
    assert record.caller == hash_id(event["requestContext"]["authorizer"]["claims"]["sub"], kind="caller")


@pytest.mark.slow
def test_an_event_without_claims_is_refused_not_served_anonymously(small_bundle: Path) -> None:
    """A method deployed without the authorizer (a template edit gone wrong) must not open the data routes."""
    for name in ("api_predict.json", "api_model.json", "api_unknown_path.json"):
        event = fixture_event(name)
        del event["requestContext"]["authorizer"]
        status, body = proxy(run("ApiFunction", event, READMIT_MODEL=str(small_bundle)))
        assert status == 401 and body["error"] == "unauthenticated", name


def test_predict_claims_on_an_admin_fixture_are_a_403(small_bundle: Path) -> None:
    event = fixture_event("api_model_card.json")
    event["requestContext"]["authorizer"] = fixture_event("api_predict.json")["requestContext"]["authorizer"]
    status, body = proxy(run("ApiFunction", event, READMIT_MODEL=str(small_bundle)))
    assert status == 403 and body["error"] == "forbidden"


# ---- a container verifying Cognito access tokens itself (RS256 against the pool's JWKS) -----------------------
@pytest.fixture(scope="module")
def jwks_server() -> Iterator[tuple[str, Any, list[str]]]:
    """The user pool's /.well-known/jwks.json over real HTTP, as Cognito publishes it (RSA keys with kid)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**public, "kid": "key-1", "alg": "RS256", "use": "sig"}]}).encode()
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200 if self.path.endswith("/.well-known/jwks.json") else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/us-east-1_Ex4mPle01", key, hits
    server.shutdown()


def _cognito_token(key: Any, issuer: str, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "sub": "7c1e9a52-3b6d-4f0e-9a41-2d8f5b6c0e17",
        "iss": issuer,
        "client_id": "clinician-page",
        "token_use": "access",
        "scope": "openid readmit/predict",
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": claims.pop("kid", "key-1")})


def test_jwks_mode_accepts_the_pools_access_tokens_for_its_clients_only(jwks_server: Any) -> None:
    issuer, key, hits = jwks_server
    checker = auth.JwksAuth(issuer, frozenset({"clinician-page"}))
    identity = checker.authorize("/predict", f"Bearer {_cognito_token(key, issuer)}", None)
    assert identity.scopes == {"predict"} and identity.caller == hash_id(
        "7c1e9a52-3b6d-4f0e-9a41-2d8f5b6c0e17", kind="caller"
    )
    assert hits == ["/us-east-1_Ex4mPle01/.well-known/jwks.json"]
    checker.authorize("/chat", f"Bearer {_cognito_token(key, issuer)}", None)
    assert len(hits) == 1  # the key set is cached

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused = {
        "another app client": _cognito_token(key, issuer, client_id="someone-else"),
        "another issuer": _cognito_token(key, "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Other"),
        "another key": _cognito_token(other_key, issuer),
        "an HS256 token (algorithm confusion)": jwt.encode(
            {"sub": "x", "iss": issuer, "exp": int(time.time()) + 60, "client_id": "clinician-page"},
            "a shared secret of at least 32 bytes here",
            algorithm="HS256",
            headers={"kid": "key-1"},
        ),
    }
    for why, token in refused.items():
        with pytest.raises(auth.Unauthenticated):
            checker.authorize("/predict", f"Bearer {token}", None)
        assert why  # (named for the failure message)
    with pytest.raises(auth.Forbidden):
        checker.authorize("/model/card", f"Bearer {_cognito_token(key, issuer)}", None)


# ---- over real HTTP: `readmit serve --auth dev` and `readmit token` ---------------------------------------------
@pytest.mark.slow
def test_readmit_serve_with_dev_auth_answers_401_403_and_200_over_http(
    small_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chalicelib.registry.registry import Registry

    registry = Registry.open(tmp_path / "registry")
    registry.register(small_bundle)
    registry.promote(small_bundle.name, "auth test")
    server = start_server(tmp_path, tmp_path / "registry", 5.0, "--workers", "1", "--auth", "dev")
    try:
        # the server made its secret in its home; `readmit token` reads the same file
        monkeypatch.setenv("READMIT_HOME", str(server.home))
        key_file = server.home / auth.DEV_KEY_FILE
        assert key_file.stat().st_mode & 0o077 == 0  # readable by its owner only
        dev = auth.DevAuth(auth.dev_secret())
        predict_only, admin = dev.issue("nurse-1", (auth.PREDICT,)), dev.issue("ops-1")

        def call(method: str, path: str, token: str | None, body: Any = None) -> tuple[int, dict[str, str], Any]:
            import urllib.error
            import urllib.request

            headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
            data = json.dumps(body).encode() if body is not None else None
            req = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
            except urllib.error.HTTPError as err:
                return err.code, dict(err.headers), json.loads(err.read() or b"null")

        status, headers, _ = call("POST", "/predict", None, example())
        assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="readmit"'
        assert call("POST", "/predict", predict_only, example())[0] == 200
        status, headers, _ = call("GET", "/model", predict_only)
        assert status == 403 and "insufficient_scope" in headers["WWW-Authenticate"]
        assert call("GET", "/model", admin)[0] == 200
        assert call("GET", "/health", None)[0] == 200
        assert call("GET", "/nowhere", None)[0] == 401 and call("GET", "/nowhere", admin)[0] == 404
        assert predict_only not in server.logs() and "nurse-1" not in server.logs()
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)


@pytest.mark.slow
def test_readmit_token_prints_a_token_the_dev_server_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from chalicelib.cli.main import main

    monkeypatch.setenv("READMIT_DEV_AUTH_SECRET", SECRET)
    assert main(["token", "--scope", "predict", "--subject", "nurse-2"]) == 0
    token = capsys.readouterr().out.strip()
    identity = auth.DevAuth(SECRET).authorize("/predict", f"Bearer {token}", None)
    assert identity.scopes == {"predict"} and identity.caller == hash_id("nurse-2", kind="caller")
    monkeypatch.delenv("READMIT_DEV_AUTH_SECRET")
    assert main(["token"]) == 2  # no secret yet: one line, no traceback
    assert "readmit serve --auth dev" in capsys.readouterr().err
