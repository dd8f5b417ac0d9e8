"""The API's behaviour in-process: every bad input is a 4xx naming the field, never a 500."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from chalicelib.core.audit import LocalPredictionLog
from chalicelib.core.identifiers import hash_id
from chalicelib.data.schema import COLUMNS, columns_from_records
from chalicelib.features.encoding import encode
from chalicelib.features.history import history_in_file
from chalicelib.features.table import FEATURE_NAMES
from chalicelib.model.bundle import ModelBundle
from chalicelib.registry.provider import ModelProvider
from chalicelib.serving.api import ReadmitAPI, Request
from chalicelib.serving.api_models import MAX_BATCH, parse_encounter_body
from chalicelib.serving.errors import ValidationFailed
from chalicelib.serving.history_store import SQLiteHistoryStore
from chalicelib.serving.service import Predictor

EVENTS = Path(__file__).resolve().parent.parent / "events"


def example() -> dict[str, Any]:
    return json.loads(json.loads((EVENTS / "api_predict.json").read_text())["body"])


@pytest.fixture
def api(small_bundle: Path, tmp_path: Path) -> ReadmitAPI:
    provider = ModelProvider(model_uri=str(small_bundle))
    predictor = Predictor(
        provider, SQLiteHistoryStore(tmp_path / "history.sqlite3"), LocalPredictionLog(tmp_path / "log")
    )
    return ReadmitAPI(predictor)


def post(
    api: ReadmitAPI, body: Any, route: str = "predict", query: dict | None = None, ctype: str = "application/json"
):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = Request(raw, {"Content-Type": ctype}, query or {})
    response = api.predict(request) if route == "predict" else api.predict_batch(request)
    return response.status, response.body


def fields(body: dict) -> set[str]:
    return {d["field"] for d in body["details"]}


@pytest.mark.slow
def test_a_valid_encounter_gets_a_calibrated_risk_tier_and_named_factors(api: ReadmitAPI) -> None:
    status, body = post(api, example())
    assert status == 200
    assert 0 < body["risk"] < 1 and body["risk_tier"] in ("low", "medium", "high")
    assert body["model_version"] and body["request_id"]
    assert body["risk_tier"] == ("high" if body["risk"] >= body["threshold"] else body["risk_tier"])
    factors = body["top_factors"]
    assert 1 <= len(factors) <= 5
    assert all(f["label"] and f["value"] and f["direction"] in ("raises risk", "lowers risk") for f in factors)
    magnitudes = [abs(f["contribution"]) for f in factors]
    assert magnitudes == sorted(magnitudes, reverse=True)


@pytest.mark.slow
def test_the_api_risk_equals_the_batch_risk_for_the_same_encounter(api: ReadmitAPI, small_bundle: Path) -> None:
    _status, body = post(api, example())
    record = parse_encounter_body(example())  # the example leaves unprescribed drugs out
    model = ModelBundle.load(small_bundle)
    assert body["risk"] == pytest.approx(float(model.risk(encode(columns_from_records([record])))[0]), abs=1e-6)


def test_explain_false_skips_the_factors(api: ReadmitAPI) -> None:
    status, body = post(api, example(), query={"explain": "false"})
    assert status == 200 and body["top_factors"] is None


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"age": "[200-210)"}, "age", "allowed"),
        ({"age": 75}, "age", "must be a string"),
        ({"time_in_hospital": 99}, "time_in_hospital", "between 1 and 14"),
        ({"number_inpatient": "three"}, "number_inpatient", "JSON number"),
        ({"number_inpatient": "3"}, "number_inpatient", "CSV text is read by /predict/batch"),
        ({"number_inpatient": True}, "number_inpatient", "integer"),
        ({"number_inpatient": 2.5}, "number_inpatient", "integer"),
        ({"A1Cresult": "high"}, "A1Cresult", "'>8'"),
        ({"admission_type_id": 42}, "admission_type_id", "unknown code"),
        ({"diag_1": "25O.1"}, "diag_1", "ICD-9"),
        ({"glyburide-metformin": "Maybe"}, "glyburide-metformin", "'Steady'"),
        ({"gender": "?"}, "gender", "required"),
        ({"A1C_result": ">8"}, "A1C_result", "not a UCI encounter field"),
    ],
)
def test_each_bad_field_is_named_with_the_reason(api: ReadmitAPI, change: dict, field: str, words: str) -> None:
    status, body = post(api, {**example(), **change})
    assert status == 422
    detail = next(d for d in body["details"] if d["field"] == field)
    assert words in detail["message"]


def test_every_missing_required_field_is_listed_at_once(api: ReadmitAPI) -> None:
    body = {k: v for k, v in example().items() if k not in ("age", "gender", "num_medications")}
    status, out = post(api, body)
    assert status == 422 and {"age", "gender", "num_medications"} <= fields(out)


def test_absent_medications_and_labs_mean_not_prescribed_and_not_measured(api: ReadmitAPI) -> None:
    body = {k: v for k, v in example().items() if k not in ("glipizide", "A1Cresult")}
    explicit = {**body, "glipizide": "No", "A1Cresult": "None"}
    assert post(api, body)[1]["risk"] == post(api, explicit)[1]["risk"]


@pytest.mark.parametrize(
    ("raw", "ctype", "status", "field"),
    [
        (b'{"race": "Caucasian", ', "application/json", 400, "body"),
        (b"", "application/json", 400, "body"),
        (b"[1, 2]", "application/json", 422, "body"),
        (json.dumps(example()).encode(), "text/plain", 415, "Content-Type"),
        (b" " * 70_000 + b"{}", "application/json", 413, "body"),
    ],
)
def test_malformed_bodies_get_clear_errors(api: ReadmitAPI, raw: bytes, ctype: str, status: int, field: str) -> None:
    got, body = post(api, raw, ctype=ctype)
    assert got == status and field in fields(body) and body["error"]


def test_a_bad_query_flag_is_a_400_naming_it(api: ReadmitAPI) -> None:
    status, body = post(api, example(), query={"explain": "perhaps"})
    assert status == 400 and fields(body) == {"explain"}


def test_an_encounter_outside_the_cohort_is_refused_with_the_reason(api: ReadmitAPI) -> None:
    status, body = post(api, {**example(), "discharge_disposition_id": 11})
    assert status == 422 and "hospice or expired" in body["details"][0]["message"]


def test_a_batch_scores_valid_items_and_reports_invalid_ones_by_index(api: ReadmitAPI) -> None:
    items = [example(), {**example(), "gender": "Robot"}, {**example(), "encounter_id": 5, "insulin": "No"}, "x"]
    status, body = post(api, {"encounters": items}, route="batch")
    assert status == 200 and body["scored"] == 2 and body["invalid"] == 2
    results = body["results"]
    assert results[0]["prediction"]["risk"] > 0 and results[2]["prediction"]["risk"] > 0
    assert results[1]["details"][0]["field"] == "encounters[1].gender"
    assert results[3]["details"][0]["field"] == "encounters[3]"


def test_an_oversized_batch_is_refused_naming_the_limit(api: ReadmitAPI) -> None:
    status, body = post(api, {"encounters": [example()] * (MAX_BATCH + 1)}, route="batch")
    assert status == 413 and fields(body) == {"encounters"} and str(MAX_BATCH) in body["details"][0]["message"]


def test_a_batch_body_must_hold_an_encounters_list(api: ReadmitAPI) -> None:
    status, body = post(api, {"rows": []}, route="batch")
    assert status == 422 and {"encounters", "rows"} <= fields(body)


def test_an_unwrapped_batch_body_says_what_shape_is_expected(api: ReadmitAPI) -> None:
    for body, words in (
        ([example()], "wrap the list in an object"),  # a bare list of encounters
        (example(), "looks like one encounter"),  # one encounter sent to the batch route
        ({"rows": []}, "is not a batch field"),
    ):
        status, answer = post(api, body, route="batch")
        messages = " ".join(d["message"] for d in answer["details"])
        assert status == 422 and '{"encounters": [<encounter>, ...]}' in messages and words in messages, body


def test_an_unknown_field_suggests_the_closest_uci_name_and_only_a_schema_name(api: ReadmitAPI) -> None:
    typo = {**example(), "time_in_hospitl": 3}
    status, body = post(api, typo)
    [detail] = [d for d in body["details"] if d["field"] == "time_in_hospitl"]
    assert status == 422 and detail["message"].endswith("did you mean 'time_in_hospital'?")
    status, body = post(api, {**example(), "MRN 69384114 John Smith": 1})
    [detail] = body["details"]
    assert detail["message"] == "is not a UCI encounter field"  # nothing close: no guess


def test_history_recorded_online_gives_the_same_features_as_batch(api: ReadmitAPI, small_bundle: Path) -> None:
    first = {**example(), "encounter_id": 1000, "patient_nbr": 77, "time_in_hospital": 9, "number_inpatient": 4}
    second = {**example(), "encounter_id": 2000, "patient_nbr": 77}
    assert post(api, first, query={"record": "true"})[0] == 200
    _status, body = post(api, second)
    assert body["history_encounters"] == 1
    # the batch path over a file holding both encounters
    records = [parse_encounter_body(first), parse_encounter_body(second)]
    cols = columns_from_records(records)
    X = encode(cols, history_in_file([77, 77], [1000, 2000], cols))
    expected = ModelBundle.load(small_bundle).risk(X)[1]
    assert body["risk"] == pytest.approx(float(expected), abs=1e-6)


def test_every_prediction_is_audited_without_identifiers(api: ReadmitAPI, tmp_path: Path) -> None:
    post(api, {**example(), "encounter_id": 123456789, "patient_nbr": 987654321})
    lines = "".join(p.read_text() for p in (tmp_path / "log").rglob("*.jsonl"))
    assert lines and "123456789" not in lines and "987654321" not in lines
    records = [json.loads(line) for line in lines.splitlines()]
    assert records[-1]["encounter_hash"] and len(records[-1]["features"]) > 40


def test_without_a_model_health_says_not_ready_and_predict_is_503(tmp_path: Path) -> None:
    api = ReadmitAPI(Predictor(ModelProvider(registry_uri=str(tmp_path / "empty"))))
    health = api.health(Request()).body
    assert health["ready"] is False and health["model_version"] is None and "champion" in health["detail"]
    status, body = post(api, example())
    assert status == 503 and body["error"] == "model not ready"


@pytest.mark.slow
def test_model_info_and_openapi_describe_the_service(api: ReadmitAPI) -> None:
    info = api.model_info(Request()).body
    assert info["thresholds"]["high"] > info["thresholds"]["medium"] and len(info["features"]) > 40
    doc = api.openapi(Request()).body
    encounter = doc["components"]["schemas"]["Encounter"]
    assert "Caucasian" in encounter["properties"]["race"]["anyOf"][0]["enum"]
    assert {"/predict", "/predict/batch", "/health", "/model", "/metrics", "/openapi.json"} <= set(doc["paths"])
    from openapi_spec_validator import validate

    validate(doc)


def test_prometheus_metrics_count_predictions_by_tier(api: ReadmitAPI) -> None:
    post(api, example())
    text = api.metrics(Request()).body
    assert "readmit_predictions_total" in text and "readmit_request_seconds_bucket" in text


def test_the_batch_route_and_single_route_agree(api: ReadmitAPI, raw_frame: pd.DataFrame) -> None:
    # the batch reads the file's CSV text; the single route takes the same encounters with JSON numbers
    rows = raw_frame.sample(20, random_state=5).to_dict("records")
    rows = [r for r in rows if r["discharge_disposition_id"] not in ("11", "13", "14", "19", "20", "21")]
    for r in rows:
        r.pop("patient_nbr")
    _, batch = post(api, {"encounters": rows}, route="batch", query={"explain": "false"})
    numeric = {c.name for c in COLUMNS if c.kind in ("id", "int", "code")}
    typed = [{k: int(v) if k in numeric and v.isdigit() else v for k, v in r.items()} for r in rows]
    single = [post(api, r, query={"explain": "false"})[1]["risk"] for r in typed]
    np.testing.assert_allclose([x["prediction"]["risk"] for x in batch["results"]], single, atol=1e-9)
    assert post(api, rows[0])[0] == 422  # text for a number: JSON's types on the single route, as documented


def test_each_prediction_is_audited_with_the_model_input_and_reads_back_valid(
    api: ReadmitAPI, small_bundle: Path
) -> None:
    # GIVEN a batch where one encounter lacks diag_3 (a missing input: NaN in the feature vector)
    encounters = [example(), {**example(), "encounter_id": 900002, "diag_3": "?"}]
    status, body = post(api, {"encounters": encounters}, route="batch")
    assert status == 200 and body["scored"] == 2
    # WHEN the prediction log is read back (which validates every record)
    records = sorted(api.predictor.log.read(), key=lambda r: r.risk)
    # THEN each record holds the risk served, the exact feature vector, hashed ids and one fixed-width UTC time
    assert sorted(round(r.risk, 6) for r in records) == sorted(x["prediction"]["risk"] for x in body["results"])
    expected = encode(columns_from_records([parse_encounter_body(e) for e in encounters]))
    by_hash = {r.encounter_hash: r for r in records}
    first, second = by_hash[hash_id(900001, kind="encounter")], by_hash[hash_id(900002, kind="encounter")]
    np.testing.assert_array_equal(np.array(first.features, dtype=np.float32), expected[0])
    np.testing.assert_array_equal(np.array(second.features, dtype=np.float32), expected[1])  # NaN where NaN
    assert math.isnan(second.features[FEATURE_NAMES.index("diag_3_code")])
    assert len({r.at for r in records}) == 1 and records[0].at.endswith("Z") and len(records[0].at) == 27
    assert {(r.model_version, r.source) for r in records} == {(small_bundle.name, "api")}


# ---- requests no route serves (issue #14, item 16a) --------------------------------------------------------------
def test_the_app_routes_match_the_openapi_paths_and_unknown_ones_are_404_in_the_error_format(api: ReadmitAPI) -> None:
    from app import app as chalice_app

    routes = {route: list(methods) for route, methods in chalice_app.routes.items() if methods}
    for path in ("/nope", "/patients/800001/history", "/predict/batch/extra", "/model/plots", "/model/plots/a/b"):
        response = api.unrouted(Request(request_id="r1"), path, "GET", routes)
        assert response.status == 404, path
        assert response.body["error"] == "not found" and response.body["details"][0]["field"] == "path"
        assert "Allow" not in response.headers and "800001" not in json.dumps(response.body)


@pytest.mark.parametrize(
    ("path", "method", "allow"),
    [
        ("/predict", "GET", "POST"),
        ("/predict/", "DELETE", "POST"),
        ("/health", "POST", "GET"),
        ("/", "PUT", "GET"),
        ("/model/plots/calibration", "POST", "GET"),
    ],
)
def test_a_known_path_with_another_method_is_405_with_the_allow_header(
    api: ReadmitAPI, path: str, method: str, allow: str
) -> None:
    from app import app as chalice_app

    routes = {route: list(methods) for route, methods in chalice_app.routes.items() if methods}
    response = api.unrouted(Request(request_id="r2"), path, method, routes)
    assert response.status == 405 and response.headers["Allow"] == allow
    assert response.body == {
        "error": "method not allowed",
        "details": [{"field": "method", "message": f"{method} is not supported here; allowed: {allow}"}],
        "request_id": "r2",
    }


# ---- the OpenAPI document and the server agree (issue #20) -------------------------------------------------------
def _validator(name: str) -> Any:
    """A JSON Schema validator for one of the document's request schemas (its $refs resolved in the document)."""
    from jsonschema import Draft202012Validator

    doc = ReadmitAPI.openapi(None, Request()).body  # type: ignore[arg-type]
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


@pytest.mark.parametrize(
    "change",
    [
        {"encounter_id": None},  # declared nullable; was refused as "is required"
        {"patient_nbr": None, "encounter_id": None, "readmitted": None},
        {"encounter_id": "?", "readmitted": ""},
        {"diag_1": ""},  # an empty diagnosis is a missing one, as in the data set's blank or '?' cells
        {"diag_2": "?", "diag_3": None, "race": "", "weight": "?", "payer_code": None, "medical_specialty": ""},
        {"diag_1": "V45.81", "diag_2": "E878"},
        {"diag_1": "٤٢٨"},  # Arabic-Indic digits: ECMA's \d, and now the parser's, is ASCII only
        {"diag_1": "428 x"},
        {"diag_2": "0"},  # no ICD-9 code is all zeros (001-999); the explanation of one raised StopIteration
        {"diag_3": "000.5", "diag_1": "010"},
        {"gender": ""},
        {"gender": "?"},
        {"time_in_hospital": 15},
        {"number_inpatient": True},
        {"readmitted": "soon"},
        {"MRN": 1},
        # found by schemathesis' positive_data_acceptance / negative_data_rejection (issue #20):
        {"time_in_hospital": "6"},  # CSV text for a number: read by /predict/batch only
        {"admission_type_id": "1", "encounter_id": "900001"},
        {"time_in_hospital": 6.0, "number_inpatient": 2.0},  # JSON Schema's integer: zero fractional part
        {"discharge_disposition_id": 11},  # expired: outside the cohort, so not among the document's values
        {"discharge_disposition_id": 21},
        {"discharge_disposition_id": 22},
        {"diag_1": " 428"},  # the CSV reader trims; the document's pattern does not
    ],
)
def test_the_document_accepts_an_encounter_exactly_when_the_server_does(api: ReadmitAPI, change: dict) -> None:
    body = {**example(), **change}
    declared = _validator("Encounter").is_valid(body)
    status, out = post(api, body)
    assert status in (200, 422), out
    assert declared == (status == 200), (change, declared, out)


def test_similar_patients_k_is_a_json_schema_integer_so_22_point_0_is_one_and_text_is_not() -> None:
    # found by schemathesis' positive_data_acceptance: k 22.0 is an integer by JSON Schema 2020-12 (section 6.1.1)
    from chalicelib.serving.similar_models import parse_similar

    validator = _validator("SimilarRequest")
    for k, valid in ((22.0, True), (22, True), (22.5, False), ("5", False), (True, False)):
        body = {"encounter": example(), "k": k}
        assert validator.is_valid(body) is valid, k
        if valid:
            assert parse_similar(body)[0].k == 22
        else:
            with pytest.raises(ValidationFailed):
                parse_similar(body)


def test_similar_and_chat_declare_what_the_encounter_must_hold(api: ReadmitAPI) -> None:
    for name, extra in (("SimilarRequest", {}), ("ChatRequest", {"question": "why?"})):
        validator = _validator(name)
        assert not validator.is_valid({"encounter": {}, **extra})  # the server answers 422: gender is required
        assert validator.is_valid({"encounter": example(), **extra})
    from chalicelib.serving.openapi import document

    paths = document()["paths"]
    for path in ("/similar-patients", "/chat"):
        assert "422" in paths[path]["post"]["responses"]


def test_record_true_needs_both_identifiers_and_says_so_in_the_document(api: ReadmitAPI) -> None:
    from chalicelib.serving.openapi import document

    body = {k: v for k, v in example().items() if k != "encounter_id"}
    status, out = post(api, body, query={"record": "true"})
    assert status == 422 and out["details"] == [{"field": "encounter_id", "message": "is required when record=true"}]
    assert post(api, body)[0] == 200  # without record=true the identifiers stay optional
    status, out = post(api, {"encounters": [body, example()]}, route="batch", query={"record": "true"})
    assert status == 200 and out["scored"] == 1
    assert out["results"][0]["details"] == [
        {"field": "encounters[0].encounter_id", "message": "is required when record=true"}
    ]
    [record] = [p for p in document()["paths"]["/predict"]["post"]["parameters"] if p["name"] == "record"]
    assert "patient_nbr and encounter_id are then required" in record["description"]


def test_a_batch_over_the_item_limit_answers_the_413_the_document_lists(api: ReadmitAPI) -> None:
    from chalicelib.serving.openapi import document

    status, _ = post(api, {"encounters": [example()] * (MAX_BATCH + 1)}, route="batch")
    responses = document()["paths"]["/predict/batch"]["post"]["responses"]
    assert status == 413 and f"more than {MAX_BATCH} encounters" in responses["413"]["description"]
    assert (
        _validator("BatchRequest").schema["components"]["schemas"]["BatchRequest"]["properties"]["encounters"][
            "maxItems"
        ]
        == MAX_BATCH
    )


@pytest.mark.parametrize(
    ("question", "valid"),
    [
        ("Why is the risk high?", True),
        ("\n", False),
        ("   ", False),
        (" why? ", True),
        ("x" * 1000, True),
        ("x" * 1001, False),
        (" " + "x" * 1000, False),
    ],
)
def test_the_document_accepts_a_chat_question_exactly_when_the_server_does(question: str, valid: bool) -> None:
    """Found by schemathesis in a fresh clone: "\\n" met the document's minLength 1 but the server, which stripped
    whitespace first, refused it. Both now check the question as sent."""
    from chalicelib.serving.similar_models import parse_chat

    body = {"encounter": example(), "question": question}
    assert _validator("ChatRequest").is_valid(body) is valid, repr(question)
    if valid:
        parse_chat(body)
    else:
        with pytest.raises(ValidationFailed):
            parse_chat(body)
