"""The clinician page in headless Chromium (Debian's package, driven by Playwright) against the real local server.

One browser per session, one server per module; screenshots go to ``$READMIT_ARTIFACTS/screenshots`` (default
``build/screenshots``). The similar-patients and "why?" panels are checked against the real endpoints when the app
has them, and their "not available" rendering when it does not. Signing in is checked against a second server
with ``readmit serve --auth dev`` (a pasted token) and, for Cognito's hosted UI, against a fake authorization server
on this machine that checks the PKCE verifier as Cognito documents it.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import http.client
import json
import math
import os
import re
import secrets
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import app as chalice_app
from chalicelib.batch.local import OUTPUT_COLUMNS
from chalicelib.registry.provider import ModelProvider
from chalicelib.registry.registry import Registry
from chalicelib.serving import page as page_module
from chalicelib.serving.api import ReadmitAPI, Request
from chalicelib.serving.auth import ApiGatewayAuth, DevAuth
from chalicelib.serving.openapi import document
from chalicelib.serving.service import Predictor
from tests.test_server_e2e import Server, start_server

pytestmark = pytest.mark.slow  # drives headless Chromium against a running server

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("READMIT_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("READMIT_ARTIFACTS") or ROOT / "build") / "screenshots"
AXE = Path(os.environ.get("READMIT_AXE") or ROOT / ".tools" / "axe" / "node_modules" / "axe-core" / "axe.min.js")
WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
ROUTES = set(chalice_app.app.routes) | set(document()["paths"])
HAS_SIMILAR, HAS_CHAT = "/similar-patients" in ROUTES, "/chat" in ROUTES


@pytest.fixture(scope="module")
def served(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    tmp = tmp_path_factory.mktemp("browser")
    registry = Registry.open(tmp / "registry")
    version = registry.register(small_bundle)
    registry.promote(version, "browser tests")
    server = start_server(tmp, tmp / "registry", check_interval=60)
    yield server, version
    server.process.terminate()
    server.process.wait(timeout=10)


@contextlib.contextmanager
def open_page(browser: Any, url: str) -> Iterator[Any]:
    """A fresh tab (own session storage) on the page, with the form built; fails on script errors or CSP blocks."""
    context = browser.new_context(viewport={"width": 1300, "height": 1000}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    tab.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    tab.goto(url)
    tab.wait_for_selector("body[data-ready='true']")
    yield tab
    context.close()
    assert not problems, problems


@pytest.fixture
def page(browser: Any, served: tuple[Server, str]) -> Iterator[Any]:
    with open_page(browser, served[0].url + "/") as tab:
        yield tab


def shoot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def submit_and_capture(page: Any, path: str, click: Any) -> dict[str, Any]:
    """Run ``click`` and return the JSON body the page sent to ``path``."""
    with page.expect_request(lambda r: r.url.endswith(path) and r.method == "POST") as request:
        click()
    return request.value.post_data_json


def test_the_example_gets_a_risk_a_tier_and_a_factor_chart_matching_the_api(
    page: Any, served: tuple[Server, str]
) -> None:
    server, version = served
    assert page.input_value("#f-age") == "[70-80)" and page.input_value("#f-num_lab_procedures") == "59"
    sent = submit_and_capture(page, "/predict", lambda: page.get_by_role("button", name="Estimate risk").click())
    page.wait_for_selector("#risk-value")
    status, expected = server.call("POST", "/predict", sent)
    assert status == 200 and expected["model_version"] == version
    assert page.text_content("#risk-value") == f"{100 * expected['risk']:.1f}%"
    assert page.text_content("#risk-tier").lower().startswith(expected["risk_tier"])
    rows = page.locator("#factors tbody tr")
    assert rows.count() == len(expected["top_factors"]) > 0
    for i, factor in enumerate(expected["top_factors"]):
        row = rows.nth(i)
        assert factor["label"] in row.locator("th").text_content()
        assert ("raises" if factor["contribution"] > 0 else "lowers") in row.locator("td").last.text_content()
    # the largest factor has the longest bar: half the track (bars grow from the middle)
    widths = [rows.nth(i).locator(".bar").evaluate("b => b.style.width") for i in range(rows.count())]
    assert float(widths[0][:-1]) == 50 and all(0 < float(w[:-1]) <= 50 for w in widths)
    print(f"\nscreenshot: {shoot(page, 'patient.png')}")


def test_a_bad_value_is_shown_next_to_its_field_and_announced(page: Any) -> None:
    field = page.locator("#f-num_lab_procedures")
    field.fill("999")
    field.press("Enter")  # keyboard submission
    error = page.locator("#err-num_lab_procedures")
    error.wait_for(state="visible")
    assert "between 0 and 200" in error.text_content() and "999" in error.text_content()
    assert field.get_attribute("aria-invalid") == "true"
    assert "err-num_lab_procedures" in field.get_attribute("aria-describedby").split()
    assert page.evaluate("document.activeElement.id") == "error-summary"  # focus moves to the summary
    assert page.locator("#error-summary a[href='#f-num_lab_procedures']").count() == 1
    assert page.locator("#risk-value").count() == 0
    shoot(page, "field-error.png")
    field.fill("59")
    page.get_by_role("button", name="Estimate risk").click()
    page.wait_for_selector("#risk-value")
    assert field.get_attribute("aria-invalid") is None and not error.is_visible()


def test_the_api_key_is_kept_for_the_tab_and_sent_as_x_api_key(page: Any) -> None:
    page.locator("details.key summary").click()
    page.get_by_label("API key (needed on AWS, not locally)").fill("k-123")
    page.get_by_role("button", name="Use for this tab").click()
    assert page.evaluate("sessionStorage.getItem('readmit.apiKey')") == "k-123"
    with page.expect_request(lambda r: r.url.endswith("/predict")) as request:
        page.get_by_role("button", name="Estimate risk").click()
    assert request.value.headers.get("x-api-key") == "k-123"


def test_without_authentication_the_page_offers_no_sign_in_and_sends_no_token(page: Any) -> None:
    assert page.locator("#signin").count() == 1 and page.locator("#token-box").count() == 1
    assert page.is_hidden("#signin") and page.is_hidden("#token-box")
    with page.expect_request(lambda r: r.url.endswith("/predict")) as request:
        page.get_by_role("button", name="Estimate risk").click()
    page.wait_for_selector("#risk-value")
    assert "authorization" not in request.value.headers


@pytest.fixture(scope="module")
def upload(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real encounters, one with a bad age band and one outside the cohort, with their outcomes."""
    frame = pd.read_csv(sample_csv, dtype=str, keep_default_na=False, na_filter=False)
    rows = frame.head(40).copy()
    rows.iloc[5, rows.columns.get_loc("age")] = "[999-1000)"
    hospice = frame[frame["discharge_disposition_id"] == "11"].head(1)
    path = tmp_path_factory.mktemp("upload") / "ward.csv"
    pd.concat([rows, hospice]).to_csv(path, index=False)
    return path


def test_a_csv_upload_is_scored_sorted_capacity_planned_and_downloaded(
    page: Any, served: tuple[Server, str], upload: Path
) -> None:
    server, version = served
    page.get_by_role("tab", name="Batch file").click()
    page.get_by_label("CSV file in the UCI format", exact=False).set_input_files(str(upload))
    page.get_by_role("button", name="Score the file").click()
    page.wait_for_selector("#scored-table")

    frame = pd.read_csv(upload, dtype=str, keep_default_na=False, na_filter=False)
    encounters = frame.drop(columns=["readmitted"]).to_dict("records")
    status, direct = server.call("POST", "/predict/batch?explain=false", {"encounters": encounters})
    assert status == 200
    risks = {i: r["prediction"]["risk"] for i, r in enumerate(direct["results"]) if "prediction" in r}
    assert len(risks) == len(frame) - 2

    shown = [float(t[:-1]) for t in page.locator("#scored-table tbody td:nth-child(3)").all_text_contents() if t]
    assert len(shown) == len(risks) and shown == sorted(shown, reverse=True)

    flagged = math.ceil(0.2 * len(risks))
    assert f"{flagged} of the {len(risks)} scored encounters" in page.text_content("#capacity-file")
    capacity = server.call("GET", "/model")[1]["capacity"]
    assert f"caught {100 * capacity['points'][19]['capture']:.1f}%" in page.text_content("#capacity-holdout")
    assert "readmissions within 30 days are among the flagged" in page.text_content("#capacity-labels")
    page.get_by_label("Flag the top (%)").fill("10")
    assert f"{math.ceil(0.1 * len(risks))} of the {len(risks)}" in page.text_content("#capacity-file")
    page.get_by_label("Flag the top (%)").fill("20")
    print(f"\nscreenshot: {shoot(page, 'batch.png')}")

    with page.expect_download() as download:
        page.get_by_role("button", name="Download the scored CSV").click()
    saved = SCREENSHOTS.parent / "scored-ward.csv"
    shutil.copy(download.value.path(), saved)
    assert download.value.suggested_filename == "scored-ward.csv"
    with saved.open(newline="") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == list(OUTPUT_COLUMNS)
    assert [r["encounter_id"] for r in got] == frame["encounter_id"].tolist()  # input order, every row
    assert {r["model_version"] for r in got} == {version}
    for i, row in enumerate(got):
        if i in risks:
            assert row["status"] == "scored" and abs(float(row["risk"]) - risks[i]) < 1e-6 and row["risk_tier"]
    assert got[5]["status"] == "invalid" and "age" in got[5]["reason"] and got[5]["risk"] == ""
    assert got[-1]["status"] == "excluded" and "discharge_disposition_id" in got[-1]["reason"]


def test_a_file_larger_than_one_batch_is_sent_in_chunks_of_500(page: Any, sample_csv: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(sample_csv, dtype=str, keep_default_na=False, na_filter=False).head(620)
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False)
    sizes: list[int] = []
    page.on(
        "request", lambda r: sizes.append(len(r.post_data_json["encounters"])) if "/predict/batch" in r.url else None
    )
    page.get_by_role("tab", name="Batch file").click()
    page.locator("#csv-file").set_input_files(str(path))
    page.get_by_role("button", name="Score the file").click()
    page.wait_for_selector("#scored-table")
    assert sizes == [500, 120]
    scored = int((~frame["discharge_disposition_id"].isin(["11", "13", "14", "19", "20", "21"])).sum())
    assert page.text_content("#batch-status").startswith(f"Scored {scored} of 620 rows")
    assert "the first 200 of 620" in page.text_content("#scored-table caption")


def test_the_model_tab_shows_the_champion_version_metrics_and_plots_by_keyboard(
    page: Any, served: tuple[Server, str]
) -> None:
    _, version = served
    page.get_by_role("tab", name="One patient").focus()
    page.keyboard.press("End")  # WAI-ARIA tabs: End selects the last tab
    assert page.get_attribute("#tab-model", "aria-selected") == "true" and page.is_visible("#panel-model")
    assert page.evaluate("document.activeElement.id") == "tab-model"
    page.wait_for_selector("#model-version")
    assert page.text_content("#model-version") == version
    for plot in ("roc.png", "calibration.png"):
        img = page.locator(f"img[data-plot='{plot}'][src^='blob:']")
        img.wait_for()
        assert img.evaluate("i => i.complete && i.naturalWidth > 100")
    assert page.locator("#model-card td", has_text="age_band").count() > 0  # the subgroup table
    assert page.locator("#model-card h3", has_text="Capacity").count() == 1
    page.keyboard.press("ArrowRight")  # wraps round to the first tab
    assert page.get_attribute("#tab-patient", "aria-selected") == "true"
    page.get_by_role("tab", name="Model").click()
    print(f"\nscreenshot: {shoot(page, 'model.png')}")


def axe_violations(page: Any, view: str) -> list[str]:
    """WCAG 2.1 A/AA violations that axe-core finds in what is on screen now (labels, contrast, ARIA, …)."""
    result = page.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", WCAG_AA)
    return [f"{view}: {v['id']} ({v['impact']}) {[n['target'] for n in v['nodes']][:3]}" for v in result["violations"]]


def test_every_view_passes_axe_core_wcag_2_1_aa_checks(browser: Any, served: tuple[Server, str], upload: Path) -> None:
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: `make browser` installs axe-core")
    context = browser.new_context(viewport={"width": 1300, "height": 1000}, bypass_csp=True)  # to inject axe
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(served[0].url + "/")
    page.wait_for_selector("body[data-ready='true']")
    page.add_script_tag(path=str(AXE))
    found = []
    page.get_by_role("button", name="Estimate risk").click()
    page.wait_for_selector("#risk-value")
    page.get_by_role("button", name="Ask").click()
    page.wait_for_selector("#chat-out p")
    found += axe_violations(page, "one patient")
    page.locator("#f-num_lab_procedures").fill("999")
    page.get_by_role("button", name="Estimate risk").click()
    page.wait_for_selector("#err-num_lab_procedures:not([hidden])")
    found += axe_violations(page, "field error")
    page.get_by_role("tab", name="Batch file").click()
    page.locator("#csv-file").set_input_files(str(upload))
    page.get_by_role("button", name="Score the file").click()
    page.wait_for_selector("#scored-table")
    found += axe_violations(page, "batch")
    page.get_by_role("tab", name="Model").click()
    page.wait_for_selector("img[data-plot='importance.png'][src^='blob:']")
    found += axe_violations(page, "model")
    context.close()
    assert not found, "\n".join(found)


@pytest.mark.skipif(not HAS_SIMILAR, reason="the app has no /similar-patients route yet")
def test_the_similar_patients_panel_shows_what_the_api_finds(page: Any, served: tuple[Server, str]) -> None:
    server, _ = served
    sent = submit_and_capture(
        page, "/similar-patients", lambda: page.get_by_role("button", name="Estimate risk").click()
    )
    page.wait_for_selector("#similar-summary, #similar-unavailable")
    status, expected = server.call("POST", "/similar-patients", sent)
    if status == 503:  # no index built for this server: the page says so, with the API's reason
        shown = page.text_content("#similar-unavailable")
        assert "not available" in shown and all(d["message"] in shown for d in expected.get("details", [])[:1])
        return
    assert status == 200
    assert page.text_content("#similar-summary").startswith(f"{expected['count']} similar past patient")
    rows = page.locator("#similar-table tbody tr")
    assert rows.count() == len(expected["neighbours"])
    assert rows.first.locator("td").first.text_content() == f"{expected['neighbours'][0]['similarity']:.3f}"
    shoot(page, "similar.png")


@pytest.mark.skipif(not HAS_CHAT, reason="the app has no /chat route yet")
def test_the_why_box_shows_the_answer_and_where_it_came_from(page: Any, served: tuple[Server, str]) -> None:
    server, _ = served
    page.get_by_role("button", name="Estimate risk").click()
    page.wait_for_selector("#risk-value")
    sent = submit_and_capture(page, "/chat", lambda: page.get_by_role("button", name="Ask").click())
    page.wait_for_selector("#chat-answer, #chat-unavailable, #chat-error")
    status, expected = server.call("POST", "/chat", sent)
    assert status == 200 and page.locator("#chat-answer").text_content().strip()
    source = page.locator("#chat-source")
    assert source.get_attribute("data-source") == expected["source"]
    assert ("language model" if expected["source"] == "bedrock" else "template") in source.text_content()
    shoot(page, "why.png")


@pytest.mark.skipif(HAS_SIMILAR and HAS_CHAT, reason="both routes exist: the panels are tested against them")
def test_without_the_similar_and_chat_routes_the_panels_say_not_available(page: Any) -> None:
    page.get_by_role("button", name="Estimate risk").click()
    page.wait_for_selector("#risk-value")
    if not HAS_SIMILAR:
        assert "not available" in page.locator("#similar-unavailable").text_content()
    if not HAS_CHAT:
        page.get_by_role("button", name="Ask").click()
        assert "not available" in page.locator("#chat-unavailable").text_content()


# ---- signing in (issue #16) -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dev_served(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, DevAuth]]:
    """`readmit serve --auth dev` with a known secret, so the tests mint the tokens a user would paste."""
    tmp = tmp_path_factory.mktemp("browser-dev-auth")
    registry = Registry.open(tmp / "registry")
    registry.promote(registry.register(small_bundle), "dev auth tests")
    secret = secrets.token_urlsafe(32)  # 43 characters; DevAuth wants 32 or more
    with pytest.MonkeyPatch.context() as env:  # start_server hands os.environ to the server process
        env.setenv("READMIT_DEV_AUTH_SECRET", secret)
        env.setenv("READMIT_AUTH", "dev")
        server = start_server(tmp, tmp / "registry", 60, "--auth", "dev")
    yield server, DevAuth(secret)
    server.process.terminate()
    server.process.wait(timeout=10)


def use_token(page: Any, token: str) -> None:
    """Paste ``token`` into the access token box, as a user would."""
    if page.get_attribute("#token-box", "open") is None:
        page.locator("#token-box summary").click()
    page.get_by_label("Access token", exact=False).fill(token)
    page.get_by_role("button", name="Use this token").click()


def test_with_dev_auth_a_pasted_token_scores_and_the_model_tab_needs_admin(
    browser: Any, dev_served: tuple[Server, DevAuth]
) -> None:
    from playwright.sync_api import expect

    server, issuer = dev_served
    with open_page(browser, server.url + "/") as page:
        assert page.is_visible("#token-box") and page.is_hidden("#signin")
        with page.expect_request(lambda r: r.url.endswith("/predict")) as request:
            page.get_by_role("button", name="Estimate risk").click()
        assert "authorization" not in request.value.headers
        expect(page.locator("#result-error")).to_contain_text("No risk: Sign in first: the API needs a sign-in (401)")
        assert page.is_visible("#access-token")  # the 401 opened the token box
        assert page.is_hidden("#error-summary")  # nothing in the form is wrong

        nurse = issuer.issue("nurse-1", ("predict",))
        use_token(page, nurse)
        assert page.evaluate("JSON.parse(sessionStorage.getItem('readmit.token')).token") == nurse
        assert page.evaluate("localStorage.length") == 0 and page.input_value("#access-token") == ""
        with page.expect_request(lambda r: r.url.endswith("/predict")) as request:
            page.get_by_role("button", name="Estimate risk").click()
        assert request.value.headers["authorization"] == f"Bearer {nurse}"
        page.wait_for_selector("#risk-value")

        page.get_by_role("tab", name="Model").click()
        expect(page.locator("#model-error")).to_contain_text("your sign-in does not allow this (needs readmit/admin)")
        assert page.locator("#model-error.notice").count() == 1  # a fact about the sign-in, not a broken tab
        use_token(page, issuer.issue("admin-1", ("predict", "admin")))  # with the Model tab open: it loads now
        page.wait_for_selector("#model-version")
        shoot(page, "model-admin.png")

        use_token(page, issuer.issue("nurse-1", ("predict",), ttl_seconds=-120))
        page.get_by_role("tab", name="One patient").click()
        page.get_by_role("button", name="Estimate risk").click()
        expect(page.locator("#result-error")).to_contain_text("Sign in again: the API did not accept your sign-in")
        expect(page.locator("#token-note")).to_contain_text("Sign in again")


def test_the_token_box_and_the_sign_in_notices_pass_axe_core(browser: Any, dev_served: tuple[Server, DevAuth]) -> None:
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: `make browser` installs axe-core")
    server, issuer = dev_served
    context = browser.new_context(viewport={"width": 1300, "height": 1000}, bypass_csp=True)  # to inject axe
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready='true']")
    page.add_script_tag(path=str(AXE))
    page.get_by_role("button", name="Estimate risk").click()
    page.wait_for_selector("#result-error")
    found = axe_violations(page, "401 with the token box open")
    use_token(page, issuer.issue("nurse-1", ("predict",)))
    page.get_by_role("tab", name="Model").click()
    page.wait_for_selector("#model-error")
    found += axe_violations(page, "model tab without admin")
    context.close()
    assert not found, "\n".join(found)


def b64url_sha256(text: str) -> str:
    """RFC 7636 section 4.2, S256: BASE64URL(SHA256(ASCII(code_verifier))) without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode("ascii")).digest()).rstrip(b"=").decode()


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class FakeCognito:
    """The three hosted UI endpoints the page uses, as the Amazon Cognito developer guide documents them:
    GET /oauth2/authorize redirects to the callback with ``code`` and ``state``; POST /oauth2/token (form-encoded)
    redeems a code once, for the same client and redirect URI, only with the verifier whose S256 challenge came
    with the authorization request, and answers with id_token, access_token, refresh_token, token_type Bearer and
    expires_in, with ``Access-Control-Allow-Origin: *``; GET /logout redirects to ``logout_uri``. No preflight
    (OPTIONS) is answered: the page's token request must stay a simple cross-origin request."""

    def __init__(self, client_id: str, mint: Callable[[], str]) -> None:
        self.client_id, self.mint = client_id, mint
        self.authorize: list[dict[str, str]] = []
        self.token: list[dict[str, str]] = []
        self.issued: list[str] = []
        self.logout: list[dict[str, str]] = []
        self._codes: dict[str, dict[str, str]] = {}
        self.server = _serve(self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any] | None = None, location: str | None = None) -> None:
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                data = json.dumps(body).encode() if body is not None else b""
                self.send_header("Content-Type", "application/json")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
                if url.path == "/oauth2/authorize":
                    fake.authorize.append(params)
                    wanted = ("response_type", "client_id", "redirect_uri", "state", "code_challenge")
                    if any(not params.get(k) for k in wanted) or params["client_id"] != fake.client_id:
                        return self._answer(400, {"error": "invalid_request"})
                    if params["response_type"] != "code" or params.get("code_challenge_method") != "S256":
                        return self._answer(400, {"error": "unsupported_response_type"})
                    code = secrets.token_urlsafe(16)
                    fake._codes[code] = params
                    back = urllib.parse.urlencode({"code": code, "state": params["state"]})
                    return self._answer(302, location=f"{params['redirect_uri']}?{back}")
                if url.path == "/logout":
                    fake.logout.append(params)
                    if params.get("client_id") != fake.client_id or not params.get("logout_uri"):
                        return self._answer(400, {"error": "invalid_request"})
                    return self._answer(302, location=params["logout_uri"])
                return self._answer(404, {"error": "not_found"})

            def do_POST(self) -> None:
                if self.path != "/oauth2/token":
                    return self._answer(404, {"error": "not_found"})
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                form = dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))
                form["content-type"] = self.headers.get("Content-Type", "")
                fake.token.append(form)
                grant = fake._codes.pop(form.get("code", ""), None)  # a code is redeemed once
                if not form["content-type"].startswith("application/x-www-form-urlencoded"):
                    return self._answer(400, {"error": "invalid_request"})
                if form.get("grant_type") != "authorization_code" or grant is None:
                    return self._answer(400, {"error": "invalid_grant"})
                if form.get("client_id") != grant["client_id"] or form.get("redirect_uri") != grant["redirect_uri"]:
                    return self._answer(400, {"error": "invalid_grant"})
                if b64url_sha256(form.get("code_verifier", "")) != grant["code_challenge"]:
                    return self._answer(400, {"error": "invalid_grant"})
                access = fake.mint()
                fake.issued.append(access)
                body = {
                    "id_token": "id." + secrets.token_urlsafe(8),
                    "access_token": access,
                    "refresh_token": "refresh." + secrets.token_urlsafe(8),
                    "token_type": "Bearer",
                    "expires_in": 3600,
                }
                return self._answer(200, body)

        return Handler


class FakeStage:
    """API Gateway's part: the stage serves the page through ReadmitAPI with its stage variables (as the Lambda
    proxy event carries them) and passes every other request on to the API, recording its Authorization header."""

    def __init__(self, api: ReadmitAPI, stage_vars: dict[str, str], upstream: Server) -> None:
        self.seen: list[tuple[str, str | None]] = []
        stage = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                if self.command == "GET" and urllib.parse.urlsplit(self.path).path == "/":
                    response = api.page(Request(stage_vars=stage_vars))
                    status, headers, data = response.status, response.headers, response.body.encode()
                    headers = {**headers, "Content-Type": response.content_type}
                else:
                    stage.seen.append((self.path, self.headers.get("Authorization")))
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                    forward = {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() in ("content-type", "accept", "authorization")
                    }
                    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=30)
                    conn.request(self.command, self.path, body=body, headers=forward)
                    answer = conn.getresponse()
                    status, data = answer.status, answer.read()
                    headers = {
                        k: v for k, v in answer.getheaders() if k.lower() in ("content-type", "www-authenticate")
                    }
                    conn.close()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _relay

        self.server = _serve(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"


def test_cognito_sign_in_with_pkce_then_calls_carry_the_access_token_and_sign_out_clears_it(
    browser: Any, dev_served: tuple[Server, DevAuth], small_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import expect

    upstream, issuer = dev_served
    client = "4example5clientid6789abcde"
    # the fake hands out dev tokens, so the dev server behind the fake stage accepts what the page signed in with
    cognito = FakeCognito(client, lambda: issuer.issue("clinician-1", ("predict",)))
    monkeypatch.setattr(page_module, "LOOPBACK_HTTP_FOR_TESTS", True)
    api = ReadmitAPI(Predictor(ModelProvider(model_uri=str(small_bundle))), authenticator=ApiGatewayAuth())
    stage = FakeStage(api, {"authDomain": cognito.url, "authClientId": client}, upstream)
    page_url = stage.url + "/"
    try:
        with open_page(browser, page_url) as page:
            expect(page.locator("#auth-status")).to_have_text("Not signed in")
            assert page.is_hidden("#token-box") and page.is_hidden("#sign-out")
            page.get_by_role("button", name="Sign in").click()  # to the hosted UI and back with ?code=…&state=…
            expect(page.locator("#auth-status")).to_have_text("Signed in")
            page.wait_for_selector("body[data-ready='true']")
            assert page.url == page_url  # code and state are gone from the address bar

            [asked] = cognito.authorize
            assert asked["response_type"] == "code" and asked["client_id"] == client
            assert asked["redirect_uri"] == page_url and asked["scope"] == "openid readmit/predict"
            assert asked["code_challenge_method"] == "S256" and len(asked["state"]) >= 16
            [sent] = cognito.token
            assert sent["content-type"].startswith("application/x-www-form-urlencoded")
            assert sent["grant_type"] == "authorization_code" and sent["client_id"] == client
            assert sent["redirect_uri"] == page_url
            verifier = sent["code_verifier"]
            assert re.fullmatch(r"[A-Za-z0-9\-._~]{43,128}", verifier)  # RFC 7636 section 4.1
            assert b64url_sha256(verifier) == asked["code_challenge"]
            [token] = cognito.issued
            stored = page.evaluate("JSON.parse(sessionStorage.getItem('readmit.token'))")
            assert stored["token"] == token and stored["expires"] > 0
            assert page.evaluate("sessionStorage.getItem('readmit.pkce')") is None  # the verifier is used once
            assert page.evaluate("localStorage.length") == 0
            assert "clinician-1" not in page.inner_text("body")  # nobody's name is shown, only "Signed in"

            with page.expect_request(lambda r: r.url.endswith("/predict")) as request:
                page.get_by_role("button", name="Estimate risk").click()
            assert request.value.headers["authorization"] == f"Bearer {token}"
            page.wait_for_selector("#risk-value")
            assert ("/predict", f"Bearer {token}") in stage.seen
            shoot(page, "signed-in.png")

            page.get_by_role("button", name="Sign out").click()  # to /logout and back to the page
            deadline = time.monotonic() + 15
            while not cognito.logout:  # left for /logout …
                assert time.monotonic() < deadline, "the page never went to /logout"
                time.sleep(0.05)
            page.wait_for_url(page_url)  # … and came back: a new page, whose form is built again before a click
            page.wait_for_selector("body[data-ready='true']")
            expect(page.locator("#auth-status")).to_have_text("Not signed in")
            assert cognito.logout == [{"client_id": client, "logout_uri": page_url}]
            assert page.evaluate("sessionStorage.getItem('readmit.token')") is None

            # a token past its expiry is dropped before a call, not sent
            page.evaluate(
                "sessionStorage.setItem('readmit.token', JSON.stringify({token: 'old', expires: Date.now() - 1}))"
            )
            with page.expect_request(lambda r: r.url.endswith("/predict")) as request:
                page.get_by_role("button", name="Estimate risk").click()
            assert "authorization" not in request.value.headers
            expect(page.locator("#auth-status")).to_have_text("Your sign-in has expired: sign in again.")
            expect(page.get_by_role("button", name="Sign in again")).to_be_visible()
            assert page.evaluate("sessionStorage.getItem('readmit.token')") is None

            # an answer with another state than the sign-in under way in this tab is refused without a token request
            page.evaluate(
                "sessionStorage.setItem('readmit.pkce', JSON.stringify({verifier: 'v'.repeat(64), state: 'ours'}))"
            )
            page.goto(page_url + "?code=forged&state=forged")
            expect(page.locator("#auth-status")).to_contain_text("Sign-in failed")
            assert len(cognito.token) == 1 and page.url == page_url
            assert page.evaluate("sessionStorage.getItem('readmit.token')") is None
    finally:
        stage.server.shutdown()
        cognito.server.shutdown()
