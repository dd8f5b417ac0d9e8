"""The clinician page in headless Chromium (Debian's package, driven by Playwright) against the real local server.

One browser per session, one server per module; screenshots go to ``$READMIT_ARTIFACTS/screenshots`` (default
``build/screenshots``). The similar-patients and "why?" panels are checked against the real endpoints when the app
has them, and their "not available" rendering when it does not.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import app as chalice_app
from chalicelib.batch import OUTPUT_COLUMNS
from chalicelib.openapi import document
from chalicelib.registry import Registry
from tests.test_server_e2e import Server, start_server

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


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, served: tuple[Server, str]) -> Iterator[Any]:
    """A fresh tab (own session storage) on the page, with the form built; fails on script errors or CSP blocks."""
    context = browser.new_context(viewport={"width": 1300, "height": 1000}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    tab.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    tab.goto(served[0].url + "/")
    tab.wait_for_selector("body[data-ready='true']")
    yield tab
    context.close()
    assert not problems, problems


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
