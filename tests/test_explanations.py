"""Explanations a clinician reads correctly (issue #17): every factor is one concept, shown with the patient's own
value in words, and its direction is the sign of its summed SHAP contribution.

The sentences are checked against the encounter they describe: one field of the README's example changed at a
time, the README's three wrong sentences, and a property over real UCI encounters (no factor names a category the
patient is not in)."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.batch.output import short_factors
from chalicelib.data.dataset import IDS_MAPPING_MEMBER, SHARED_COPY, cache_dir
from chalicelib.data.schema import (
    COLUMN_BY_NAME,
    EXCLUDED_DISPOSITIONS,
    MEDICATIONS,
    columns_from_records,
    parse_encounter,
)
from chalicelib.features import icd9
from chalicelib.features.encoding import encode
from chalicelib.features.history import PatientHistory
from chalicelib.features.table import FEATURE_NAMES, METFORMINS, SULFONYLUREAS, THIAZOLIDINEDIONES
from chalicelib.model.bundle import ModelBundle
from chalicelib.model.card import shap_importance
from chalicelib.model.explain import (
    CONCEPT_BY_ID,
    CONCEPTS,
    IDS_MAPPING,
    IDS_MAPPING_PATH,
    NOT_RECORDED,
    code_text,
    factor_lists,
    grouped,
    ids_mapping_from_csv,
)
from chalicelib.registry.provider import ModelProvider
from chalicelib.serving import service
from chalicelib.serving.api import ReadmitAPI, Request
from chalicelib.serving.api_models import parse_encounter_body
from chalicelib.similar.chat import ungrounded

EVENTS = Path(__file__).resolve().parent.parent / "events"
ALL = len(CONCEPTS)


def example(**changes: Any) -> dict[str, Any]:
    """The README's example encounter (events/api_predict.json), with some fields changed; parsed."""
    body = json.loads(json.loads((EVENTS / "api_predict.json").read_text())["body"])
    return parse_encounter_body({**body, **changes})


def value(concept: str, record: dict[str, Any], history: PatientHistory | None = None) -> str:
    return CONCEPT_BY_ID[concept].describe(record, history)


def features(record: dict[str, Any]) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, encode(columns_from_records([record]))[0].tolist(), strict=True))


# ---- IDs_mapping.csv ------------------------------------------------------------------------------------------
def _ids_mapping_csv(data_path: Path) -> str:
    source = SHARED_COPY if SHARED_COPY.exists() else data_path
    if source.suffix != ".zip":  # a clone without the zip: `readmit data` kept the zip's mapping in the cache
        kept = cache_dir() / IDS_MAPPING_MEMBER
        if not kept.exists():
            pytest.fail(f"IDs_mapping.csv is only in the UCI zip; {source} is not one and {kept} does not exist")
        return kept.read_bytes().decode("utf-8")
    with zipfile.ZipFile(source) as zf:
        member = next(m for m in zf.namelist() if m.lower().endswith("ids_mapping.csv"))
        return zf.read(member).decode("utf-8")


def test_the_shipped_ids_mapping_json_is_what_the_data_sets_csv_says(data_path: Path) -> None:
    text = _ids_mapping_csv(data_path)
    assert json.loads(IDS_MAPPING_PATH.read_text()) == ids_mapping_from_csv(text)
    # read independently of the parser: a quoted description with commas, and one with a leading blank
    assert '19,"Expired at home. Medicaid only, hospice."' in text
    assert IDS_MAPPING["discharge_disposition_id"][19] == "Expired at home. Medicaid only, hospice."
    assert "\n7, Emergency Room" in text.replace("\r", "")
    assert IDS_MAPPING["admission_source_id"][7] == "Emergency Room"


def test_every_code_the_api_accepts_has_its_data_set_description() -> None:
    for field in ("admission_type_id", "discharge_disposition_id", "admission_source_id"):
        codes = COLUMN_BY_NAME[field].codes
        assert codes is not None and set(codes) <= set(IDS_MAPPING[field]), field


# ---- the grouping ---------------------------------------------------------------------------------------------
def test_every_model_feature_belongs_to_exactly_one_concept() -> None:
    members = [n for c in CONCEPTS for n in c.features]
    assert sorted(members) == sorted(FEATURE_NAMES)
    assert len({c.id for c in CONCEPTS}) == len({c.label for c in CONCEPTS}) == ALL


def test_a_concepts_contribution_is_the_sum_of_its_features_shap_values() -> None:
    rng = np.random.default_rng(3)
    contribs = rng.normal(size=(7, len(FEATURE_NAMES) + 1)).astype(np.float32)  # + XGBoost's bias column
    by_hand = np.array(
        [[sum(row[FEATURE_NAMES.index(n)] for n in c.features) for c in CONCEPTS] for row in contribs.tolist()]
    )
    np.testing.assert_allclose(grouped(contribs), by_hand, rtol=1e-5, atol=1e-5)


def test_factors_are_ranked_by_magnitude_and_their_direction_is_the_sign() -> None:
    contribs = np.zeros((1, len(FEATURE_NAMES) + 1), dtype=np.float32)
    # two discharge features pulling opposite ways: the concept's direction is the sign of the sum
    contribs[0, FEATURE_NAMES.index("discharge_home")] = 0.30
    contribs[0, FEATURE_NAMES.index("discharge_code")] = -0.10
    contribs[0, FEATURE_NAMES.index("payer_missing")] = -0.25
    contribs[0, FEATURE_NAMES.index("charlson_index")] = 0.05
    [factors] = factor_lists(contribs, [example()], [None])
    assert [(f["feature"], f["direction"]) for f in factors] == [
        ("payer", "lowers risk"),
        ("discharge_disposition", "raises risk"),
        ("charlson", "raises risk"),
    ]  # concepts summing to zero are not factors
    assert factors[1]["contribution"] == pytest.approx(0.20, abs=1e-6)


# ---- one field changed: the sentence is true of the encounter -----------------------------------------------
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("discharge_disposition", {"discharge_disposition_id": 1}, "Discharged to home (1)"),
    ("discharge_disposition", {}, "Discharged/transferred to skilled nursing facility (3)"),
    (
        "discharge_disposition",
        {"discharge_disposition_id": 4},
        "Discharged/transferred to intermediate care facility (4)",
    ),
    (
        "discharge_disposition",
        {"discharge_disposition_id": 6},
        "Discharged/transferred to home with home health service (6)",
    ),
    ("discharge_disposition", {"discharge_disposition_id": 7}, "Left against medical advice (7)"),
    ("discharge_disposition", {"discharge_disposition_id": 18}, "unknown, coded as NULL (18)"),
    ("admission_type", {}, "Emergency (1)"),
    ("admission_type", {"admission_type_id": 3}, "Elective (3)"),
    ("admission_type", {"admission_type_id": 7}, "Trauma Center (7)"),
    ("admission_type", {"admission_type_id": 6}, "unknown, coded as NULL (6)"),
    ("admission_source", {}, "Emergency Room (7)"),
    ("admission_source", {"admission_source_id": 1}, "Physician Referral (1)"),
    ("admission_source", {"admission_source_id": 5}, "Transfer from a Skilled Nursing Facility (5)"),
    ("admission_source", {"admission_source_id": 9}, "unknown, coded as Not Available (9)"),
    ("payer", {}, "Medicare (MC)"),
    ("payer", {"payer_code": "MD"}, "Medicaid (MD)"),
    ("payer", {"payer_code": "BC"}, "other payer (BC)"),
    ("payer", {"payer_code": "?"}, NOT_RECORDED),
    ("race", {}, "Caucasian"),
    ("race", {"race": "?"}, NOT_RECORDED),
    ("sex", {"gender": "Male"}, "male"),
    ("sex", {"gender": "Unknown/Invalid"}, "unknown/invalid"),
    ("age", {}, "70-79 years ([70-80))"),
    ("age", {"age": "[0-10)"}, "0-9 years ([0-10))"),
    ("weight", {}, NOT_RECORDED),
    ("weight", {"weight": "[75-100)"}, "[75-100) lb"),
    ("specialty", {}, "InternalMedicine"),
    ("specialty", {"medical_specialty": "?"}, NOT_RECORDED),
    ("length_of_stay", {"time_in_hospital": 1}, "1 days"),
    ("lab_tests", {"num_lab_procedures": 30, "time_in_hospital": 3}, "30 (10.0 per day)"),
    ("procedures", {"num_procedures": 4}, "4"),
    ("medications", {"num_medications": 12, "time_in_hospital": 4}, "12 (3.0 per day)"),
    ("number_diagnoses", {}, "9"),
    ("outpatient_visits", {"number_outpatient": 3}, "3"),
    ("emergency_visits", {}, "1"),
    ("inpatient_stays", {"number_inpatient": 0}, "0"),
    ("all_visits", {"number_outpatient": 4}, "7 (4 outpatient, 1 emergency, 2 inpatient)"),
    ("hba1c", {}, "above 8% (>8), with diabetes medication changed"),
    ("hba1c", {"A1Cresult": ">7", "change": "No"}, "7-8% (>7)"),
    ("hba1c", {"A1Cresult": "Norm"}, "normal (Norm)"),
    ("hba1c", {"A1Cresult": "None"}, "not measured"),
    ("glucose", {}, "not measured"),
    ("glucose", {"max_glu_serum": ">300"}, "above 300 mg/dL (>300)"),
    ("insulin", {}, "dose increased"),
    ("insulin", {"insulin": "Down"}, "dose decreased"),
    ("insulin", {"insulin": "Steady"}, "steady dose"),
    ("insulin", {"insulin": "No"}, "not prescribed"),
    ("metformin", {}, "none prescribed"),
    ("metformin", {"glyburide-metformin": "Steady"}, "glyburide-metformin (steady dose)"),
    ("sulfonylurea", {}, "glipizide (steady dose)"),
    ("sulfonylurea", {"glipizide": "No"}, "none prescribed"),
    ("thiazolidinedione", {"pioglitazone": "Up"}, "pioglitazone (dose increased)"),
    ("diabetes_drugs", {}, "2 prescribed: glipizide (steady dose), insulin (dose increased)"),
    ("diabetes_drugs", {"glipizide": "No", "insulin": "No", "diabetesMed": "No", "change": "No"}, "none prescribed"),
    ("medication_change", {}, "yes (Ch)"),
    ("medication_change", {"change": "No"}, "no"),
    ("diabetes_medication", {}, "yes"),
    ("primary_diagnosis", {}, "428 heart failure (diseases of the circulatory system)"),
    ("primary_diagnosis", {"diag_1": "486"}, "486 (diseases of the respiratory system)"),
    ("primary_diagnosis", {"diag_1": "?"}, NOT_RECORDED),
    ("primary_diagnosis", {"diag_1": "V57"}, "V57 (supplementary V code: factors influencing health status)"),
    (
        "diagnoses",
        {"diag_3": "?"},
        "428 heart failure (diseases of the circulatory system) / 250.02 diabetes mellitus without complication, "
        "type 2 or unspecified, uncontrolled (endocrine, nutritional and metabolic diseases) / not recorded",
    ),
    ("uncontrolled_diabetes", {}, "yes (250.02)"),
    ("uncontrolled_diabetes", {"diag_2": "250.01"}, "no (no 250.x2 or 250.x3 code)"),
    ("charlson", {}, "2 (heart failure, diabetes)"),
    ("charlson", {"diag_2": "250.42"}, "3 (heart failure, diabetes with complications)"),
    ("charlson", {"diag_3": "197"}, "8 (heart failure, diabetes, metastatic solid tumour)"),
    ("charlson", {"diag_1": "486", "diag_2": "V57", "diag_3": "?"}, "0 (no Charlson condition coded)"),
    (
        "lace",
        {},
        "10 (length of stay 6 days: 4, acute admission: 3, Charlson 2: 2, emergency visits 1: 1)",
    ),
    (
        "lace",
        {"admission_type_id": 3, "time_in_hospital": 14, "number_emergency": 9, "diag_3": "197"},
        "16 (length of stay 14 days: 7, acute admission: 0, Charlson 8: 5, emergency visits 9: 4)",
    ),
]


@pytest.mark.parametrize(("concept", "changes", "expected"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_the_value_in_words_is_true_of_the_encounter(concept: str, changes: dict[str, Any], expected: str) -> None:
    assert value(concept, example(**changes)) == expected


def test_every_concept_that_can_be_a_factor_has_a_sentence_checked_above() -> None:
    assert {c[0] for c in CASES} | {"history"} == set(CONCEPT_BY_ID)


def test_the_history_concept_reports_the_patients_earlier_encounters() -> None:
    history = PatientHistory(encounters=3, emergency_admissions=2, days=11, max_inpatient=4, transfers_to_facility=1)
    assert value("history", example(), history) == (
        "3 earlier encounters: 2 emergency admissions, 11 days in hospital, 1 discharges to a facility, "
        "at most 4 prior-year inpatient stays"
    )
    assert value("history", example()) == value("history", example(), PatientHistory()) == "none"


@pytest.mark.parametrize("changes", [{}, {"diag_2": "250.42"}, {"diag_3": "197", "time_in_hospital": 14}])
def test_derived_scores_show_the_value_the_model_saw(changes: dict[str, Any]) -> None:
    record = example(**changes)
    x = features(record)
    assert value("charlson", record).startswith(f"{x['charlson_index']:.0f} (")
    assert value("lace", record).startswith(f"{x['lace_score']:.0f} (")


def test_coded_values_use_the_data_sets_own_description() -> None:
    for field, table in IDS_MAPPING.items():
        for code, text in table.items():
            shown = code_text(field, code)
            assert shown.endswith(f"({code})")
            if text not in ("NULL", "Not Mapped", "Not Available", "Unknown/Invalid"):
                # every word of the CSV's description is kept, except the abbreviations and typos spelled out
                words = set(re.findall(r"[a-z]{4,}", text.lower())) - {"critial", "inpt", "reslt"}
                assert words <= set(re.findall(r"[a-z]{4,}", shown.lower())), (field, code, shown)


# ---- the README's example: the three wrong sentences, fixed ----------------------------------------------------
@pytest.fixture(scope="module")
def model(small_bundle: Path) -> ModelBundle:
    return ModelBundle.load(small_bundle)


def every_factor(model: ModelBundle, record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """All of one encounter's factors (not only the top 5), as /predict computes them, by label."""
    contribs = model.contributions(encode(columns_from_records([record]), np.zeros((1, 5), dtype=np.float32)))
    return {f["label"]: f for f in service.factor_lists(contribs, [record], [None], k=10_000)[0]}


def test_the_readme_examples_three_wrong_sentences_now_read_true(model: ModelBundle) -> None:
    factors = every_factor(model, example())
    sentences = {f"{label}: {f['value']}" for label, f in factors.items()}
    # Before: 'Discharged home: 3', 'Payer not recorded: MC', 'Charlson comorbidity index: 428, 250.02, 403'
    assert (
        not {"Discharged home: 3", "Payer not recorded: MC", "Charlson comorbidity index: 428, 250.02, 403"} & sentences
    )
    assert "Discharge disposition: Discharged/transferred to skilled nursing facility (3)" in sentences
    assert "Payer: Medicare (MC)" in sentences
    assert "Charlson comorbidity index: 2 (heart failure, diabetes)" in sentences
    assert all(label in {c.label for c in CONCEPTS} for label in factors)


def test_every_factor_of_the_example_is_one_concept_with_the_sign_of_its_summed_shap(model: ModelBundle) -> None:
    record = example()
    contribs = model.contributions(encode(columns_from_records([record]), np.zeros((1, 5), dtype=np.float32)))
    factors = every_factor(model, record)
    for c in CONCEPTS:
        total = float(sum(contribs[0, FEATURE_NAMES.index(n)] for n in c.features))
        if total == 0.0:
            assert c.label not in factors
            continue
        f = factors[c.label]
        assert f["feature"] == c.id and f["value"] == c.describe(record, None)
        assert f["contribution"] == pytest.approx(total, abs=1e-4)
        assert f["direction"] == ("raises risk" if total > 0 else "lowers risk")


def test_predict_returns_the_concept_factors(small_bundle: Path, tmp_path: Path) -> None:
    api = ReadmitAPI(service.Predictor(ModelProvider(model_uri=str(small_bundle))))
    body = json.loads(json.loads((EVENTS / "api_predict.json").read_text())["body"])
    response = api.predict(Request(json.dumps(body).encode(), {"Content-Type": "application/json"}, {}))
    factors = response.body["top_factors"]
    assert 1 <= len(factors) <= 5
    record = example()
    for f in factors:
        assert f["label"] == CONCEPT_BY_ID[f["feature"]].label
        assert f["value"] == CONCEPT_BY_ID[f["feature"]].describe(record, None)
    batch = api.predict_batch(
        Request(json.dumps({"encounters": [body]}).encode(), {"Content-Type": "application/json"}, {})
    )
    assert batch.body["results"][0]["prediction"]["top_factors"] == factors


def test_the_nightly_file_and_the_chat_name_the_same_concepts() -> None:
    factors = [
        {
            "feature": "discharge_disposition",
            "label": "Discharge disposition",
            "value": value("discharge_disposition", example()),
            "contribution": 0.2,
            "direction": "raises risk",
        },
        {
            "feature": "payer",
            "label": "Payer",
            "value": "Medicare (MC)",
            "contribution": -0.1,
            "direction": "lowers risk",
        },
    ]
    assert short_factors(factors) == (
        "Discharge disposition = Discharged/transferred to skilled nursing facility (3) (+); Payer = Medicare (MC) (-)"
    )
    # /chat's grounding knows concepts: naming a reported one (or its value) is grounded, naming another is not
    assert ungrounded("The transfer to a skilled nursing facility and her payer matter.", factors) == []
    assert ungrounded("Her HbA1c > 8% matters, and her insulin.", factors) == ["HbA1c", "Insulin"]


def test_the_model_cards_importance_is_per_concept() -> None:
    rng = np.random.default_rng(5)
    contribs = rng.normal(size=(50, len(FEATURE_NAMES) + 1))
    importance = shap_importance(contribs, FEATURE_NAMES)
    assert list(importance) == sorted(importance, key=importance.__getitem__, reverse=True)
    assert set(importance) == {c.label for c in CONCEPTS}
    discharge = np.abs(
        sum(contribs[:, FEATURE_NAMES.index(n)] for n in CONCEPT_BY_ID["discharge_disposition"].features)
    )
    assert importance["Discharge disposition"] == pytest.approx(discharge.mean(), abs=1e-5)


# ---- property: over real encounters, no factor names a category the patient is not in ---------------------------
@pytest.fixture(scope="module")
def real_records(raw_frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A few thousand in-cohort UCI encounters, parsed as every entry point parses them."""
    rows = raw_frame.sample(n=3000, random_state=17).to_dict("records")
    out = []
    for row in rows:
        record, errors = parse_encounter(row)
        if not errors and record["discharge_disposition_id"] not in EXCLUDED_DISPOSITIONS:
            out.append(record)
    return out


_PAYER_NAMES = {"Medicare": "MC", "Medicaid": "MD", "self-pay": "SP"}
_CHAPTER_NAMES = [name for _, _, name in icd9.CHAPTERS] + [icd9.V_CHAPTER, icd9.E_CHAPTER]


def assert_true_of(record: dict[str, Any]) -> None:
    """Every concept's value text names only the patient's own categories, and shows their code or value."""
    x = features(record)
    shown = {c.id: c.describe(record, None) for c in CONCEPTS}
    for cid, field in (
        ("admission_type", "admission_type_id"),
        ("discharge_disposition", "discharge_disposition_id"),
        ("admission_source", "admission_source_id"),
    ):
        codes = set(re.findall(r"\((\d+)\)$", shown[cid]))
        assert codes == {str(record[field])}, (cid, shown[cid])
        assert shown[cid] == code_text(field, record[field])
    payer = record["payer_code"]
    assert (shown["payer"] == NOT_RECORDED) == (payer is None)
    assert {code for name, code in _PAYER_NAMES.items() if name in shown["payer"]} <= {payer}
    assert payer is None or f"({payer})" in shown["payer"]
    for cid, field in (("race", "race"), ("specialty", "medical_specialty")):
        assert shown[cid] == (record[field] if record[field] is not None else NOT_RECORDED)
    diag_codes = [record[d] for d in ("diag_1", "diag_2", "diag_3")]
    chapters = {icd9.chapter(c) for c in diag_codes if c is not None}
    named = {name for name in _CHAPTER_NAMES if f"({name})" in shown["diagnoses"]}
    assert named == chapters, (diag_codes, shown["diagnoses"])
    assert shown["diagnoses"].split(" / ") == [icd9.describe(c) if c else NOT_RECORDED for c in diag_codes]
    assert shown["primary_diagnosis"].startswith(diag_codes[0] + " ") if diag_codes[0] else True
    for cid, drugs in (
        ("metformin", METFORMINS),
        ("sulfonylurea", SULFONYLUREAS),
        ("thiazolidinedione", THIAZOLIDINEDIONES),
    ):
        on = {m for m in drugs if record[m] != "No"}
        assert set(re.findall(r"([a-z-]+) \(", shown[cid])) == on, (cid, shown[cid])
    assert set(re.findall(r"([a-z-]+) \(", shown["diabetes_drugs"])) == {m for m in MEDICATIONS if record[m] != "No"}
    for cid, field in (("hba1c", "A1Cresult"), ("glucose", "max_glu_serum")):
        assert (shown[cid] == "not measured") == (record[field] == "None")
        assert record[field] == "None" or f"({record[field]})" in shown[cid]
    for cid, field in (
        ("length_of_stay", "time_in_hospital"),
        ("lab_tests", "num_lab_procedures"),
        ("procedures", "num_procedures"),
        ("medications", "num_medications"),
        ("number_diagnoses", "number_diagnoses"),
        ("outpatient_visits", "number_outpatient"),
        ("emergency_visits", "number_emergency"),
        ("inpatient_stays", "number_inpatient"),
    ):
        assert shown[cid].split(" ")[0] == str(record[field]), (cid, shown[cid])
    assert shown["charlson"].split(" ")[0] == f"{x['charlson_index']:.0f}"
    assert shown["lace"].split(" ")[0] == f"{x['lace_score']:.0f}"
    # "not recorded" only where the patient's field was not recorded
    for cid, text in shown.items():
        if NOT_RECORDED in text:
            fields = CONCEPT_BY_ID[cid].fields
            assert any(record.get(f) is None for f in fields), (cid, text)


@pytest.mark.slow
def test_property_real_encounters_every_concept_names_only_the_patients_categories(
    real_records: list[dict[str, Any]],
) -> None:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(real_records))
    def check(record: dict[str, Any]) -> None:
        assert_true_of(record)

    check()


def test_property_real_encounters_the_models_factors_are_those_sentences(
    real_records: list[dict[str, Any]], model: ModelBundle
) -> None:
    records = real_records[:300]
    X = encode(columns_from_records(records), np.zeros((len(records), 5), dtype=np.float32))
    contribs = model.contributions(X)
    sums = grouped(contribs)
    for i, (record, factors) in enumerate(
        zip(records, service.factor_lists(contribs, records, [None] * 300), strict=True)
    ):
        assert 1 <= len(factors) <= 5
        for f in factors:
            j = next(k for k, c in enumerate(CONCEPTS) if c.id == f["feature"])
            assert f["label"] == CONCEPTS[j].label and f["value"] == CONCEPTS[j].describe(record, None)
            assert f["direction"] == ("raises risk" if sums[i, j] > 0 else "lowers risk")
            assert f["contribution"] == pytest.approx(float(sums[i, j]), abs=1e-5)


def test_the_trained_model_card_ranks_concepts_not_one_hot_features(small_bundle: Path) -> None:
    card = (small_bundle / "model_card.md").read_text()
    table = card.split("## Top factors", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines() if line.startswith("| ")][2:]
    assert rows and set(rows) <= {c.label for c in CONCEPTS}
    importance = json.loads((small_bundle / "metrics.json").read_text())["importance"]
    assert set(importance) == {c.label for c in CONCEPTS}


def test_the_nightly_file_lists_the_same_concept_factors_as_predict(model: ModelBundle) -> None:
    from chalicelib.batch.output import score_rows
    from chalicelib.batch.rows import Row

    record = example()
    [row] = score_rows(model, [Row(2, ["900001"], record, None, ())], 0, request_id="nightly").rows
    contribs = model.contributions(encode(columns_from_records([record]), np.zeros((1, 5), dtype=np.float32)))
    assert row[3] == short_factors(factor_lists(contribs, [record], [None])[0])
    named = [part.split(" = ")[0] for part in row[3].split("; ")]
    assert len(named) == 3 and set(named) <= {c.label for c in CONCEPTS}
