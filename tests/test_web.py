"""The clinician page, the model-card routes and the capacity curve, in-process (test_browser_e2e drives the page)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from chalicelib.model.capacity import capture_curve
from chalicelib.registry.provider import ModelProvider
from chalicelib.serving import page as page_module
from chalicelib.serving.api import ReadmitAPI, Request
from chalicelib.serving.api_models import parse_encounter_body
from chalicelib.serving.auth import ApiGatewayAuth, DevAuth
from chalicelib.serving.card import to_html
from chalicelib.serving.openapi import EXAMPLE, document
from chalicelib.serving.page import INVALID_SETTINGS, PageAuth, clinician_page, page_auth
from chalicelib.serving.service import Predictor

EVENTS = Path(__file__).resolve().parent.parent / "events"


@pytest.fixture
def api(small_bundle: Path) -> ReadmitAPI:
    return ReadmitAPI(Predictor(ModelProvider(model_uri=str(small_bundle))))


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_the_page_is_one_document_whose_csp_allows_exactly_its_inline_script_and_style(api: ReadmitAPI) -> None:
    response = api.page(Request())
    assert response.status == 200 and response.content_type.startswith("text/html")
    html = response.body
    [script] = re.findall(r"<script>(.*?)</script>", html, re.S)
    [style] = re.findall(r"<style>(.*?)</style>", html, re.S)
    csp = response.headers["Content-Security-Policy"]
    assert f"script-src {_csp_hash(script)};" in csp and f"style-src {_csp_hash(style)};" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    # nothing is loaded from another origin: the page works offline
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "https://" not in script and "http://" not in script


class _Labels(HTMLParser):
    """Form controls of a document, and the ids that a <label for> names or a wrapping <label> covers."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[str] = []
        self.labelled: set[str] = set()
        self._in_label = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label":
            self._in_label += 1
            if a.get("for"):
                self.labelled.add(a["for"] or "")
        elif tag in ("input", "select", "textarea"):
            self.controls.append(a.get("id") or "")
            if self._in_label:
                self.labelled.add(a.get("id") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._in_label -= 1


def test_every_form_control_of_the_page_has_a_label(api: ReadmitAPI) -> None:
    parser = _Labels()
    parser.feed(api.page(Request()).body)
    assert len(parser.controls) >= 6  # key, k, same-age, question, file, top-q (the encounter form is built in JS)
    assert set(parser.controls) <= parser.labelled


@pytest.mark.slow
def test_the_openapi_example_is_the_predict_fixture_and_valid_and_codes_carry_their_meaning() -> None:
    fixture = json.loads(json.loads((EVENTS / "api_predict.json").read_text())["body"])
    assert fixture == EXAMPLE
    parse_encounter_body(EXAMPLE)
    doc = document()
    assert doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["example"] == EXAMPLE
    disposition = doc["components"]["schemas"]["Encounter"]["properties"]["discharge_disposition_id"]
    assert disposition["x-labels"]["3"] == "Transferred to SNF" and len(disposition["x-labels"]) == 24
    # expired or hospice (outside the cohort, a 422) are not offered: the page builds its select from this enum
    assert not {11, 13, 14, 19, 20, 21} & set(disposition["enum"]) and "11" not in disposition["x-labels"]
    from openapi_spec_validator import validate

    validate(doc)


def test_the_model_card_route_serves_the_bundles_card_as_markdown_and_safe_html(
    api: ReadmitAPI, small_bundle: Path
) -> None:
    response = api.model_card(Request())
    assert response.status == 200
    body = response.body
    assert body["version"] == small_bundle.name
    assert body["markdown"] == (small_bundle / "model_card.md").read_text()
    html = body["html"]
    assert f"<h2>Model card: readmit {small_bundle.name}</h2>" in html  # the page owns the <h1>
    assert '<img data-plot="roc.png" alt="ROC">' in html and '<img data-plot="calibration.png"' in html
    assert '<th scope="col">ROC-AUC</th>' in html and "<td>age_band</td>" in html  # metrics and subgroup tables
    assert "&lt;30" in html and "<script" not in html


def test_card_markdown_is_escaped_and_only_known_plots_become_images() -> None:
    text = (
        "# Title <b>x</b>\n\nSome <script>alert(1)</script> **bold** and `a<b>*c*` and *em*.\n\n"
        "![secret](plots/../../model.json) ![ROC](plots/roc.png) ![nope](plots/x.png)\n\n"
        "| a | b |\n|---|---|\n| <i>1</i> | 2 |\n\n- one\n- two *em*\n  continued"
    )
    out = to_html(text)
    assert "<h2>Title &lt;b&gt;x&lt;/b&gt;</h2>" in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out and "<script>" not in out
    assert "<strong>bold</strong>" in out and "<code>a&lt;b&gt;*c*</code>" in out and "<em>em</em>." in out
    assert out.count("<img") == 1 and '<img data-plot="roc.png" alt="ROC">' in out
    assert '<th scope="col">a</th>' in out and "<td>&lt;i&gt;1&lt;/i&gt;</td>" in out
    assert "<li>two <em>em</em> continued</li>" in out


def test_a_plot_is_served_as_png_and_other_names_are_404s_naming_the_field(api: ReadmitAPI) -> None:
    response = api.model_plot(Request(), "calibration.png")
    assert response.status == 200 and response.content_type == "image/png"
    assert response.body.startswith(b"\x89PNG\r\n") and response.payload() is response.body
    for name in ("../model.json", "model.json", "..%2Fmodel.ubj", "plots/roc.png", "/etc/passwd", ""):
        response = api.model_plot(Request(), name)
        assert response.status == 404 and response.body["details"][0]["field"] == "name"


def test_a_tampered_plot_is_refused_rather_than_served(small_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / small_bundle.name
    shutil.copytree(small_bundle, copy)
    (copy / "plots" / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\n tampered")
    api = ReadmitAPI(Predictor(ModelProvider(model_uri=str(copy))))
    response = api.model_plot(Request(), "roc.png")
    assert response.status == 404 and "sha256" in response.body["details"][0]["message"]
    assert api.model_plot(Request(), "pr.png").status == 200


def test_the_capture_curve_counts_readmissions_among_the_top_q_percent() -> None:
    # 10 encounters; by falling risk the readmitted ones rank 1st, 4th and 9th (input order shuffled)
    risk = np.linspace(0.9, 0.0, 10)
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0, 1, 0])
    perm = np.random.default_rng(3).permutation(10)
    curve = capture_curve(y[perm], risk[perm], "holdout")
    by_q = {p["q"]: p for p in curve["points"]}
    assert (curve["n"], curve["positives"]) == (10, 3)
    assert by_q[10]["flagged"] == 1 and by_q[10]["capture"] == round(1 / 3, 4) and by_q[10]["precision"] == 1.0
    assert by_q[11]["flagged"] == 2  # ceil: a part of a patient is a whole patient
    assert by_q[40]["capture"] == round(2 / 3, 4) and by_q[40]["precision"] == 0.5 and by_q[40]["min_risk"] == 0.6
    assert by_q[100]["capture"] == 1.0 and by_q[100]["precision"] == 0.3


def test_the_model_route_exposes_the_holdout_capacity_which_beats_random_flagging(
    api: ReadmitAPI, small_bundle: Path
) -> None:
    capacity = api.model_info(Request()).body["capacity"]
    assert capacity["evaluation"] == "holdout" and [p["q"] for p in capacity["points"]] == list(range(1, 101))
    captures = [p["capture"] for p in capacity["points"]]
    assert captures == sorted(captures) and captures[-1] == 1.0
    assert captures[19] > 0.25  # random flagging of 20% catches 20% of readmissions
    assert "## Capacity: flagging the top q% of patients" in (small_bundle / "model_card.md").read_text()


# ---- how the page signs in (issue #16) ----------------------------------------------------------------------------
DOMAIN = "https://readmit-prod-123456789012.auth.us-east-1.amazoncognito.com"
CLIENT = "1example23456789abcdefghij"
STAGE = {"authDomain": DOMAIN, "authClientId": CLIENT}
_CONFIG = re.compile(r'<script type="application/json" id="readmit-auth">(.*?)</script>', re.S)


def _config(html: str) -> dict:
    [text] = _CONFIG.findall(html)
    return json.loads(text)


def test_page_auth_follows_the_mode_and_the_stage_variables() -> None:
    assert page_auth("none", STAGE) == PageAuth(signin="none")
    assert page_auth("dev", STAGE) == PageAuth(signin="token")  # dev tokens are not Cognito's: no hosted UI
    for mode in ("jwks", "apigateway"):
        assert page_auth(mode, {}) == PageAuth(signin="token")
        assert page_auth(mode, STAGE) == PageAuth(signin="cognito", domain=DOMAIN, client_id=CLIENT)
    # a trailing slash, upper case and the default port name the same origin
    same = page_auth(
        "apigateway", {"authDomain": DOMAIN.upper().replace("HTTPS", "https") + ":443/", "authClientId": CLIENT}
    )
    assert same.domain == DOMAIN
    assert page_auth("apigateway", {**STAGE, "authDomain": "https://auth.example.org:8443"}).domain == (
        "https://auth.example.org:8443"
    )  # a custom domain
    with pytest.raises(ValueError):
        page_auth("cognito", STAGE)


@pytest.mark.parametrize(
    ("domain", "client"),
    [
        ("http://readmit.auth.us-east-1.amazoncognito.com", CLIENT),  # not https
        ("https://readmit.auth.us-east-1.amazoncognito.com/oauth2", CLIENT),  # a path
        ("https://readmit.auth.us-east-1.amazoncognito.com/?next=evil", CLIENT),  # a query
        ("https://readmit.auth.us-east-1.amazoncognito.com#evil", CLIENT),  # a fragment
        ("https://evil@readmit.auth.us-east-1.amazoncognito.com", CLIENT),  # user info
        ("https://readmit.auth.us-east-1.amazoncognito.com:99999", CLIENT),  # no such port
        ("https://evilhost", CLIENT),  # no dot: not a public DNS name
        ("https://evil.example.com; script-src *", CLIENT),  # would widen the CSP
        ('https://evil.example.com/"><script>alert(1)</script>', CLIENT),
        ("javascript:alert('evil')", CLIENT),
        ("http://127.0.0.1:9", CLIENT),  # loopback http is for tests only, and off here
        (DOMAIN, None),  # one of the two is missing
        (None, CLIENT),
        (DOMAIN, "evil client"),
        (DOMAIN, "evil<script>alert(1)</script>"),
        (DOMAIN, "evil" + "x" * 125),  # 129 characters: more than ClientIdType's 128
        (DOMAIN, "evil\u00e9"),  # Java's \w in ClientIdType is ASCII
    ],
)
def test_invalid_stage_variables_fall_back_to_the_token_box_and_never_reach_the_page(
    domain: str | None, client: str | None
) -> None:
    stage = {k: v for k, v in (("authDomain", domain), ("authClientId", client)) if v is not None}
    setting = page_auth("apigateway", stage)
    assert setting == PageAuth(signin="token", notice=INVALID_SETTINGS)
    html, headers = clinician_page(setting)
    assert _config(html)["signin"] == "token" and _config(html)["domain"] is None
    csp = headers["Content-Security-Policy"]
    for value in stage.values():
        assert value not in html and value not in csp
    assert "evil" not in html.lower() and "evil" not in csp
    assert "connect-src 'self';" in csp


def test_the_config_is_inert_escaped_json_and_only_cognito_widens_connect_src() -> None:
    hostile = PageAuth(signin="token", notice="</script><script>alert(1)</script><!-- & -->")
    html, headers = clinician_page(hostile)
    [text] = _CONFIG.findall(html)
    assert not {"<", ">", "&"} & set(text)  # escaped as \u003c, \u003e, \u0026: the element cannot be closed
    assert json.loads(text)["notice"] == hostile.notice
    assert html.count("<script") == 2 and "alert(1)</script>" not in html

    cognito_html, cognito_headers = clinician_page(page_auth("apigateway", STAGE))
    assert _config(cognito_html) == {
        "signin": "cognito",
        "domain": DOMAIN,
        "client_id": CLIENT,
        "scope": "openid readmit/predict",
        "notice": None,
    }
    policies = {
        name: headers["Content-Security-Policy"]
        for name, headers in (("cognito", cognito_headers), ("token", headers), ("none", clinician_page(PageAuth())[1]))
    }
    assert f"connect-src 'self' {DOMAIN};" in policies["cognito"]
    assert "connect-src 'self';" in policies["token"] and "connect-src 'self';" in policies["none"]
    for policy in policies.values():  # the sign-in is a navigation, never a form; the script's hash is the same
        assert "form-action 'none'" in policy and "default-src 'none'" in policy
        assert policy.split("; ")[1] == policies["none"].split("; ")[1]
    assert clinician_page(page_auth("apigateway", STAGE)) is clinician_page(page_auth("jwks", STAGE))  # one build


def test_loopback_http_is_accepted_only_while_a_test_allows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {"authDomain": "http://127.0.0.1:8765/", "authClientId": CLIENT}
    assert page_auth("apigateway", fake).signin == "token"
    monkeypatch.setattr(page_module, "LOOPBACK_HTTP_FOR_TESTS", True)
    assert page_auth("apigateway", fake).domain == "http://127.0.0.1:8765"
    assert page_auth("apigateway", {**fake, "authDomain": "http://localhost:8765"}).signin == "token"


def test_the_page_route_signs_in_as_the_api_authenticates(small_bundle: Path) -> None:
    """The wiring in ReadmitAPI.page: the authenticator's mode and the request's stage variables."""
    predictor = Predictor(ModelProvider(model_uri=str(small_bundle)))
    on_aws = ReadmitAPI(predictor, authenticator=ApiGatewayAuth()).page(Request(stage_vars=STAGE))
    assert on_aws.status == 200 and _config(on_aws.body)["signin"] == "cognito"
    assert DOMAIN in on_aws.headers["Content-Security-Policy"]
    dev = ReadmitAPI(predictor, authenticator=DevAuth("s" * 32)).page(Request())
    assert _config(dev.body)["signin"] == "token"
    assert _config(ReadmitAPI(predictor).page(Request(stage_vars=STAGE)).body)["signin"] == "none"
