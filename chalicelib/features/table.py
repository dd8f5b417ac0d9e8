"""The feature table: every feature the model sees (name, how a clinician reads it, meaning, source columns) and the
groupings of coded columns behind them. ``encoding.encode`` computes them in this order; ``docs.py`` documents them
(docs/features.md); explanations, drift reports and the similar-patient index name them from here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from chalicelib.data.schema import MEDICATIONS
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


def specialty_group(specialty: str) -> str:
    """The group an admitting physician's specialty counts in: one of SPECIALTY_GROUPS, or "other" (no column)."""
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
