"""Hostile request bodies (issue #20): every one gets a 4xx in the error format, never a 500, and nothing a caller
chose (an unknown field's name, control characters, a 60 KB key) reaches a log line or a metric label."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.registry.provider import ModelProvider
from chalicelib.serving.api import ReadmitAPI, Request, loggable_fields
from chalicelib.serving.api_models import MAX_BODY_BYTES, MAX_JSON_DEPTH, parse_json
from chalicelib.serving.errors import Detail, safe_text
from chalicelib.serving.service import Predictor
from chalicelib.similar.embedding import LocalEmbedder
from chalicelib.similar.numpy_store import NumpyStore
from chalicelib.similar.search import SimilarPatients
from tests.replay import fixture, proxy, run

ROUTES = ("/predict", "/predict/batch", "/similar-patients", "/chat")
DIGITS = sys.get_int_max_str_digits()
DEEP = b"[" * 1000 + b"]" * 1000  # json's decoder raises RecursionError here
DEEP_IN_A_FIELD = b'{"time_in_hospital": ' + b"[" * 900 + b"]" * 900 + b"}"  # parses, then repr() recursed
BIG_INT = b'{"time_in_hospital": ' + b"1" * (DIGITS + 1) + b"}"  # int(): ValueError past the limit


def example() -> dict[str, Any]:
    return json.loads(fixture("api_predict.json")["body"])


def lambda_call(route: str, body: bytes, model: Path | None = None, query: dict | None = None) -> tuple[int, Any]:
    """The route through template.yaml's ApiFunction (app.py's Chalice app), as API Gateway would call it."""
    event = fixture("api_predict.json")
    # a service client's claims (readmit/predict and readmit/admin): every route is open to it, so only the body
    context = {**fixture("api_predict_batch.json")["requestContext"], "resourcePath": route, "path": route}
    event = {**event, "resource": route, "path": route, "body": body.decode(), "requestContext": context}
    event["queryStringParameters"] = query
    env = {"READMIT_MODEL": str(model)} if model else {"READMIT_REGISTRY": "/nonexistent/registry"}
    return proxy(run("ApiFunction", event, **env))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("body", "words"),
    [
        (DEEP, f"nested deeper than {MAX_JSON_DEPTH} levels"),
        (b'{"encounters": ' + DEEP + b"}", f"nested deeper than {MAX_JSON_DEPTH} levels"),
        (DEEP_IN_A_FIELD, f"nested deeper than {MAX_JSON_DEPTH} levels"),
        (BIG_INT, f"more than {DIGITS} digits"),
        (b'{"k": -' + b"9" * (DIGITS + 5) + b"}", f"more than {DIGITS} digits"),
        (b'{"time_in_hospital": NaN}', "NaN is not a JSON number"),
        (b'{"\\ud800": 1}', "lone UTF-16 surrogate"),
        (b'{"question": "\\udfff"}', "lone UTF-16 surrogate"),
    ],
)
@pytest.mark.slow
def test_json_that_breaks_the_parser_is_a_400_naming_the_problem_on_the_lambda_path(
    route: str, body: bytes, words: str
) -> None:
    status, out = lambda_call(route, body)
    assert status == 400, out
    assert out["details"][0]["field"] == "body" and words in out["details"][0]["message"]
    assert out["error"] in ("unacceptable JSON", "malformed JSON")


def test_a_number_too_long_to_convert_inside_a_string_field_is_a_422_naming_the_field(small_bundle: Path) -> None:
    # CSV text for numbers is read by /predict/batch (the page sends an uploaded file's cells); /predict takes JSON
    # numbers only, as its document says, and names the field without converting the text.
    encounter = {**example(), "time_in_hospital": "7" * (DIGITS + 1), "admission_type_id": "1" * 5000}
    status, out = lambda_call("/predict/batch", json.dumps({"encounters": [encounter]}).encode(), small_bundle)
    assert status == 200 and out["invalid"] == 1
    messages = {d["field"].removeprefix("encounters[0]."): d["message"] for d in out["results"][0]["details"]}
    assert messages["time_in_hospital"] == f"must be between 1 and 14, got a number of {DIGITS + 1} digits"
    assert messages["admission_type_id"].startswith("unknown code a number of 5000 digits")
    status, out = lambda_call("/predict", json.dumps(encounter).encode(), small_bundle)
    messages = {d["field"]: d["message"] for d in out["details"]}
    assert status == 422 and messages["time_in_hospital"].startswith("must be a JSON number, got the text '7777")
    assert len(messages["admission_type_id"]) < 200  # the text is shown capped, not 5,000 digits


@pytest.mark.parametrize("route", ROUTES)
def test_an_all_zero_diagnosis_is_refused_naming_it_not_a_500_from_the_explanation(
    route: str, small_bundle: Path
) -> None:
    # found by the contract fuzz: /chat explained diag_2 "0", whose ICD-9 chapter does not exist
    encounter = {**example(), "diag_2": "0"}
    body = {"encounter": encounter, "question": "why?"} if route == "/chat" else encounter
    body = {"encounter": encounter} if route == "/similar-patients" else body
    body = {"encounters": [encounter]} if route == "/predict/batch" else body
    status, out = lambda_call(route, json.dumps(body).encode(), small_bundle)
    details = out["results"][0]["details"] if route == "/predict/batch" else out["details"]
    assert status == (200 if route == "/predict/batch" else 422)
    assert [d["field"].rsplit(".", 1)[-1] for d in details] == ["diag_2"] and "ICD-9" in details[0]["message"]


def test_nesting_up_to_the_limit_is_parsed_and_one_level_more_is_refused() -> None:
    def nested(levels: int) -> bytes:
        return b'{"a": ' * (levels - 1) + b"{}" + b"}" * (levels - 1)

    assert parse_json(nested(MAX_JSON_DEPTH), MAX_BODY_BYTES)
    with pytest.raises(Exception, match="nested deeper") as caught:
        parse_json(nested(MAX_JSON_DEPTH + 1), MAX_BODY_BYTES)
    assert caught.value.status == 400  # type: ignore[attr-defined]
    assert parse_json(b'["\\ud83d\\ude00"]', MAX_BODY_BYTES) == ["\N{GRINNING FACE}"]  # a surrogate *pair* is text


# ---- the parser, fuzzed -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def no_model_api(tmp_path_factory: pytest.TempPathFactory) -> ReadmitAPI:
    """Every route parses before it needs a model or an index: a valid body ends in a 503, anything else in a 4xx."""
    tmp = tmp_path_factory.mktemp("fuzz")
    similar = SimilarPatients(LocalEmbedder(), NumpyStore(tmp / "empty-index"))
    return ReadmitAPI(Predictor(ModelProvider(registry_uri=str(tmp / "empty"))), similar)


def _route(api: ReadmitAPI, route: str) -> Any:
    return {
        "/predict": api.predict,
        "/predict/batch": api.predict_batch,
        "/similar-patients": api.similar_patients,
        "/chat": api.chat,
    }[route]


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["?", "", "428", "[70-80)", "Caucasian", "No", "Up", ">8"]),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from([*example(), "encounter", "encounters", "question", "k"]) | st.text(), inner)
    ),
    max_leaves=30,
)
_hostile = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda e, n: json.dumps({**e}).encode().replace(b"6", b"[" * n, 1), st.just(example()), st.integers(1, 3000)
    ),
    st.builds(lambda n, d: b"[" * n + d + b"]" * n, st.integers(0, 2000), st.sampled_from([b"1", b"{}", b'"x"', b""])),
    st.builds(lambda n: b'{"time_in_hospital": ' + b"9" * n + b"}", st.integers(4000, 4400)),
    st.builds(lambda s: json.dumps({**example(), "gender": s}).encode(), st.text()),
    st.sampled_from([b"NaN", b"-Infinity", b'{"a": "\\ud800"}', b'"\\udc00"', b"\xff\xfe", b"\x00", b"  "]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_hostile, route=st.sampled_from(ROUTES), ctype=st.sampled_from(["application/json", "text/plain"]))
@pytest.mark.slow
def test_any_body_gets_a_4xx_or_the_no_model_503_in_the_error_format_never_a_500(
    no_model_api: ReadmitAPI, body: bytes, route: str, ctype: str
) -> None:
    response = _route(no_model_api, route)(Request(body, {"Content-Type": ctype}, {}, "fuzz"))
    assert response.status in (400, 413, 415, 422, 503), (response.status, response.body)
    out = json.loads(response.text())  # serializable: what the adapter sends
    assert isinstance(out["error"], str) and out["error"] != "internal error" and out["request_id"] == "fuzz"
    assert all(set(d) == {"field", "message"} for d in out["details"]) and out["details"]


# ---- logs ------------------------------------------------------------------------------------------------------------
PHI_KEY = "MRN 69384114 John Smith"
LONG_KEY = "K" * 60_000
CONTROL_KEY = 'evil\n{"level":"ERROR","message":"forged"}\x1b[31m\u202e'


def hostile_encounter() -> dict[str, Any]:
    return {**example(), PHI_KEY: 1, LONG_KEY: 2, CONTROL_KEY: 3}


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/predict", hostile_encounter()),
        ("/predict/batch", {"encounters": [hostile_encounter()], PHI_KEY: 1}),
        ("/similar-patients", {"encounter": hostile_encounter(), PHI_KEY: 1, "age": "[70-80)"}),
        ("/chat", {"encounter": hostile_encounter(), "question": "why?", CONTROL_KEY: 1, "age": "[70-80)"}),
    ],
)
def test_unknown_field_names_never_reach_the_log_only_their_count_does(
    route: str, body: dict, small_bundle: Path, log_output: io.StringIO
) -> None:
    status, out = lambda_call(route, json.dumps(body).encode(), small_bundle)
    assert status in (200, 422), out
    logs = log_output.getvalue()
    assert "request" in logs  # the log was captured
    assert "69384114" not in logs and "John Smith" not in logs and "KKKKKKKK" not in logs
    assert "evil" not in logs and "forged" not in logs and "\x1b" not in logs and "\u202e" not in logs
    assert max(len(line) for line in logs.splitlines()) < 2000
    if status == 422:  # the per-item errors of a batch are in its 200, not in the log
        rejected = next(json.loads(line) for line in logs.splitlines() if '"request rejected"' in line)
        assert rejected["unknown_fields"] == {"/predict": 3, "/predict/batch": 1}.get(route, 4)
        if route in ("/similar-patients", "/chat"):  # a schema name out of place is named
            assert "age" in rejected["fields"]
        # the caller still learns which names were wrong, capped and escaped
        named = " ".join(d["field"] for d in out["details"])
        assert PHI_KEY in named and LONG_KEY not in named and "\n" not in named
        assert route == "/predict/batch" or "K" * 64 + "…(+59936 chars)" in named


def test_unknown_field_names_are_no_metric_labels(small_bundle: Path) -> None:
    predictor = Predictor(ModelProvider(model_uri=str(small_bundle)))
    api = ReadmitAPI(predictor)
    api.predict(Request(json.dumps(hostile_encounter()).encode(), {"Content-Type": "application/json"}))
    api.predict_batch(
        Request(json.dumps({"encounters": [hostile_encounter()]}).encode(), {"Content-Type": "application/json"})
    )
    text = api.metrics(Request()).body
    assert "69384114" not in text and "KKKK" not in text and "evil" not in text


def test_loggable_fields_keep_schema_names_wherever_they_are_and_count_the_rest() -> None:
    details = [
        Detail("encounters[3].age", "x"),
        Detail("encounter.glyburide-metformin", "x"),
        Detail("filters.same_age_band", "x"),
        Detail("encounter.filters", "x"),
        Detail("k", "x"),
        Detail(PHI_KEY, "x"),
        Detail("encounter." + PHI_KEY, "x"),
        Detail("age\n", "x"),
        Detail("encounters[3]." + CONTROL_KEY, "x"),
    ]
    known, unknown = loggable_fields(details)
    assert known == [
        "encounters[3].age",
        "encounter.glyburide-metformin",
        "filters.same_age_band",
        "encounter.filters",
        "k",
    ]
    assert unknown == 4


def test_safe_text_escapes_control_characters_and_caps_the_length() -> None:
    assert safe_text("a\nb\x1b[0m\u202ec") == "a\\u000ab\\u001b[0m\\u202ec"
    assert safe_text("\ud800").encode() == b"\\ud800"
    assert safe_text("x" * 100) == "x" * 64 + "…(+36 chars)"
