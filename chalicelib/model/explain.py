"""SHAP contributions → factors a clinician reads correctly: one factor per input or clinical concept.

The model sees one-hot and derived features ("discharge_home", "diags_circulatory", "charlson_index"), each named by
what it means when it is 1. Shown one by one they read wrongly: "Discharged home: 3 — raises risk" for a patient
transferred to a nursing facility (the factor was the *absence* of a home discharge). So every feature belongs to
exactly one concept (the field a person entered, or one derived score); a concept's contribution is the sum of its
features' SHAP values (they are additive: the concepts' sums still add up to the prediction), and it is shown with
the patient's own value in words: "Discharge disposition: Discharged/transferred to skilled nursing facility (3)".

Descriptions of the coded fields come from the data set's IDs_mapping.csv, shipped as ``ids_mapping.json`` (the
serving Lambda has no data set; ``python -m chalicelib.model.explain ZIP`` regenerates it and a test compares the two).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from chalicelib.data.schema import MEDICATIONS
from chalicelib.features import icd9
from chalicelib.features.history import PatientHistory
from chalicelib.features.table import (
    DIAGS,
    FEATURE_BY_NAME,
    FEATURE_NAMES,
    METFORMINS,
    SULFONYLUREAS,
    THIAZOLIDINEDIONES,
)

TOP_FACTORS = 5
IDS_MAPPING_PATH = Path(__file__).with_name("ids_mapping.json")
NOT_RECORDED = "not recorded"
Record = Mapping[str, Any]
Describe = Callable[[Record, PatientHistory | None], str]


# ---- IDs_mapping.csv → ids_mapping.json -------------------------------------------------------------------------
def ids_mapping_from_csv(text: str) -> dict[str, dict[str, str]]:
    """The three code tables of IDs_mapping.csv: blocks headed '<field>,description', separated by an empty row.
    Descriptions are kept as written, without the leading/trailing blanks some have."""
    tables: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for row in csv.reader(io.StringIO(text)):
        cells = [c.strip() for c in row]
        if not any(cells):
            current = None
        elif current is None:
            current = tables.setdefault(cells[0], {})
        else:
            current[cells[0]] = cells[1]
    return tables


def load_ids_mapping(path: Path = IDS_MAPPING_PATH) -> dict[str, dict[int, str]]:
    raw = json.loads(path.read_text())
    return {field: {int(code): text for code, text in table.items()} for field, table in raw.items()}


IDS_MAPPING = load_ids_mapping()
# IDs_mapping's words for "unknown"; the code itself was recorded, so these are said as such, never "not recorded".
_UNKNOWN_CODES = frozenset({"NULL", "Not Mapped", "Not Available", "Unknown/Invalid"})
# The CSV's abbreviations and typos, spelled out; every other word is the CSV's own.
_SPELLED_OUT = (
    ("Facility (SNF)", "Facility"),
    ("SNF", "skilled nursing facility"),
    ("ICF", "intermediate care facility"),
    ("Left AMA", "Left against medical advice"),
    ("rehab fac ", "rehab facility "),
    ("inpt/same fac reslt in a sep claim", "inpatient in the same facility, resulting in a separate claim"),
    ("critial", "critical"),
)


def code_text(field: str, code: int) -> str:
    """'Discharged/transferred to skilled nursing facility (3)': IDs_mapping's description of a code."""
    text = IDS_MAPPING[field].get(code)
    if text is None:
        return f"code {code}, not in IDs_mapping"
    if text in _UNKNOWN_CODES:
        return f"unknown, coded as {text} ({code})"
    for short, long in _SPELLED_OUT:
        text = text.replace(short, long)
    return f"{text.rstrip(' .')} ({code})"


# ---- the patient's value, in words ------------------------------------------------------------------------------
_DOSE = {"Steady": "steady dose", "Up": "dose increased", "Down": "dose decreased", "No": "not prescribed"}
_PAYERS = {"MC": "Medicare", "MD": "Medicaid", "SP": "self-pay"}
_A1C = {">8": "above 8% (>8)", ">7": "7-8% (>7)", "Norm": "normal (Norm)", "None": "not measured"}
_GLUCOSE = {">300": "above 300 mg/dL (>300)", ">200": "200-300 mg/dL (>200)", "Norm": "normal (Norm)"}
_GLUCOSE["None"] = "not measured"
_LACE_LOS = (0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 7)  # as features._LACE_LOS: index = days


def _or_not_recorded(value: Any, shown: Callable[[Any], str] = str) -> str:
    return NOT_RECORDED if value is None else shown(value)


def _age(r: Record, _: PatientHistory | None) -> str:
    lo, hi = r["age"][1:-1].split("-")
    return f"{lo}-{int(hi) - 1} years ({r['age']})"


def _drugs(names: Sequence[str]) -> Describe:
    def describe(r: Record, _: PatientHistory | None) -> str:
        on = [f"{m} ({_DOSE[r[m]]})" for m in names if r.get(m, "No") != "No"]
        return ", ".join(on) if on else "none prescribed"

    return describe


def _diabetes_drugs(r: Record, _: PatientHistory | None) -> str:
    on = [f"{m} ({_DOSE[r[m]]})" for m in MEDICATIONS if r.get(m, "No") != "No"]
    return f"{len(on)} prescribed: {', '.join(on)}" if on else "none prescribed"


def _per_day(field: str) -> Describe:
    return lambda r, _: f"{r[field]} ({r[field] / r['time_in_hospital']:.1f} per day)"


def _count(field: str, unit: str = "") -> Describe:
    return lambda r, _: f"{r[field]}{unit}"


def _diagnosis(code: str | None) -> str:
    return NOT_RECORDED if code is None else icd9.describe(code)


def _diagnoses(r: Record, _: PatientHistory | None) -> str:
    """All three, in order: the count features behind this concept include the primary diagnosis too."""
    return " / ".join(_diagnosis(r.get(d)) for d in DIAGS)


@lru_cache(maxsize=8192)
def _charlson_of(codes: tuple[str | None, ...]) -> tuple[int, tuple[str, ...]]:
    """(Charlson index, the conditions that made it) of one encounter's diagnoses; cached, as features' lookups are."""
    mask = 0
    for code in codes:
        mask |= icd9.charlson_mask(code)
    return icd9.charlson_from_mask(mask), icd9.charlson_conditions(mask)


def _charlson(r: Record, _: PatientHistory | None) -> str:
    index, conditions = _charlson_of((r.get("diag_1"), r.get("diag_2"), r.get("diag_3")))
    return f"{index} ({', '.join(conditions) if conditions else 'no Charlson condition coded'})"


def _lace(r: Record, _: PatientHistory | None) -> str:
    los, emergency = r["time_in_hospital"], r["number_emergency"]
    charlson = _charlson_of((r.get("diag_1"), r.get("diag_2"), r.get("diag_3")))[0]
    parts = (
        _LACE_LOS[los],
        3 * (r["admission_type_id"] in (1, 7)),
        charlson if charlson < 4 else 5,
        min(emergency, 4),
    )
    return (
        f"{sum(parts)} (length of stay {los} days: {parts[0]}, acute admission: {parts[1]}, "
        f"Charlson {charlson}: {parts[2]}, emergency visits {emergency}: {parts[3]})"
    )


def _uncontrolled(r: Record, _: PatientHistory | None) -> str:
    codes = [c for d in DIAGS if (c := r.get(d)) is not None and icd9.is_uncontrolled_diabetes(c)]
    return f"yes ({', '.join(codes)})" if codes else "no (no 250.x2 or 250.x3 code)"


def _a1c(r: Record, _: PatientHistory | None) -> str:
    text = _A1C[r["A1Cresult"]]
    return (
        f"{text}, with diabetes medication changed" if r["A1Cresult"] in (">7", ">8") and r["change"] == "Ch" else text
    )


def _history(_: Record, h: PatientHistory | None) -> str:
    if h is None or h.encounters == 0:
        return "none"
    return (
        f"{h.encounters} earlier encounters: {h.emergency_admissions} emergency admissions, {h.days} days in hospital, "
        f"{h.transfers_to_facility} discharges to a facility, at most {h.max_inpatient} prior-year inpatient stays"
    )


@dataclass(frozen=True, slots=True)
class Concept:
    """One thing a clinician recognises: its id (a factor's ``feature``), label, model features and value text."""

    id: str
    label: str
    features: tuple[str, ...]
    describe: Describe
    fields: tuple[str, ...]  # the input fields the value text is made from


def _c(cid: str, label: str, features: tuple[str, ...], describe: Describe, fields: tuple[str, ...] = ()) -> Concept:
    sources = fields or tuple(dict.fromkeys(s for n in features for s in FEATURE_BY_NAME[n].sources))
    return Concept(cid, label, features, describe, sources)


def _prefixed(*prefixes: str) -> tuple[str, ...]:
    return tuple(n for n in FEATURE_NAMES if n.startswith(prefixes))


CONCEPTS: tuple[Concept, ...] = (
    _c("age", "Age", ("age_years",), _age),
    _c("sex", "Sex", ("gender_male",), lambda r, _: str(r["gender"]).lower()),
    _c("race", "Race", _prefixed("race_"), lambda r, _: _or_not_recorded(r.get("race"))),
    _c("weight", "Weight", ("weight_recorded",), lambda r, _: _or_not_recorded(r.get("weight"), "{} lb".format)),
    _c(
        "payer",
        "Payer",
        _prefixed("payer_"),
        lambda r, _: _or_not_recorded(r.get("payer_code"), lambda p: f"{_PAYERS.get(p, 'other payer')} ({p})"),
    ),
    _c(
        "admission_type",
        "Admission type",
        (*_prefixed("admission_emergency", "admission_urgent", "admission_elective", "admission_type_"),),
        lambda r, _: code_text("admission_type_id", r["admission_type_id"]),
    ),
    _c(
        "admission_source",
        "Admission source",
        _prefixed("source_", "admission_source_code"),
        lambda r, _: code_text("admission_source_id", r["admission_source_id"]),
    ),
    _c(
        "discharge_disposition",
        "Discharge disposition",
        _prefixed("discharge_"),
        lambda r, _: code_text("discharge_disposition_id", r["discharge_disposition_id"]),
    ),
    _c(
        "specialty",
        "Admitting specialty",
        _prefixed("specialty_"),
        lambda r, _: _or_not_recorded(r.get("medical_specialty")),
    ),
    _c("length_of_stay", "Length of stay", ("time_in_hospital",), _count("time_in_hospital", " days")),
    _c("lab_tests", "Lab tests", ("num_lab_procedures", "labs_per_day"), _per_day("num_lab_procedures")),
    _c("procedures", "Procedures", ("num_procedures",), _count("num_procedures")),
    _c("medications", "Medications given", ("num_medications", "meds_per_day"), _per_day("num_medications")),
    _c("number_diagnoses", "Number of diagnoses", ("number_diagnoses",), _count("number_diagnoses")),
    _c("outpatient_visits", "Outpatient visits (prior year)", ("number_outpatient",), _count("number_outpatient")),
    _c("emergency_visits", "Emergency visits (prior year)", ("number_emergency",), _count("number_emergency")),
    _c(
        "inpatient_stays",
        "Inpatient stays (prior year)",
        ("number_inpatient", "any_inpatient", "inpatient_x_los", "age_x_inpatient"),
        _count("number_inpatient"),
        ("number_inpatient",),
    ),
    _c(
        "all_visits",
        "All visits (prior year)",
        ("total_visits",),
        lambda r, _: (
            f"{r['number_outpatient'] + r['number_emergency'] + r['number_inpatient']} ({r['number_outpatient']} "
            f"outpatient, {r['number_emergency']} emergency, {r['number_inpatient']} inpatient)"
        ),
    ),
    _c("hba1c", "HbA1c", ("a1c_tested", "a1c_high", "a1c_over_8", "a1c_high_and_changed"), _a1c),
    _c("glucose", "Glucose serum", ("glucose_tested", "glucose_high"), lambda r, _: _GLUCOSE[r["max_glu_serum"]]),
    _c("insulin", "Insulin", ("insulin_on", "insulin_up", "insulin_down"), lambda r, _: _DOSE[r["insulin"]]),
    _c("metformin", "Metformin", ("metformin_on",), _drugs(METFORMINS)),
    _c("sulfonylurea", "Sulfonylureas", ("sulfonylurea_on",), _drugs(SULFONYLUREAS)),
    _c("thiazolidinedione", "Thiazolidinediones", ("tzd_on",), _drugs(THIAZOLIDINEDIONES)),
    _c("diabetes_drugs", "Diabetes drugs", ("meds_active", "meds_changed", "meds_up", "meds_down"), _diabetes_drugs),
    _c(
        "medication_change",
        "Diabetes medication changed",
        ("med_change",),
        lambda r, _: "yes (Ch)" if r["change"] == "Ch" else "no",
    ),
    _c(
        "diabetes_medication",
        "Diabetes medication prescribed",
        ("diabetes_med",),
        lambda r, _: "yes" if r["diabetesMed"] == "Yes" else "no",
    ),
    _c(
        "primary_diagnosis",
        "Primary diagnosis",
        ("diag_1_code", *_prefixed("diag1_")),
        lambda r, _: _diagnosis(r.get("diag_1")),
    ),
    _c("diagnoses", "Diagnoses (all three)", ("diag_2_code", "diag_3_code", *_prefixed("diags_")), _diagnoses),
    _c("uncontrolled_diabetes", "Uncontrolled diabetes coded", ("diabetes_uncontrolled",), _uncontrolled),
    _c("charlson", "Charlson comorbidity index", ("charlson_index",), _charlson),
    _c("lace", "LACE index", ("lace_score",), _lace),
    _c("history", "Earlier encounters on record", _prefixed("hist_"), _history),
)
CONCEPT_BY_ID = {c.id: c for c in CONCEPTS}


def _membership() -> np.ndarray:
    """(features + 1) × concepts matrix of 0/1: row i has a 1 in its feature's concept column; the last row (XGBoost's
    bias column) is all 0. One matrix product then sums every concept's SHAP values at once (a few µs per request)."""
    index = {name: i for i, name in enumerate(FEATURE_NAMES)}
    members = [n for c in CONCEPTS for n in c.features]
    if sorted(members) != sorted(FEATURE_NAMES):
        missing, twice = set(FEATURE_NAMES) - set(members), {n for n in members if members.count(n) > 1}
        raise AssertionError(f"every feature in exactly one concept: missing {missing}, twice {twice}")
    matrix = np.zeros((len(FEATURE_NAMES) + 1, len(CONCEPTS)), dtype=np.float32)
    for j, concept in enumerate(CONCEPTS):
        matrix[[index[n] for n in concept.features], j] = 1.0
    return matrix


_MEMBERSHIP = _membership()


def grouped(contribs: np.ndarray) -> np.ndarray:
    """(n × concepts) summed SHAP contributions of XGBoost's (n × features + 1) output; the bias is left out."""
    return contribs @ _MEMBERSHIP


def factor(concept: Concept, contribution: float, record: Record, history: PatientHistory | None) -> dict[str, Any]:
    return {
        "feature": concept.id,
        "label": concept.label,
        "value": concept.describe(record, history),
        "contribution": round(contribution, 5),
        "direction": "raises risk" if contribution > 0 else "lowers risk",
    }


def factor_lists(
    contribs: np.ndarray,
    records: Sequence[Record],
    histories: Sequence[PatientHistory | None],
    k: int = TOP_FACTORS,
) -> list[list[dict[str, Any]]]:
    """Each row's k concepts with the largest summed contributions by magnitude, with the patient's values in words.

    Ranked for the whole batch in one sort (ties go to the earlier concept); a concept summing to 0 is not a factor."""
    values = grouped(contribs)
    order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k].tolist()
    out = []
    for row, sums, record, history in zip(order, values.tolist(), records, histories, strict=True):
        out.append([factor(CONCEPTS[j], sums[j], record, history) for j in row if sums[j] != 0.0])
    return out


def importance(contribs: np.ndarray) -> dict[str, float]:
    """Mean |summed SHAP| per concept, largest first, keyed by the concept's label: the model card's global view."""
    mean_abs = np.abs(grouped(contribs)).mean(axis=0)
    return {CONCEPTS[i].label: round(float(mean_abs[i]), 5) for i in np.argsort(mean_abs, kind="stable")[::-1]}


def main(argv: Sequence[str] | None = None) -> None:
    """Regenerate ids_mapping.json from the UCI zip: ``python -m chalicelib.model.explain [ZIP]``."""
    import sys
    import zipfile

    from chalicelib.data.dataset import SHARED_COPY

    args = list(sys.argv[1:] if argv is None else argv)
    with zipfile.ZipFile(args[0] if args else SHARED_COPY) as zf:
        member = next(m for m in zf.namelist() if m.lower().endswith("ids_mapping.csv"))
        text = zf.read(member).decode("utf-8")
    IDS_MAPPING_PATH.write_text(json.dumps(ids_mapping_from_csv(text), indent=1) + "\n")


if __name__ == "__main__":
    main()
