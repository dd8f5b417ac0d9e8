"""The one feature code path: encounters in columnar form (+ each patient's earlier history) → features.

Training, batch prediction and the API all call ``encode``. It is numpy over columns, so a batch of
100k encounters and a single API request run the same code; the online path builds its one-row columns
without pandas or scikit-learn. Every feature is documented in ``FEATURES`` (name, how a clinician
reads it, meaning, source columns); ``docs/features.md`` is generated from it (``readmit features``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from chalicelib.data.schema import COLUMN_BY_NAME, MEDICATIONS, category_code
from chalicelib.features import icd9
from chalicelib.features.icd9 import DIAG_GROUPS

HISTORY = "history"  # pseudo-column: the same patient's earlier encounters (never their outcomes)
Columns = Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    label: str  # what the feature means when it is 1 (or its value); factors are named by concept (explain.py)
    sources: tuple[str, ...]
    meaning: str


SULFONYLUREAS = (
    "chlorpropamide",
    "glimepiride",
    "acetohexamide",
    "glipizide",
    "glyburide",
    "tolbutamide",
    "tolazamide",
    "glyburide-metformin",
    "glipizide-metformin",
    "glimepiride-pioglitazone",
)
THIAZOLIDINEDIONES = (
    "pioglitazone",
    "rosiglitazone",
    "troglitazone",
    "glimepiride-pioglitazone",
    "metformin-rosiglitazone",
    "metformin-pioglitazone",
)
METFORMINS = (
    "metformin",
    "glyburide-metformin",
    "glipizide-metformin",
    "metformin-rosiglitazone",
    "metformin-pioglitazone",
)
RACES = ("Caucasian", "AfricanAmerican", "Hispanic", "Asian", "Other")
DIAGS = ("diag_1", "diag_2", "diag_3")
UTILISATION = ("number_outpatient", "number_emergency", "number_inpatient")
COUNTS = (
    "time_in_hospital",
    "num_lab_procedures",
    "num_procedures",
    "num_medications",
    "number_diagnoses",
    "number_outpatient",
    "number_emergency",
    "number_inpatient",
)


# ---- groupings of coded columns (documented in FEATURES) ------------------------------------------
ADMISSION_GROUPS = {"emergency": (1, 7), "urgent": (2,), "elective": (3,), "type_unknown": (5, 6, 8)}
SOURCE_GROUPS = {
    "emergency_room": (7,),
    "referral": (1, 2, 3),
    "transfer": (4, 5, 6, 10, 18, 22, 25, 26),
    "unknown": (9, 15, 17, 20, 21),
}
DISCHARGE_GROUPS = {
    "home": (1,),
    "home_health": (6, 8),
    "facility": (3, 4, 15, 24),
    "left_ama": (7,),
    "transfer": (2, 5, 9, 10, 16, 17, 22, 23, 27, 28, 29, 30),
}  # unknown: 12, 18, 25, 26; excluded from the cohort: 11, 13, 14, 19, 20, 21
FACILITY_DISCHARGES = frozenset(DISCHARGE_GROUPS["facility"])
DISCHARGE_LABELS = {
    "home": "home",
    "home_health": "home with home health",
    "facility": "to nursing/skilled facility",
    "transfer": "transferred to other care",
    "left_ama": "left against medical advice",
}
SPECIALTY_GROUPS = ("internal_medicine", "emergency", "family_practice", "cardiology", "surgery", "missing")
PAYERS = {"medicare": "MC", "medicaid": "MD", "self": "SP"}


def _specialty_group(specialty: str) -> str:
    if specialty in ("InternalMedicine", "Hospitalist"):
        return "internal_medicine"
    if specialty == "Emergency/Trauma":
        return "emergency"
    if specialty == "Family/GeneralPractice":
        return "family_practice"
    if specialty.startswith("Cardiology"):
        return "cardiology"
    if specialty.startswith(("Surg", "Orthopedics")):
        return "surgery"
    return "other"


def _f(name: str, label: str, sources: tuple[str, ...] | str, meaning: str) -> Feature:
    return Feature(name, label, (sources,) if isinstance(sources, str) else sources, meaning)


FEATURES: tuple[Feature, ...] = (
    # demographics and payer
    _f("age_years", "Age", "age", "Midpoint of the age band, in years"),
    _f("gender_male", "Sex: male", "gender", "1 male, 0 female, missing when Unknown/Invalid"),
    *(_f(f"race_{r.lower()}", f"Race: {r}", "race", f"1 when race is {r}") for r in RACES),
    _f("race_missing", "Race not recorded", "race", "1 when race is '?'"),
    _f("weight_recorded", "Weight recorded", "weight", "1 when a weight band was recorded (3% of encounters)"),
    *(_f(f"payer_{k}", f"Payer: {k}", "payer_code", f"1 when payer_code is {v}") for k, v in PAYERS.items()),
    _f("payer_missing", "Payer not recorded", "payer_code", "1 when payer_code is '?'"),
    # admission and discharge
    *(
        _f(f"admission_{g}", f"Admission: {g.replace('_', ' ')}", "admission_type_id", f"admission_type_id in {ids}")
        for g, ids in ADMISSION_GROUPS.items()
    ),
    *(
        _f(f"source_{g}", f"Admitted via {g.replace('_', ' ')}", "admission_source_id", f"admission_source_id in {ids}")
        for g, ids in SOURCE_GROUPS.items()
    ),
    *(
        _f(
            f"discharge_{g}",
            f"Discharged {DISCHARGE_LABELS[g]}",
            "discharge_disposition_id",
            f"discharge_disposition_id in {ids}",
        )
        for g, ids in DISCHARGE_GROUPS.items()
    ),
    *(
        _f(
            f"specialty_{g}",
            f"Admitting specialty: {g.replace('_', ' ')}",
            "medical_specialty",
            f"Admitting physician's specialty grouped as {g}",
        )
        for g in SPECIALTY_GROUPS
    ),
    # raw codes, so trees can split finer than the groups above
    _f("admission_type_code", "Admission type code", "admission_type_id", "admission_type_id as a number"),
    _f(
        "discharge_code",
        "Discharge disposition code",
        "discharge_disposition_id",
        "discharge_disposition_id as a number",
    ),
    _f("admission_source_code", "Admission source code", "admission_source_id", "admission_source_id as a number"),
    *(
        _f(
            f"{d}_code",
            f"{'Primary' if d == 'diag_1' else 'Secondary'} diagnosis code",
            d,
            f"{d} as a number (V codes 1000+, E codes 2000+), so trees can split ICD-9 ranges",
        )
        for d in DIAGS
    ),
    # stay and utilisation
    _f("time_in_hospital", "Length of stay (days)", "time_in_hospital", "Days in hospital"),
    _f("num_lab_procedures", "Lab tests", "num_lab_procedures", "Lab tests during the stay"),
    _f("num_procedures", "Procedures", "num_procedures", "Non-lab procedures during the stay"),
    _f("num_medications", "Medications", "num_medications", "Distinct medications during the stay"),
    _f("number_diagnoses", "Number of diagnoses", "number_diagnoses", "Diagnoses entered"),
    _f("number_outpatient", "Outpatient visits (prior year)", "number_outpatient", "Outpatient visits"),
    _f("number_emergency", "Emergency visits (prior year)", "number_emergency", "Emergency visits"),
    _f("number_inpatient", "Inpatient stays (prior year)", "number_inpatient", "Inpatient admissions"),
    _f("total_visits", "All visits (prior year)", UTILISATION, "Outpatient + emergency + inpatient"),
    _f("any_inpatient", "Any inpatient stay (prior year)", "number_inpatient", "1 when number_inpatient > 0"),
    # labs
    _f("a1c_tested", "HbA1c tested", "A1Cresult", "1 when an HbA1c result exists"),
    _f("a1c_high", "HbA1c > 7%", "A1Cresult", "1 when HbA1c > 7 or > 8"),
    _f("a1c_over_8", "HbA1c > 8%", "A1Cresult", "1 when HbA1c > 8"),
    _f("glucose_tested", "Glucose serum tested", "max_glu_serum", "1 when a glucose serum result exists"),
    _f("glucose_high", "Glucose serum > 200", "max_glu_serum", "1 when max glucose serum > 200 or > 300"),
    # medications
    _f("meds_active", "Diabetes drugs prescribed", MEDICATIONS, "Count of the 23 drugs not 'No'"),
    _f("meds_changed", "Diabetes drug dose changes", MEDICATIONS, "Count of drugs dosed Up or Down"),
    _f("meds_up", "Diabetes drugs dosed up", MEDICATIONS, "Count of drugs dosed Up"),
    _f("meds_down", "Diabetes drugs dosed down", MEDICATIONS, "Count of drugs dosed Down"),
    _f("insulin_on", "On insulin", "insulin", "insulin not 'No'"),
    _f("insulin_up", "Insulin dosed up", "insulin", "insulin 'Up'"),
    _f("insulin_down", "Insulin dosed down", "insulin", "insulin 'Down'"),
    _f("metformin_on", "On metformin", METFORMINS, "Any metformin-containing drug"),
    _f("sulfonylurea_on", "On a sulfonylurea", SULFONYLUREAS, "Any sulfonylurea-containing drug"),
    _f("tzd_on", "On a thiazolidinedione", THIAZOLIDINEDIONES, "Any thiazolidinedione-containing drug"),
    _f("med_change", "Diabetes medication changed", "change", "change == 'Ch'"),
    _f("diabetes_med", "On diabetes medication", "diabetesMed", "diabetesMed == 'Yes'"),
    # diagnoses (Strack et al. 2014 ICD-9 groups)
    *(_f(f"diag1_{g}", f"Primary diagnosis: {g}", "diag_1", f"diag_1 in the {g} ICD-9 group") for g in DIAG_GROUPS),
    *(_f(f"diags_{g}", f"Diagnoses ({g})", DIAGS, f"How many of diag_1..3 are {g}") for g in DIAG_GROUPS),
    _f("diags_missing", "Diagnoses not recorded", DIAGS, "How many of diag_1..3 are '?'"),
    _f("diabetes_uncontrolled", "Uncontrolled diabetes coded", DIAGS, "Any diag 250.x2 / 250.x3"),
    _f("charlson_index", "Charlson comorbidity index", DIAGS, "Charlson index from diag_1..3 (Quan 2005)"),
    _f(
        "lace_score",
        "LACE score",
        ("time_in_hospital", "admission_type_id", "number_emergency", *DIAGS),
        "LACE readmission index (length of stay, acuity, Charlson, ED visits)",
    ),
    # interactions
    _f(
        "meds_per_day",
        "Medications per hospital day",
        ("num_medications", "time_in_hospital"),
        "num_medications / time_in_hospital",
    ),
    _f(
        "labs_per_day",
        "Lab tests per hospital day",
        ("num_lab_procedures", "time_in_hospital"),
        "num_lab_procedures / time_in_hospital",
    ),
    _f(
        "inpatient_x_los",
        "Prior stays × length of stay",
        ("number_inpatient", "time_in_hospital"),
        "number_inpatient × time_in_hospital",
    ),
    _f("age_x_inpatient", "Age × prior stays", ("age", "number_inpatient"), "age_years × number_inpatient"),
    _f(
        "a1c_high_and_changed",
        "High HbA1c and medication changed",
        ("A1Cresult", "change"),
        "HbA1c > 7 and change == 'Ch' (Strack et al. 2014)",
    ),
    # patient history: earlier encounters in the same file (batch) or the history store (online)
    _f("hist_encounters", "Earlier encounters on record", HISTORY, "Count of this patient's earlier encounters"),
    _f("hist_emergency_admissions", "Earlier emergency admissions", HISTORY, "Earlier emergency admissions"),
    _f("hist_days", "Earlier days in hospital", HISTORY, "Sum of earlier lengths of stay"),
    _f("hist_max_inpatient", "Earlier max prior-year stays", HISTORY, "Max number_inpatient on earlier encounters"),
    _f("hist_transfers_to_facility", "Earlier discharges to facilities", HISTORY, "Earlier SNF/ICF discharges"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURE_BY_NAME = {f.name: f for f in FEATURES}
_IDX = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _span(prefix: str, names: Iterable[str]) -> slice:
    idx = [_IDX[f"{prefix}{n}"] for n in names]
    assert idx == list(range(idx[0], idx[-1] + 1)), prefix
    return slice(idx[0], idx[-1] + 1)


# ---- patient history ------------------------------------------------------------------------------
@dataclass(slots=True)
class PatientHistory:
    """What a patient's earlier encounters tell us. Ordered by encounter_id; outcomes never enter."""

    encounters: int = 0
    emergency_admissions: int = 0
    days: int = 0
    max_inpatient: int = 0
    transfers_to_facility: int = 0

    def add(self, admission_type_id: int, time_in_hospital: int, number_inpatient: int, discharge: int) -> None:
        self.encounters += 1
        self.emergency_admissions += admission_type_id in (1, 7)  # emergency or trauma centre, as elsewhere
        self.days += time_in_hospital
        self.max_inpatient = max(self.max_inpatient, number_inpatient)
        self.transfers_to_facility += discharge in FACILITY_DISCHARGES

    def add_record(self, record: Mapping[str, Any]) -> None:
        self.add(
            record["admission_type_id"],
            record["time_in_hospital"],
            record["number_inpatient"],
            record["discharge_disposition_id"],
        )

    def as_row(self) -> tuple[int, int, int, int, int]:
        return (self.encounters, self.emergency_admissions, self.days, self.max_inpatient, self.transfers_to_facility)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PatientHistory:
        return cls(**{k: int(data.get(k, 0)) for k in cls.__dataclass_fields__})


HISTORY_WIDTH = len(PatientHistory.__dataclass_fields__)


def history_in_file(patients: list[Any], encounter_ids: list[int], cols: Columns) -> np.ndarray:
    """History features for a batch: each row sees only the same patient's encounters with a smaller
    encounter_id in this batch (the same accumulator the online history store uses)."""
    n = len(patients)
    if n >= _MANY_ROWS:
        ids = np.asarray(patients), np.asarray(encounter_ids)
        if all(a.dtype.kind in "iu" and a.shape == (n,) for a in ids):
            return _history_sorted(ids[0], ids[1], cols)
    out = np.zeros((n, HISTORY_WIDTH), dtype=np.float32)
    adm = cols["admission_type_id"].astype(int).tolist()
    los = cols["time_in_hospital"].astype(int).tolist()
    inp = cols["number_inpatient"].astype(int).tolist()
    dis = cols["discharge_disposition_id"].astype(int).tolist()
    seen: dict[Any, PatientHistory] = {}
    for i in sorted(range(n), key=encounter_ids.__getitem__):
        h = seen.get(patients[i])
        if h is None:
            h = seen[patients[i]] = PatientHistory()
        elif h.encounters:
            out[i] = h.as_row()
        h.add(adm[i], los[i], inp[i], dis[i])
    return out


_MANY_ROWS = 1024  # from here on the numpy form below beats the per-row accumulator


def _history_sorted(patients: np.ndarray, encounter_ids: np.ndarray, cols: Columns) -> np.ndarray:
    """``history_in_file``'s answer in numpy, for large batches: the same sums and maxima of earlier encounters.

    Rows are ordered by patient, then encounter_id (ties: input order, as the stable sort above); each row gets
    its patient's running totals *before* it (exclusive cumulative sums, and a running max of the previous
    rows' ``number_inpatient``, reset at every patient)."""
    n = len(patients)
    order = np.lexsort((encounter_ids, patients))  # stable: equal keys keep input order
    start = np.ones(n, dtype=bool)
    start[1:] = patients[order][1:] != patients[order][:-1]
    group = np.cumsum(start) - 1
    first = np.flatnonzero(start)

    def earlier_sum(values: np.ndarray) -> np.ndarray:
        before = np.cumsum(values[order]) - values[order]
        return before - before[first][group]

    adm = cols["admission_type_id"].astype(np.int64)
    inpatient = cols["number_inpatient"].astype(np.int64)[order]
    previous = np.zeros(n, dtype=np.int64)
    previous[1:] = inpatient[:-1]
    previous[start] = 0
    span = int(previous.max(initial=0)) + 1  # offsets keep the running max from crossing patients
    max_before = np.maximum.accumulate(group * span + previous) - group * span
    sorted_out = np.column_stack(
        (
            np.cumsum(np.ones(n, dtype=np.int64)) - 1 - first[group],
            earlier_sum(((adm == 1) | (adm == 7)).astype(np.int64)),
            earlier_sum(cols["time_in_hospital"].astype(np.int64)),
            max_before,
            earlier_sum(np.isin(cols["discharge_disposition_id"].astype(np.int64), list(FACILITY_DISCHARGES))),
        )
    )
    out = np.empty((n, HISTORY_WIDTH), dtype=np.float32)
    out[order] = sorted_out
    return out


# ---- lookup tables: one fancy-index per coded column keeps the one-row path fast ----------------------
def _code_table(groups: Mapping[str, tuple[int, ...]], size: int = 32) -> np.ndarray:
    table = np.zeros((size, len(groups)), dtype=np.float32)
    for j, ids in enumerate(groups.values()):
        table[list(ids), j] = 1.0
    return table


def _category_table(column: str, rows: Mapping[str, Iterable[float]], width: int) -> np.ndarray:
    """Rows indexed by category code; the last row (index -1) is 'missing'."""
    allowed = COLUMN_BY_NAME[column].allowed
    table = np.zeros((len(allowed) + 1, width), dtype=np.float32)
    for value, row in rows.items():
        table[-1 if value == "?" else allowed.index(value)] = list(row)
    return table


_ADMISSION = _code_table(ADMISSION_GROUPS)
_SOURCE = _code_table(SOURCE_GROUPS)
_DISCHARGE = _code_table(DISCHARGE_GROUPS)
_AGE = np.array([lo + 5.0 for lo in range(0, 100, 10)] + [np.nan], dtype=np.float32)
_GENDER = np.array([0.0, 1.0, np.nan, np.nan], dtype=np.float32)  # Female, Male, Unknown/Invalid, missing
_RACE = _category_table(
    "race", {**{r: [float(r == x) for x in RACES] + [0.0] for r in RACES}, "?": [0.0] * 5 + [1.0]}, 6
)
_PAYER = _category_table(
    "payer_code",
    {
        **{v: [float(v == p) for p in PAYERS.values()] + [0.0] for v in COLUMN_BY_NAME["payer_code"].allowed},
        "?": [0.0, 0.0, 0.0, 1.0],
    },
    4,
)
_SPECIALTY = _category_table(
    "medical_specialty",
    {
        **{
            s: [float(_specialty_group(s) == g) for g in SPECIALTY_GROUPS]
            for s in COLUMN_BY_NAME["medical_specialty"].allowed
        },
        "?": [0.0] * 5 + [1.0],
    },
    len(SPECIALTY_GROUPS),
)
# A1C: None, Norm, >7, >8  → tested, high, over 8;  glucose: None, Norm, >200, >300 → tested, high
_A1C = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=np.float32)
_GLU = np.array([[0, 0], [1, 0], [1, 1], [1, 1], [0, 0]], dtype=np.float32)
_UP, _DOWN, _NO = (category_code("metformin", v) for v in ("Up", "Down", "No"))
_MED_INDEX = {m: i for i, m in enumerate(MEDICATIONS)}
_INSULIN = _MED_INDEX["insulin"]
_MET = np.array([_MED_INDEX[m] for m in METFORMINS], dtype=np.intp)  # index arrays: a list is converted per call
_SU = np.array([_MED_INDEX[m] for m in SULFONYLUREAS], dtype=np.intp)
_TZD = np.array([_MED_INDEX[m] for m in THIAZOLIDINEDIONES], dtype=np.intp)
_CHANGED = category_code("change", "Ch")
_ON_MED = category_code("diabetesMed", "Yes")
_A1C_HIGH = (category_code("A1Cresult", ">7"), category_code("A1Cresult", ">8"))
_LACE_LOS = np.array([0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 7], dtype=np.float32)  # index = days (≤ 14)
_LACE_CHARLSON = np.array([0, 1, 2, 3] + [5] * 40, dtype=np.float32)
_N_GROUPS = len(DIAG_GROUPS)
_GROUP_CODES = np.arange(_N_GROUPS)


@lru_cache(maxsize=8192)
def _diag_info(code: str) -> tuple[int, int, bool, float]:
    """(group index or -1, Charlson condition bitmask, uncontrolled diabetes, numeric code) of one ICD-9 code."""
    if not code:
        return -1, 0, False, np.nan
    group = icd9.diag_group(code)
    return DIAG_GROUPS.index(group), icd9.charlson_mask(code), icd9.is_uncontrolled_diabetes(code), icd9.numeric(code)


_SMALL = 16  # below this many rows, per-code lookups beat np.unique's sort


@lru_cache(maxsize=4096)
def _charlson(mask: int) -> float:
    return float(icd9.charlson_from_mask(mask))


@lru_cache(maxsize=8192)
def _diag_row(codes: tuple[str, str, str]) -> tuple[tuple[int, ...], float, bool, tuple[float, ...]]:
    """_diag_block's answer for one encounter's three codes (cached: the online path scores one row at a time)."""
    info = [_diag_info(code) for code in codes]
    groups, numeric = tuple(i[0] for i in info), tuple(i[3] for i in info)
    return groups, _charlson(info[0][1] | info[1][1] | info[2][1]), any(i[2] for i in info), numeric


def _diag_block(cols: Columns) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Diagnosis groups (n×3), Charlson index, uncontrolled flag and numeric codes (n×3).

    Each distinct code is looked up once (cached); a batch maps its distinct codes back with np.unique."""
    codes = np.array([cols[d] for d in DIAGS]).T  # (n, 3) strings
    if len(codes) <= _SMALL:
        rows = [_diag_row(tuple(row)) for row in codes.tolist()]
        return (
            np.array([r[0] for r in rows], dtype=np.int16).reshape(codes.shape),
            np.array([r[1] for r in rows], dtype=np.float32),
            np.array([r[2] for r in rows], dtype=bool),
            np.array([r[3] for r in rows], dtype=np.float32).reshape(codes.shape),
        )
    uniq, inverse = np.unique(codes, return_inverse=True)
    info_u = [_diag_info(str(u)) for u in uniq]
    inverse = inverse.reshape(codes.shape)
    group = np.array([i[0] for i in info_u], dtype=np.int16)[inverse]
    mask = np.bitwise_or.reduce(np.array([i[1] for i in info_u], dtype=np.int64)[inverse], axis=1)
    uncontrolled = np.array([i[2] for i in info_u], dtype=bool)[inverse].any(axis=1)
    numeric = np.array([i[3] for i in info_u], dtype=np.float32)[inverse]
    masks, mask_inverse = np.unique(mask, return_inverse=True)
    charlson = np.array([_charlson(int(m)) for m in masks], dtype=np.float32)[mask_inverse]
    return group, charlson.reshape(-1), uncontrolled, numeric


_sum, _any = np.add.reduce, np.logical_or.reduce
# Column blocks of the feature matrix, resolved once (encode runs per request).
_ADMISSION_SPAN = _span("admission_", ADMISSION_GROUPS)
_SOURCE_SPAN = _span("source_", SOURCE_GROUPS)
_DISCHARGE_SPAN = _span("discharge_", DISCHARGE_GROUPS)
_SPECIALTY_SPAN = _span("specialty_", SPECIALTY_GROUPS)
_COUNTS_SPAN = _span("", COUNTS)
_DIAG1_SPAN = _span("diag1_", DIAG_GROUPS)
_DIAG_CODES_SPAN = _span("", [f"{d}_code" for d in DIAGS])
_DIAGS_SPAN = _span("diags_", DIAG_GROUPS)


def encode(cols: Columns, history: np.ndarray | None = None) -> np.ndarray:
    """Feature matrix (n × len(FEATURES), float32) of encounters in columnar form.

    The API calls this for one row per request, where numpy's per-call cost is the cost: reductions are the
    ufuncs' own (``np.add.reduce``), not the ndarray methods' Python wrappers."""
    n = len(cols["time_in_hospital"])
    out = np.zeros((n, len(FEATURES)), dtype=np.float32)
    c = cols
    age = _AGE[c["age"]]
    out[:, _IDX["age_years"]] = age
    out[:, _IDX["gender_male"]] = _GENDER[c["gender"]]
    out[:, _IDX["race_caucasian"] : _IDX["race_missing"] + 1] = _RACE[c["race"]]
    out[:, _IDX["weight_recorded"]] = c["weight"] >= 0
    out[:, _IDX["payer_medicare"] : _IDX["payer_missing"] + 1] = _PAYER[c["payer_code"]]
    out[:, _ADMISSION_SPAN] = _ADMISSION[c["admission_type_id"].astype(np.intp)]
    out[:, _SOURCE_SPAN] = _SOURCE[c["admission_source_id"].astype(np.intp)]
    out[:, _DISCHARGE_SPAN] = _DISCHARGE[c["discharge_disposition_id"].astype(np.intp)]
    out[:, _SPECIALTY_SPAN] = _SPECIALTY[c["medical_specialty"]]

    out[:, _IDX["admission_type_code"]] = c["admission_type_id"]
    out[:, _IDX["discharge_code"]] = c["discharge_disposition_id"]
    out[:, _IDX["admission_source_code"]] = c["admission_source_id"]

    counts = np.array([c[k] for k in COUNTS]).T  # (n, 8); np.stack costs 3× more
    out[:, _COUNTS_SPAN] = counts
    los, labs, meds_n, inpatient = counts[:, 0], counts[:, 1], counts[:, 3], counts[:, 7]
    out[:, _IDX["total_visits"]] = _sum(counts[:, 5:8], axis=1)
    out[:, _IDX["any_inpatient"]] = inpatient > 0

    a1c = c["A1Cresult"]
    out[:, _IDX["a1c_tested"] : _IDX["a1c_over_8"] + 1] = _A1C[a1c]
    out[:, _IDX["glucose_tested"] : _IDX["glucose_high"] + 1] = _GLU[c["max_glu_serum"]]

    meds = np.array([c[m] for m in MEDICATIONS]).T
    on = meds != _NO
    up = _sum(meds == _UP, axis=1)
    down = _sum(meds == _DOWN, axis=1)
    insulin = meds[:, _INSULIN]
    changed = c["change"] == _CHANGED
    out[:, _IDX["meds_active"]] = _sum(on, axis=1)
    out[:, _IDX["meds_changed"]] = up + down
    out[:, _IDX["meds_up"]] = up
    out[:, _IDX["meds_down"]] = down
    out[:, _IDX["insulin_on"]] = insulin != _NO
    out[:, _IDX["insulin_up"]] = insulin == _UP
    out[:, _IDX["insulin_down"]] = insulin == _DOWN
    out[:, _IDX["metformin_on"]] = _any(on[:, _MET], axis=1)
    out[:, _IDX["sulfonylurea_on"]] = _any(on[:, _SU], axis=1)
    out[:, _IDX["tzd_on"]] = _any(on[:, _TZD], axis=1)
    out[:, _IDX["med_change"]] = changed
    out[:, _IDX["diabetes_med"]] = c["diabetesMed"] == _ON_MED

    group, charlson, uncontrolled, numeric = _diag_block(c)
    out[:, _DIAG1_SPAN] = group[:, :1] == _GROUP_CODES
    out[:, _DIAG_CODES_SPAN] = numeric
    out[:, _DIAGS_SPAN] = _sum(group[:, :, None] == _GROUP_CODES, axis=1)
    out[:, _IDX["diags_missing"]] = _sum(group < 0, axis=1)
    out[:, _IDX["diabetes_uncontrolled"]] = uncontrolled
    out[:, _IDX["charlson_index"]] = charlson
    adm = c["admission_type_id"]
    acuity = ((adm == 1) | (adm == 7)) * 3.0
    out[:, _IDX["lace_score"]] = (
        _LACE_LOS[los.astype(np.intp)] + acuity + _LACE_CHARLSON[charlson.astype(np.intp)] + np.minimum(counts[:, 6], 4)
    )

    out[:, _IDX["meds_per_day"]] = meds_n / los
    out[:, _IDX["labs_per_day"]] = labs / los
    out[:, _IDX["inpatient_x_los"]] = inpatient * los
    out[:, _IDX["age_x_inpatient"]] = age * inpatient
    out[:, _IDX["a1c_high_and_changed"]] = ((a1c == _A1C_HIGH[0]) | (a1c == _A1C_HIGH[1])) & changed
    if history is not None:
        out[:, _IDX["hist_encounters"] :] = history
    return out


def feature_spec_markdown() -> str:
    """The feature-spec document, generated from ``FEATURES`` so it cannot drift from the code."""
    lines = [
        "# Features",
        "",
        f"{len(FEATURES)} features, computed by `chalicelib/features/encoding.py::encode` for training, batch and",
        "the API. All are known at discharge. `history` means the same patient's earlier encounters (ordered by",
        "`encounter_id`; their outcomes are never used). Generated by `readmit features`; do not edit by hand.",
        "",
        "| # | feature | shown as | meaning | source columns |",
        "|---|---|---|---|---|",
    ]
    for i, f in enumerate(FEATURES, 1):
        srcs = ", ".join(f"`{s}`" for s in f.sources)
        if len(f.sources) > 6:
            srcs = ", ".join(f"`{s}`" for s in f.sources[:3]) + f", … ({len(f.sources)} columns)"
        lines.append(f"| {i} | `{f.name}` | {f.label} | {f.meaning} | {srcs} |")
    return "\n".join(lines) + "\n"
