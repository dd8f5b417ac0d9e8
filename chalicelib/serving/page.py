"""The clinician page: one HTML document with its CSS and JavaScript inlined at serve time.

One document means one public route (``GET /``) and no asset paths to resolve under an API Gateway stage
prefix. The Content-Security-Policy allows exactly the inlined script and style (by sha256), calls to this
origin only (and, when the page signs in with Cognito, to the hosted UI's token endpoint), and no external
resources, so the page works offline and cannot be made to load anything else.

How the page signs in follows the API's authentication mode (``PageAuth``): not at all (``none``), an access token
pasted into a box (``dev``, ``jwks``), or Cognito's hosted UI with the authorization-code grant and PKCE when API
Gateway passes the user pool domain and the public app client id as stage variables (``authDomain``,
``authClientId``). The settings travel in the document as inert JSON, never as script, so the script's hash and
the CSP stay the same for every deployment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from chalicelib.serving.auth import MODES, PREDICT, RESOURCE_SERVER

HERE = Path(__file__).resolve().parent / "web"  # index.html, app.css, app.js
ASSETS = ("index.html", "app.css", "app.js")
STYLE_SLOT, SCRIPT_SLOT, AUTH_SLOT = "/*APP_CSS*/", "/*APP_JS*/", "/*AUTH_CONFIG*/"
STAGE_DOMAIN, STAGE_CLIENT = "authDomain", "authClientId"  # API Gateway stage variables set by the stack
SIGNIN_SCOPE = f"openid {RESOURCE_SERVER}/{PREDICT}"  # what the app client allows the hosted UI to grant
# Set only by tests that run a fake authorization server on this machine: AWS never serves a page with it on.
LOOPBACK_HTTP_FOR_TESTS = False

# https://<host>[:port] with no path, query, fragment or user info: the hosted UI's prefix domain
# (<prefix>.auth.<region>.amazoncognito.com) or a custom domain. Hostname labels as in RFC 1123; at least one dot.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HTTPS_ORIGIN = re.compile(rf"https://((?:{_LABEL}\.)+{_LABEL})(?::(\d{{1,5}}))?/?", re.ASCII)
_LOOPBACK_ORIGIN = re.compile(r"http://127\.0\.0\.1:(\d{1,5})/?", re.ASCII)
# An app client id as botocore's cognito-idp model has it (shape ClientIdType: pattern [\w+]+, 1-128 characters;
# Java's \w is ASCII): botocore/data/cognito-idp/2016-04-18/service-2.json
_CLIENT_ID = re.compile(r"[A-Za-z0-9_+]{1,128}", re.ASCII)
INVALID_SETTINGS = (
    "This deployment's sign-in settings are not valid, so the page cannot sign you in: paste an access token."
)

log = logging.getLogger("readmit.page")


class PageAuth(BaseModel):
    """How the page gets an access token. Frozen (and so hashable): one built page is cached per value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    signin: Literal["none", "token", "cognito"] = "none"
    domain: str | None = None  # cognito: the hosted UI's origin, https://host[:port], no trailing slash
    client_id: str | None = None  # cognito: the public app client (no secret, so PKCE)
    scope: str = SIGNIN_SCOPE
    notice: str | None = None  # a fixed sentence for the page (never a configured value)

    @model_validator(mode="after")
    def _cognito_needs_both(self) -> PageAuth:
        if (self.signin == "cognito") != (self.domain is not None and self.client_id is not None):
            raise ValueError("signin cognito needs domain and client_id, and only cognito has them")
        return self

    def config_json(self) -> str:
        """The settings as JSON safe inside a <script type="application/json"> element: ``<``, ``>`` and ``&``
        are written as \\u escapes, so no value can close the element or open a comment."""
        text = json.dumps(self.model_dump(), separators=(",", ":"), sort_keys=True)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


NO_SIGNIN = PageAuth()


def _origin(value: str) -> str | None:
    """``value`` as an origin if it is an https URL of a host (or, in tests only, http://127.0.0.1:port)."""
    text = value.strip().lower()
    if m := _HTTPS_ORIGIN.fullmatch(text):
        host, port = m.group(1), m.group(2)
        if len(host) > 253 or (port is not None and not 0 < int(port) < 65536):
            return None
        return f"https://{host}" + (f":{int(port)}" if port and int(port) != 443 else "")
    if LOOPBACK_HTTP_FOR_TESTS and (m := _LOOPBACK_ORIGIN.fullmatch(text)) and 0 < int(m.group(1)) < 65536:
        return f"http://127.0.0.1:{int(m.group(1))}"
    return None


@lru_cache(maxsize=8)
def _warn_invalid(names: tuple[str, ...]) -> None:
    """Once per process and set of names: the values are not logged (they are not ours to echo)."""
    log.warning("the page's sign-in stage variable(s) %s are not valid; the page offers a token box", ", ".join(names))


def page_auth(mode: str, stage_vars: Mapping[str, str]) -> PageAuth:
    """How the page signs in for the API's authentication ``mode`` and the API Gateway ``stage_vars``.

    ``none``: no sign-in. ``dev``: a token box (``readmit token`` prints one). ``jwks`` and ``apigateway``:
    Cognito's hosted UI when both stage variables are present and valid, else a token box; an invalid value is
    never written into the page, which only says that the settings are not valid.
    """
    if mode not in MODES:
        raise ValueError(f"unknown authentication mode {mode!r}")
    if mode == "none":
        return NO_SIGNIN
    domain, client = stage_vars.get(STAGE_DOMAIN), stage_vars.get(STAGE_CLIENT)
    if mode == "dev" or (domain is None and client is None):
        return PageAuth(signin="token")
    origin = _origin(domain) if isinstance(domain, str) else None
    client_ok = isinstance(client, str) and _CLIENT_ID.fullmatch(client) is not None
    if origin is None or not client_ok:
        _warn_invalid(tuple(n for n, ok in ((STAGE_DOMAIN, origin is not None), (STAGE_CLIENT, client_ok)) if not ok))
        return PageAuth(signin="token", notice=INVALID_SETTINGS)
    return PageAuth(signin="cognito", domain=origin, client_id=client)


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@lru_cache(maxsize=16)
def clinician_page(auth: PageAuth = NO_SIGNIN) -> tuple[str, dict[str, str]]:
    """(HTML, response headers) for one sign-in setting. Built once per process and setting: the assets ship with
    the code. Callers must not change the returned headers (copy them)."""
    html, css, js = ((HERE / name).read_text() for name in ASSETS)
    document = html.replace(AUTH_SLOT, auth.config_json()).replace(STYLE_SLOT, css).replace(SCRIPT_SLOT, js)
    # the hosted UI's token endpoint is called with fetch (connect-src); the sign-in itself is a navigation
    connect = "connect-src 'self'" + (f" {auth.domain}" if auth.signin == "cognito" else "")
    csp = "; ".join(
        (
            "default-src 'none'",
            f"script-src {_sha256(js)}",
            f"style-src {_sha256(css)}",
            "img-src 'self' blob:",  # plots arrive as blobs (fetched with the API key)
            connect,
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # the sign-in's code never leaves in a Referer header
        "Cache-Control": "no-cache",
    }
    return document, headers
