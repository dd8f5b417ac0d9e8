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

from chalicelib.api import ReadmitAPI, Request
from chalicelib.api_models import parse_encounter_body
from chalicelib.capacity import capture_curve
from chalicelib.card import to_html
from chalicelib.model_provider import ModelProvider
from chalicelib.openapi import EXAMPLE, document
from chalicelib.service import Predictor

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
