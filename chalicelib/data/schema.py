"""The UCI "Diabetes 130-US hospitals" encounter schema, and the one parser every entry point uses.

Raw values arrive as CSV strings (training, batch) or JSON values (API). ``parse_encounter``
turns either into a typed record: ints for counts and codes, strings for categories and
``None`` for missing (the data set writes missing as ``?``). Nothing is guessed: a value
outside the schema is reported with the field and the allowed values, never coerced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

IDENTIFIERS = ("encounter_id", "patient_nbr")
TARGET = "readmitted"
POSITIVE_LABEL = "<30"

MEDICATIONS = (
    "metformin",
    "repaglinide",
    "nateglinide",
    "chlorpropamide",
    "glimepiride",
    "acetohexamide",
    "glipizide",
    "glyburide",
    "tolbutamide",
    "pioglitazone",
    "rosiglitazone",
    "acarbose",
    "miglitol",
    "troglitazone",
    "tolazamide",
    "examide",
    "citoglipton",
    "insulin",
    "glyburide-metformin",
    "glipizide-metformin",
    "glimepiride-pioglitazone",
    "metformin-rosiglitazone",
    "metformin-pioglitazone",
)
MED_VALUES = ("No", "Steady", "Up", "Down")

AGE_BANDS = tuple(f"[{lo}-{lo + 10})" for lo in range(0, 100, 10))
WEIGHT_BANDS = (*tuple(f"[{lo}-{lo + 25})" for lo in range(0, 200, 25)), ">200")

MEDICAL_SPECIALTIES = (
    "AllergyandImmunology",
    "Anesthesiology",
    "Anesthesiology-Pediatric",
    "Cardiology",
    "Cardiology-Pediatric",
    "DCPTEAM",
    "Dentistry",
    "Dermatology",
    "Emergency/Trauma",
    "Endocrinology",
    "Endocrinology-Metabolism",
    "Family/GeneralPractice",
    "Gastroenterology",
    "Gynecology",
    "Hematology",
    "Hematology/Oncology",
    "Hospitalist",
    "InfectiousDiseases",
    "InternalMedicine",
    "Nephrology",
    "Neurology",
    "Neurophysiology",
    "Obsterics&Gynecology-GynecologicOnco",
    "Obstetrics",
    "ObstetricsandGynecology",
    "Oncology",
    "Ophthalmology",
    "Orthopedics",
    "Orthopedics-Reconstructive",
    "Osteopath",
    "Otolaryngology",
    "OutreachServices",
    "Pathology",
    "Pediatrics",
    "Pediatrics-AllergyandImmunology",
    "Pediatrics-CriticalCare",
    "Pediatrics-EmergencyMedicine",
    "Pediatrics-Endocrinology",
    "Pediatrics-Hematology-Oncology",
    "Pediatrics-InfectiousDiseases",
    "Pediatrics-Neurology",
    "Pediatrics-Pulmonology",
    "Perinatology",
    "PhysicalMedicineandRehabilitation",
    "PhysicianNotFound",
    "Podiatry",
    "Proctology",
    "Psychiatry",
    "Psychiatry-Addictive",
    "Psychiatry-Child/Adolescent",
    "Psychology",
    "Pulmonology",
    "Radiologist",
    "Radiology",
    "Resident",
    "Rheumatology",
    "Speech",
    "SportsMedicine",
    "Surgeon",
    "Surgery-Cardiovascular",
    "Surgery-Cardiovascular/Thoracic",
    "Surgery-Colon&Rectal",
    "Surgery-General",
    "Surgery-Maxillofacial",
    "Surgery-Neuro",
    "Surgery-Pediatric",
    "Surgery-Plastic",
    "Surgery-PlasticwithinHeadandNeck",
    "Surgery-Thoracic",
    "Surgery-Vascular",
    "SurgicalSpecialty",
    "Urology",
)

# Code tables from IDs_mapping.csv (shipped with the data set).
ADMISSION_TYPES = {
    1: "Emergency",
    2: "Urgent",
    3: "Elective",
    4: "Newborn",
    5: "Not Available",
    6: "NULL",
    7: "Trauma Center",
    8: "Not Mapped",
}
DISCHARGE_DISPOSITIONS = {
    1: "Discharged to home",
    2: "Transferred to another short term hospital",
    3: "Transferred to SNF",
    4: "Transferred to ICF",
    5: "Transferred to another type of inpatient care institution",
    6: "Discharged home with home health service",
    7: "Left AMA",
    8: "Discharged home under care of Home IV provider",
    9: "Admitted as an inpatient to this hospital",
    10: "Neonate discharged to another hospital",
    11: "Expired",
    12: "Still patient or expected to return for outpatient services",
    13: "Hospice / home",
    14: "Hospice / medical facility",
    15: "Transferred within this institution to Medicare swing bed",
    16: "Referred to another institution for outpatient services",
    17: "Referred to this institution for outpatient services",
    18: "NULL",
    19: "Expired at home (hospice)",
    20: "Expired in a medical facility (hospice)",
    21: "Expired, place unknown (hospice)",
    22: "Transferred to another rehab facility",
    23: "Transferred to a long term care hospital",
    24: "Transferred to a Medicaid-only nursing facility",
    25: "Not Mapped",
    26: "Unknown/Invalid",
    27: "Transferred to a federal health care facility",
    28: "Transferred to a psychiatric hospital",
    29: "Transferred to a Critical Access Hospital",
    30: "Transferred to another type of health care institution",
}
ADMISSION_SOURCES = {
    1: "Physician Referral",
    2: "Clinic Referral",
    3: "HMO Referral",
    4: "Transfer from a hospital",
    5: "Transfer from a SNF",
    6: "Transfer from another health care facility",
    7: "Emergency Room",
    8: "Court/Law Enforcement",
    9: "Not Available",
    10: "Transfer from critical access hospital",
    11: "Normal Delivery",
    12: "Premature Delivery",
    13: "Sick Baby",
    14: "Extramural Birth",
    15: "Not Available",
    17: "NULL",
    18: "Transfer from another home health agency",
    19: "Readmission to same home health agency",
    20: "Not Mapped",
    21: "Unknown/Invalid",
    22: "Transfer from hospital inpatient (separate claim)",
    23: "Born inside this hospital",
    24: "Born outside this hospital",
    25: "Transfer from ambulatory surgery center",
    26: "Transfer from hospice",
}

# Discharged to hospice or expired: no readmission is possible or meaningful (Strack et al. 2014).
EXCLUDED_DISPOSITIONS = frozenset({11, 13, 14, 19, 20, 21})

# [0-9], not \d: ASCII digits in every regex dialect (Python's \d also matches '٤٢٨'; the OpenAPI document, which
# carries this pattern, is read with ECMA-262's or whichever a client has).
# Numeric codes run 001-999 (written without leading zeros in the data set): an all-zero one (0, 000.5) is none.
ICD9_PATTERN = re.compile(
    r"^((?!0+(\.|$))[0-9]{1,3}(\.[0-9]{1,2})?|V[0-9]{2}(\.[0-9]{1,2})?|E[0-9]{3}(\.[0-9]{1,2})?)$"
)
MISSING = "?"
_INT = re.compile(r"-?[0-9]+")  # ASCII digits only: '²' or '٣' are not numbers here
_MAX_INT_TEXT = 30  # digits (and sign) of the longest integer text converted; every column's range fits in 13
_TOO_BIG = 10**_MAX_INT_TEXT  # stands for any longer one: outside every range, so it is reported as such


@dataclass(frozen=True, slots=True)
class Column:
    """One UCI column: its kind, whether it may be missing, and the values or range it allows."""

    name: str
    kind: str  # "id" | "int" | "code" | "category" | "icd9"
    nullable: bool = False
    allowed: tuple[str, ...] = ()
    low: int = 0
    high: int = 0
    codes: Mapping[int, str] | None = None
    description: str = ""


def _cat(name: str, allowed: tuple[str, ...], nullable: bool = False, description: str = "") -> Column:
    return Column(name, "category", nullable, allowed, description=description)


def _int(name: str, low: int, high: int, description: str) -> Column:
    return Column(name, "int", low=low, high=high, description=description)


COLUMNS: tuple[Column, ...] = (
    Column("encounter_id", "id", low=1, high=10**12, description="Unique identifier of the encounter"),
    Column("patient_nbr", "id", low=1, high=10**12, description="Unique identifier of the patient"),
    _cat("race", ("Caucasian", "AfricanAmerican", "Hispanic", "Asian", "Other"), True, "Race"),
    _cat("gender", ("Female", "Male", "Unknown/Invalid"), description="Gender"),
    _cat("age", AGE_BANDS, description="Age band in years"),
    _cat("weight", WEIGHT_BANDS, True, "Weight band in pounds (rarely recorded)"),
    Column("admission_type_id", "code", codes=ADMISSION_TYPES, description="Admission type"),
    Column("discharge_disposition_id", "code", codes=DISCHARGE_DISPOSITIONS, description="Discharge disposition"),
    Column("admission_source_id", "code", codes=ADMISSION_SOURCES, description="Admission source"),
    _int("time_in_hospital", 1, 14, "Length of stay in days"),
    _cat(
        "payer_code",
        ("MC", "HM", "SP", "BC", "MD", "CP", "UN", "CM", "OG", "PO", "DM", "CH", "WC", "OT", "MP", "SI", "FR"),
        True,
        "Payer (MC Medicare, MD Medicaid, SP self-pay, others private)",
    ),
    _cat("medical_specialty", MEDICAL_SPECIALTIES, True, "Specialty of the admitting physician"),
    _int("num_lab_procedures", 0, 200, "Lab tests performed during the encounter"),
    _int("num_procedures", 0, 20, "Procedures (other than lab tests) during the encounter"),
    _int("num_medications", 0, 200, "Distinct generic medications administered during the encounter"),
    _int("number_outpatient", 0, 200, "Outpatient visits in the year before the encounter"),
    _int("number_emergency", 0, 200, "Emergency visits in the year before the encounter"),
    _int("number_inpatient", 0, 200, "Inpatient visits in the year before the encounter"),
    Column("diag_1", "icd9", True, description="Primary diagnosis (ICD-9, first three digits and decimals)"),
    Column("diag_2", "icd9", True, description="Secondary diagnosis (ICD-9)"),
    Column("diag_3", "icd9", True, description="Additional secondary diagnosis (ICD-9)"),
    _int("number_diagnoses", 1, 30, "Diagnoses entered into the system"),
    _cat("max_glu_serum", ("None", "Norm", ">200", ">300"), description="Glucose serum test result"),
    _cat("A1Cresult", ("None", "Norm", ">7", ">8"), description="HbA1c test result"),
    *(_cat(m, MED_VALUES, description=f"{m}: prescribed and dose change") for m in MEDICATIONS),
    _cat("change", ("No", "Ch"), description="Any change in diabetic medications"),
    _cat("diabetesMed", ("No", "Yes"), description="Any diabetic medication prescribed"),
    _cat(TARGET, ("NO", ">30", "<30"), description="Readmitted within 30 days, after 30 days, or not"),
)
COLUMN_BY_NAME = {c.name: c for c in COLUMNS}
COLUMN_NAMES = tuple(c.name for c in COLUMNS)
# Everything a discharge summary holds; only the outcome is unknown at discharge.
AT_DISCHARGE = frozenset(COLUMN_NAMES) - {TARGET}
REQUIRED_FOR_PREDICTION = tuple(
    c.name for c in COLUMNS if not c.nullable and c.name not in IDENTIFIERS and c.name != TARGET
)


@dataclass(frozen=True, slots=True)
class FieldError:
    """A value that does not fit the schema: the field, and why, in words a caller can act on."""

    field: str
    message: str


def _parse_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and _INT.fullmatch(text := value.strip()):
        # Past Python's int-string limit (sys.get_int_max_str_digits) int() raises; such a number is out of every
        # column's range anyway, so it is reported as that.
        return int(text) if len(text) <= _MAX_INT_TEXT else (_TOO_BIG if text[0] != "-" else -_TOO_BIG)
    return None


def is_missing(value: Any) -> bool:
    """None, the UCI set's '?' or an empty cell: a missing value, whatever the column."""
    return value is None or value == MISSING or value == ""


def _allowed_text(col: Column) -> str:
    if col.kind == "code" and col.codes:
        return ", ".join(str(k) for k in col.codes)
    return ", ".join(repr(v) for v in col.allowed)


def parse_value(col: Column, value: Any) -> tuple[Any, str | None]:
    """Parse one raw value; return (typed value, None) or (None, reason)."""
    if is_missing(value):
        if col.nullable:
            return None, None
        return None, "is required" if value is None or value == "" else "is required and may not be '?'"
    if col.kind in ("int", "id", "code"):
        number = _parse_int(value)
        if number is None:
            return None, f"must be an integer, got {value!r}"
        shown = number if abs(number) < _TOO_BIG else f"a number of {len(str(value).strip().lstrip('-'))} digits"
        if col.kind == "code":
            assert col.codes is not None
            if number not in col.codes:
                return None, f"unknown code {shown}; allowed: {_allowed_text(col)}"
        elif not col.low <= number <= col.high:
            return None, f"must be between {col.low} and {col.high}, got {shown}"
        return number, None
    if not isinstance(value, str):
        return None, f"must be a string, got {type(value).__name__}"
    if col.kind == "icd9":
        text = value.strip()
        if not ICD9_PATTERN.match(text):
            return None, f"must be an ICD-9 code such as '428', '250.83', 'V45' or 'E878', got {value!r}"
        return text, None
    if value not in col.allowed:
        return None, f"unknown value {value!r}; allowed: {_allowed_text(col)}"
    return value, None


def parse_encounter(
    raw: Mapping[str, Any], *, require_target: bool = False, require_ids: bool = False
) -> tuple[dict[str, Any], list[FieldError]]:
    """Parse one raw encounter into a typed record, collecting every field error (not just the first)."""
    record: dict[str, Any] = {}
    errors: list[FieldError] = []
    for col in COLUMNS:
        value = raw.get(col.name)
        if col.name in IDENTIFIERS and not require_ids and is_missing(value):
            record[col.name] = None
            continue
        if col.name == TARGET and not require_target and is_missing(value):
            record[col.name] = None
            continue
        parsed, problem = parse_value(col, value)
        if problem:
            errors.append(FieldError(col.name, problem))
        record[col.name] = parsed
    return record, errors


def is_excluded(record: Mapping[str, Any]) -> bool:
    """Outside the model's cohort: discharged to hospice or expired."""
    return record.get("discharge_disposition_id") in EXCLUDED_DISPOSITIONS


def label(record: Mapping[str, Any]) -> int:
    return int(record[TARGET] == POSITIVE_LABEL)


# ---- columnar form: what the feature code consumes -------------------------------------------------
# Counts and id codes as float64; categories as the index into ``Column.allowed`` (-1 = missing);
# ICD-9 codes as fixed-width strings ('' = missing). Built from pandas in batch, from dicts online.
FEATURE_INPUTS = tuple(c for c in COLUMNS if c.kind != "id" and c.name != TARGET)
CATEGORY_INDEX = {c.name: {v: i for i, v in enumerate(c.allowed)} for c in COLUMNS if c.kind == "category"}


def category_code(column: str, value: str) -> int:
    """Index of a category value in its column's allowed tuple."""
    return CATEGORY_INDEX[column][value]


_CATEGORY_INPUTS = tuple(c.name for c in FEATURE_INPUTS if c.kind == "category")
_ICD9_INPUTS = tuple(c.name for c in FEATURE_INPUTS if c.kind == "icd9")
_NUMBER_INPUTS = tuple(c.name for c in FEATURE_INPUTS if c.kind not in ("category", "icd9"))


def columns_from_records(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Columnar form of parsed records (no pandas: this is the online path).

    One array per kind, built in one call and handed out row by row, because one request would otherwise
    pay for ~50 tiny arrays."""
    import numpy as np

    n = len(records)
    numbers = np.array([[r[name] for r in records] for name in _NUMBER_INPUTS], dtype=np.float64).reshape(
        len(_NUMBER_INPUTS), n
    )
    categories = np.array(
        [[-1 if (v := r[name]) is None else CATEGORY_INDEX[name][v] for r in records] for name in _CATEGORY_INPUTS],
        dtype=np.int16,
    ).reshape(len(_CATEGORY_INPUTS), n)
    codes = np.array(
        [["" if (v := r[name]) is None else v for r in records] for name in _ICD9_INPUTS], dtype="U7"
    ).reshape(len(_ICD9_INPUTS), n)
    by_name = {
        **dict(zip(_NUMBER_INPUTS, numbers, strict=True)),
        **dict(zip(_CATEGORY_INPUTS, categories, strict=True)),
        **dict(zip(_ICD9_INPUTS, codes, strict=True)),
    }
    return {c.name: by_name[c.name] for c in FEATURE_INPUTS}
