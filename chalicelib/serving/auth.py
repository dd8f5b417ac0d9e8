"""Who is calling, and may they: bearer tokens with OAuth 2.0 scopes, the same claims on AWS and locally.

On AWS, API Gateway's Cognito user pool authorizer validates the access token (signature, expiry, and the scopes
each method requires) before the function runs, and passes its claims in ``requestContext.authorizer.claims``
(mode ``apigateway``). A container behind a load balancer verifies the same Cognito access tokens itself against
the user pool's JWKS (mode ``jwks``). ``readmit serve --auth dev`` signs and verifies tokens with a local secret
(mode ``dev``), so the 401 and 403 paths run in tests without AWS. The default, locally, is no authentication.

Scopes are Cognito's custom scopes of the resource server ``readmit``: ``readmit/predict`` (score, similar
patients, chat) and ``readmit/admin`` (batch, model information and card, metrics). The API key stays on AWS for
throttling only; it identifies nobody. Audit records carry the caller as a salted hash of the token's ``sub``
(a person's immutable user id, or the app client's id for client credentials), never a name or an email.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from chalicelib.core import settings
from chalicelib.core.identifiers import hash_id
from chalicelib.serving.errors import ApiError, Detail

ENV_AUTH = settings.ENV_AUTH  # none | dev | jwks | apigateway
ENV_DEV_SECRET = settings.ENV_DEV_AUTH_SECRET  # dev mode's HS256 key (else home()/dev-auth.key)
ENV_ISSUER = settings.ENV_AUTH_ISSUER  # jwks mode: https://cognito-idp.<region>.amazonaws.com/<user pool id>
ENV_CLIENT_IDS = settings.ENV_AUTH_CLIENT_IDS  # jwks mode: the app clients whose tokens are accepted (comma-separated)
RESOURCE_SERVER = "readmit"  # the Cognito resource server identifier: scopes travel as "readmit/<scope>"
PREDICT, ADMIN = "predict", "admin"
SCOPES = (PREDICT, ADMIN)
DEV_ISSUER = "readmit-dev"
DEV_KEY_FILE = "dev-auth.key"
REALM = "readmit"
Mode = Literal["none", "dev", "jwks", "apigateway"]
MODES: tuple[Mode, ...] = ("none", "dev", "jwks", "apigateway")

# What each route needs. Routes absent here (the page, /health, /openapi.json) are public: they hold no patient
# data, and a load balancer's health check carries no token. Unknown paths need a valid token of any scope, as
# behind API Gateway, where the catch-all resource has the default authorizer: the 404 is no oracle for strangers.
ROUTE_SCOPES: dict[str, str | None] = {
    "/predict": PREDICT,
    "/similar-patients": PREDICT,
    "/chat": PREDICT,
    "/predict/batch": ADMIN,
    "/model": ADMIN,
    "/model/card": ADMIN,
    "/model/plots/{name}": ADMIN,
    "/model/shadow": ADMIN,
    "/metrics": ADMIN,
}
PUBLIC_ROUTES = frozenset({"/", "/health", "/openapi.json"})


class AuthError(ApiError):
    """A 401 or 403 whose WWW-Authenticate header says what is wrong (RFC 6750 section 3)."""

    challenge: str = ""

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge}


class Unauthenticated(AuthError):
    """No credentials, or credentials that do not prove who is calling: 401."""

    def __init__(self, message: str, *, token_given: bool) -> None:
        super().__init__("unauthenticated", [Detail("Authorization", message)], 401)
        # a request with no token gets the bare challenge; a bad token gets error="invalid_token"
        self.challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if token_given else "")


class Forbidden(AuthError):
    """A valid token without the scope the route needs: 403."""

    def __init__(self, scope: str) -> None:
        wanted = f"{RESOURCE_SERVER}/{scope}"
        super().__init__("forbidden", [Detail("Authorization", f"the token lacks the scope {wanted}")], 403)
        self.challenge = f'Bearer realm="{REALM}", error="insufficient_scope", scope="{wanted}"'


class AuthConfigError(ValueError):
    """The authentication settings are incomplete: refused at start-up, not at the first request."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller as the service may remember it: a salted hash of the subject (None when unauthenticated) and
    the scopes granted, without the resource server prefix."""

    caller: str | None
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


ANONYMOUS = Identity(None, frozenset(SCOPES))  # authentication off: every route, nobody in particular


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """The readmit scopes in a Cognito access token's space-separated ``scope`` claim; other resource servers'
    scopes and OpenID scopes are ignored."""
    raw = claims.get("scope") or ""
    if not isinstance(raw, str):
        return frozenset()
    prefix = f"{RESOURCE_SERVER}/"
    return frozenset(s[len(prefix) :] for s in raw.split() if s.startswith(prefix) and s[len(prefix) :] in SCOPES)


def identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    """Identity from verified access-token claims. ``sub`` is Cognito's immutable user id (for client credentials
    the app client id); it is hashed at once so no raw subject outlives the request."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthenticated("the token has no subject", token_given=True)
    if claims.get("token_use", "access") != "access":
        # an ID token proves a sign-in but carries no scopes; the authorizer is configured for access tokens
        raise Unauthenticated("an access token is required", token_given=True)
    return Identity(hash_id(sub, kind="caller"), scopes_of(claims))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive, RFC 6750 section 2.1)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("use the Bearer scheme: Authorization: Bearer <access token>", token_given=True)
    return token.strip()


class Authenticator:
    """Base: no authentication. Subclasses prove an identity from the request."""

    mode: Mode = "none"

    def identify(self, authorization: str | None, claims: Mapping[str, Any] | None) -> Identity:
        return ANONYMOUS

    def authorize(self, route: str, authorization: str | None, claims: Mapping[str, Any] | None) -> Identity:
        """The caller's identity if it may use ``route``; else Unauthenticated (401) or Forbidden (403)."""
        if route in PUBLIC_ROUTES:
            return ANONYMOUS if self.mode == "none" else Identity(None, frozenset())
        identity = self.identify(authorization, claims)
        scope = ROUTE_SCOPES.get(route)
        if scope is not None and not identity.allows(scope):
            raise Forbidden(scope)
        return identity


class ApiGatewayAuth(Authenticator):
    """Behind API Gateway's Cognito authorizer, which has already verified the token and the method's scopes: the
    claims arrive in the Lambda proxy event's ``requestContext.authorizer.claims``. No claims means the method was
    deployed without the authorizer, so the request is refused rather than served anonymously. The scope check is
    repeated here so the app, not only the deployment, holds the rule."""

    mode: Mode = "apigateway"

    def identify(self, authorization: str | None, claims: Mapping[str, Any] | None) -> Identity:
        if not claims:
            raise Unauthenticated("no verified token reached the function", token_given=authorization is not None)
        return identity_from_claims(claims)


class _JwtAuth(Authenticator):
    """Verifies the bearer token itself (PyJWT): signature, expiry, issuer, and the access-token claims."""

    algorithms: tuple[str, ...] = ()
    issuer = ""

    def key_for(self, token: str) -> Any:
        raise NotImplementedError

    def check_claims(self, claims: Mapping[str, Any]) -> None:
        """Claims the signature does not prove acceptable (the app client, for Cognito)."""

    def identify(self, authorization: str | None, claims: Mapping[str, Any] | None) -> Identity:
        import jwt

        token = bearer_token(authorization)
        if token is None:
            raise Unauthenticated("a bearer access token is required", token_given=False)
        try:
            verified = jwt.decode(
                token,
                self.key_for(token),
                algorithms=list(self.algorithms),
                issuer=self.issuer,
                options={"require": ["exp", "iss", "sub"], "verify_aud": False},  # Cognito access tokens have no aud
                leeway=30,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", token_given=True) from None
        except jwt.PyJWTError as exc:
            # the library's message names a claim or a decoding step, never the token's content
            raise Unauthenticated(f"the token is not valid ({type(exc).__name__})", token_given=True) from None
        self.check_claims(verified)
        return identity_from_claims(verified)


class DevAuth(_JwtAuth):
    """``readmit serve --auth dev``: HS256 tokens signed with a local secret, shaped like Cognito access tokens."""

    mode: Mode = "dev"
    algorithms = ("HS256",)
    issuer = DEV_ISSUER

    def __init__(self, secret: str) -> None:
        if len(secret) < 32:
            raise AuthConfigError("the dev auth secret must be at least 32 characters")
        self.secret = secret

    def key_for(self, token: str) -> Any:
        return self.secret

    def issue(self, subject: str, scopes: tuple[str, ...] = SCOPES, ttl_seconds: int = 3600) -> str:
        """A token for ``subject`` with ``scopes`` (claims as in a Cognito access token)."""
        import jwt

        now = int(time.time())
        claims = {
            "sub": subject,
            "iss": DEV_ISSUER,
            "client_id": DEV_ISSUER,
            "token_use": "access",
            "scope": " ".join(f"{RESOURCE_SERVER}/{s}" for s in scopes),
            "iat": now,
            "exp": now + ttl_seconds,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self.secret, algorithm="HS256")


class JwksAuth(_JwtAuth):
    """Cognito access tokens verified against the user pool's published keys (RS256). Cognito documents the
    checks: signature by the key whose ``kid`` the JWKS at ``<issuer>/.well-known/jwks.json`` lists, ``exp``,
    ``iss`` equal to the user pool URL, ``token_use`` = access, and ``client_id`` one of the pool's app clients
    ("Verifying a JSON Web Token", Amazon Cognito developer guide:
    https://docs.aws.amazon.com/cognito/latest/developerguide/amazon-cognito-user-pools-using-tokens-verifying-a-jwt.html).
    """

    mode: Mode = "jwks"
    algorithms = ("RS256",)

    def __init__(self, issuer: str, client_ids: frozenset[str], jwks_url: str | None = None) -> None:
        if not issuer.startswith("https://") and not issuer.startswith("http://127.0.0.1"):
            raise AuthConfigError(f"{ENV_ISSUER} must be the user pool's https URL")
        if not client_ids:
            raise AuthConfigError(f"{ENV_CLIENT_IDS} must name at least one app client")
        import jwt

        self.issuer = issuer.rstrip("/")
        self.client_ids = client_ids
        # PyJWKClient caches the key set and fetches it again only for a kid it has not seen (key rotation)
        self._keys = jwt.PyJWKClient(jwks_url or f"{self.issuer}/.well-known/jwks.json", cache_keys=True, timeout=5)

    def key_for(self, token: str) -> Any:
        import jwt

        try:
            return self._keys.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError:
            raise Unauthenticated("the signing keys could not be fetched; try again", token_given=True) from None

    def check_claims(self, claims: Mapping[str, Any]) -> None:
        if claims.get("client_id") not in self.client_ids:
            raise Unauthenticated("the token was issued to an unknown app client", token_given=True)


def dev_secret(create: bool = False) -> str:
    """The dev mode secret: $READMIT_DEV_AUTH_SECRET, else home()/dev-auth.key (created, 0600, when asked)."""
    if value := settings.Settings.from_env().dev_auth_secret:
        return value.get_secret_value()
    path = settings.home() / DEV_KEY_FILE
    if not path.exists():
        if not create:
            raise AuthConfigError(f"no dev auth secret: run `readmit serve --auth dev` first, or set {ENV_DEV_SECRET}")
        _write_private(path, secrets.token_urlsafe(48))
    return path.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")


def from_env(env: Mapping[str, str] = os.environ) -> Authenticator:
    """The authenticator $READMIT_AUTH names (default none); an incomplete setting fails here, at start-up."""
    s = settings.Settings.from_env(env)
    mode = s.auth.strip().lower()
    if mode == "none":
        return Authenticator()
    if mode == "apigateway":
        return ApiGatewayAuth()
    if mode == "dev":
        return DevAuth(s.dev_auth_secret.get_secret_value() if s.dev_auth_secret else dev_secret())
    if mode == "jwks":
        ids = frozenset(c.strip() for c in (s.auth_client_ids or "").split(",") if c.strip())
        return JwksAuth(s.auth_issuer or "", ids)
    raise AuthConfigError(f"{ENV_AUTH} must be one of {', '.join(MODES)}, got {mode!r}")
