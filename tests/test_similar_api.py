"""/similar-patients in-process, over a real index of the sample data: neighbours, filters, the readmission rate,
every bad input a 4xx naming the field, 503 without an index, and never an identifier in a response."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chalicelib.data.tabular import Table
from chalicelib.registry.provider import ModelProvider
from chalicelib.serving.api import ReadmitAPI, Request
from chalicelib.serving.service import Predictor
from chalicelib.similar.embedding import LocalEmbedder, row_record
from chalicelib.similar.indexing import point_id
from chalicelib.similar.numpy_store import NumpyStore
from chalicelib.similar.search import SimilarPatients
from tests.conftest import SIMILAR_SALT

EVENTS = Path(__file__).resolve().parent.parent / "events"


@pytest.fixture
def api(small_bundle: Path, sample_index: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ReadmitAPI]:
    monkeypatch.setenv("READMIT_ID_SALT", SIMILAR_SALT)
    similar = SimilarPatients(LocalEmbedder(), NumpyStore(sample_index))
    yield ReadmitAPI(Predictor(ModelProvider(model_uri=str(small_bundle))), similar)


def example() -> dict[str, Any]:
    return json.loads(json.loads((EVENTS / "api_predict.json").read_text())["body"])


def ask(api: ReadmitAPI, body: Any, ctype: str = "application/json") -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = api.similar_patients(Request(raw, {"Content-Type": ctype}))
    return response.status, response.body


def fields(body: dict) -> set[str]:
    return {d["field"] for d in body["details"]}


def test_the_fixture_request_gets_k_neighbours_best_first_with_their_readmission_rate(api: ReadmitAPI) -> None:
    body = json.loads(json.loads((EVENTS / "api_similar_patients.json").read_text())["body"])
    status, out = ask(api, body)
    assert status == 200 and out["count"] == out["k"] == 5 == len(out["neighbours"])
    sims = [n["similarity"] for n in out["neighbours"]]
    assert sims == sorted(sims, reverse=True) and all(-1 <= s <= 1 for s in sims)
    for n in out["neighbours"]:
        assert n["outcome"] in ("<30", ">30", "NO") and n["readmitted_30d"] == (n["outcome"] == "<30")
        assert n["age"].startswith("[") and n["features"]["Inpatient stays (prior year)"] >= 0
    assert out["readmission_rate"] == pytest.approx(np.mean([n["readmitted_30d"] for n in out["neighbours"]]))
    assert out["request_id"]


def test_no_response_carries_an_identifier_of_any_indexed_patient(api: ReadmitAPI, sample_table: Table) -> None:
    identifiers = {str(v) for v in (*sample_table.encounter_id.tolist(), *sample_table.patient_nbr.tolist())}
    for i in range(0, 400, 40):  # encounters that are themselves in the index, with their ids
        record = {**row_record(sample_table.cols, i), "encounter_id": int(sample_table.encounter_id[i])}
        body = {k: v for k, v in record.items() if v is not None}
        status, out = ask(api, {"encounter": body, "k": 50})
        assert status == 200
        out.pop("request_id")
        text = json.dumps(out)
        assert "patient_nbr" not in text and "encounter_id" not in text
        assert not set(re.findall(r"\d+", text)) & identifiers


def test_an_indexed_encounter_is_not_its_own_neighbour(api: ReadmitAPI, sample_table: Table) -> None:
    record = {**row_record(sample_table.cols, 3), "encounter_id": int(sample_table.encounter_id[3])}
    own = point_id(record["encounter_id"])
    service = api.similar
    vector = service.embedder.embed({k: v[3:4] for k, v in sample_table.cols.items()})[0]
    direct = service.store.search(vector, 6)
    assert direct[0].id == own and direct[0].similarity == pytest.approx(1.0, abs=1e-5)
    found = service.find(record, 5)
    assert [n["similarity"] for n in found.neighbours] == [round(h.similarity, 4) for h in direct[1:6]]


def test_the_same_age_band_filter_keeps_only_that_band(api: ReadmitAPI) -> None:
    encounter = {**example(), "age": "[30-40)"}
    _, unfiltered = ask(api, {"encounter": encounter, "k": 50})
    assert {n["age"] for n in unfiltered["neighbours"]} != {"[30-40)"}  # the filter has something to remove
    status, out = ask(api, {"encounter": encounter, "k": 50, "filters": {"same_age_band": True}})
    assert status == 200 and out["count"] == 50 and {n["age"] for n in out["neighbours"]} == {"[30-40)"}


def test_neighbours_of_a_frequently_admitted_patient_are_readmitted_more_often(api: ReadmitAPI) -> None:
    def rate(**change: Any) -> float:
        status, out = ask(api, {"encounter": {**example(), **change}, "k": 50})
        assert status == 200
        return out["readmission_rate"]

    assert rate(number_inpatient=6, number_emergency=3) > rate(number_inpatient=0, number_emergency=0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"k": 0}, "k"),
        ({"k": 51}, "k"),
        ({"k": "5"}, "k"),
        ({"k": True}, "k"),
        ({"filters": {"same_age_band": "yes"}}, "filters.same_age_band"),
        ({"filters": {"same_sex": True}}, "filters.same_sex"),
        ({"neighbours": 3}, "neighbours"),
        ({"encounter": "not an object"}, "encounter"),
        ({"encounter": {**example(), "age": "[200-210)"}}, "encounter.age"),
        ({"encounter": {**example(), "gender": None}}, "encounter.gender"),
        ({"encounter": {**example(), "discharge_disposition_id": 11}}, "encounter.discharge_disposition_id"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(api: ReadmitAPI, change: dict, field: str) -> None:
    status, out = ask(api, {"encounter": example(), **change})
    assert status == 422 and fields(out) == {field}


def test_a_missing_encounter_a_non_object_body_bad_json_and_wrong_content_type_are_4xx(api: ReadmitAPI) -> None:
    assert fields(ask(api, {"k": 5})[1]) == {"encounter"}
    assert ask(api, [1, 2])[0] == 422
    assert ask(api, b"{not json")[0] == 400
    assert ask(api, {"encounter": example()}, ctype="text/plain")[0] == 415


def test_without_an_index_the_route_answers_503_saying_how_to_build_one(small_bundle: Path, tmp_path: Path) -> None:
    api = ReadmitAPI(
        Predictor(ModelProvider(model_uri=str(small_bundle))),
        SimilarPatients(LocalEmbedder(), NumpyStore(tmp_path / "empty")),
    )
    status, out = ask(api, {"encounter": example()})
    assert status == 503 and fields(out) == {"index"} and "readmit index" in out["details"][0]["message"]


def test_an_index_built_by_another_embedder_is_a_503_not_a_500(small_bundle: Path, tmp_path: Path) -> None:
    store = NumpyStore(tmp_path / "other")
    store.upsert(["a" * 32], np.ones((1, 512), dtype=np.float32), [{"outcome": "NO", "age": "[70-80)", "features": {}}])
    store.flush()
    api = ReadmitAPI(Predictor(ModelProvider(model_uri=str(small_bundle))), SimilarPatients(LocalEmbedder(), store))
    status, out = ask(api, {"encounter": example()})
    assert status == 503 and "512" in out["details"][0]["message"]


def test_the_store_is_opened_lazily_from_the_environment(
    small_bundle: Path, sample_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("READMIT_INDEX_DIR", str(sample_index))
    api = ReadmitAPI(Predictor(ModelProvider(model_uri=str(small_bundle))))
    assert api._similar is None
    status, out = ask(api, {"encounter": example(), "k": 3})
    assert status == 200 and out["count"] == 3
