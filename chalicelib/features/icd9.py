"""ICD-9 diagnosis groups (Strack et al. 2014) and a Charlson comorbidity score from diag_1..3.

Codes in the data set lost their leading zeros ("38" is 038, septicemia) and carry V (supplementary)
and E (external cause) codes; both fall in "other".
"""

from __future__ import annotations

from functools import lru_cache

DIAG_GROUPS = (
    "circulatory",
    "respiratory",
    "digestive",
    "diabetes",
    "injury",
    "musculoskeletal",
    "genitourinary",
    "neoplasms",
    "other",
)


@lru_cache(maxsize=4096)
def diag_group(code: str | None) -> str | None:
    """Strack et al. 2014 group of one ICD-9 code; None when the code is missing."""
    if not code:
        return None
    if code[0] in "VE":
        return "other"
    value = float(code)
    if int(value) == 250:
        return "diabetes"
    if 390 <= value < 460 or int(value) == 785:
        return "circulatory"
    if 460 <= value < 520 or int(value) == 786:
        return "respiratory"
    if 520 <= value < 580 or int(value) == 787:
        return "digestive"
    if 800 <= value < 1000:
        return "injury"
    if 710 <= value < 740:
        return "musculoskeletal"
    if 580 <= value < 630 or int(value) == 788:
        return "genitourinary"
    if 140 <= value < 240:
        return "neoplasms"
    return "other"


# (condition, weight, predicate on the numeric code). Quan et al. 2005 ICD-9 mapping, reduced to the
# three-digit precision of this data set.
_CHARLSON: tuple[tuple[str, int, tuple[tuple[float, float], ...]], ...] = (
    ("myocardial_infarction", 1, ((410, 411), (412, 413))),
    ("heart_failure", 1, ((428, 429),)),
    ("peripheral_vascular", 1, ((440, 442), (443.9, 444))),
    ("cerebrovascular", 1, ((430, 439),)),
    ("dementia", 1, ((290, 291),)),
    ("chronic_pulmonary", 1, ((490, 506),)),
    ("rheumatic", 1, ((710, 711), (714, 715), (725, 726))),
    ("peptic_ulcer", 1, ((531, 535),)),
    ("mild_liver", 1, ((570, 572),)),
    ("diabetes", 1, ((250.0, 250.4), (250.8, 251))),
    ("diabetes_complicated", 2, ((250.4, 250.8),)),
    ("hemiplegia", 2, ((342, 344), (344, 345))),
    ("renal", 2, ((582, 584), (585, 587))),
    ("malignancy", 2, ((140, 173), (174, 196), (200, 209))),
    ("severe_liver", 3, ((572, 573),)),
    ("metastatic", 6, ((196, 200),)),
    ("hiv_aids", 6, ((42, 45),)),
)


_NAMES = tuple(name for name, _, _ in _CHARLSON)
_WEIGHTS = {name: weight for name, weight, _ in _CHARLSON}
# A more severe form supersedes the milder one (Charlson scoring rule).
_SUPERSEDES = {"diabetes_complicated": "diabetes", "severe_liver": "mild_liver", "metastatic": "malignancy"}


def charlson_mask(code: str | None) -> int:
    """Bitmask of the Charlson conditions one ICD-9 code indicates (bit i = ``_CHARLSON[i]``)."""
    if not code or code[0] in "VE":
        return 0
    value = float(code)
    return sum(1 << i for i, (_, _, ranges) in enumerate(_CHARLSON) if any(lo <= value < hi for lo, hi in ranges))


def charlson_from_mask(mask: int) -> int:
    """Charlson index of the union of conditions across an encounter's diagnoses."""
    found = {name for i, name in enumerate(_NAMES) if mask >> i & 1}
    for severe, mild in _SUPERSEDES.items():
        if severe in found:
            found.discard(mild)
    return sum(_WEIGHTS[name] for name in found)


def charlson_index(codes: tuple[str | None, ...]) -> int:
    """Charlson comorbidity index over an encounter's diagnoses (each condition counted once)."""
    mask = 0
    for code in codes:
        mask |= charlson_mask(code)
    return charlson_from_mask(mask)


def numeric(code: str) -> float:
    """ICD-9 code as a number that keeps ranges contiguous: V codes 1000+, E codes 2000+."""
    if code[0] == "V":
        return 1000.0 + float(code[1:])
    if code[0] == "E":
        return 2000.0 + float(code[1:])
    return float(code)


def is_uncontrolled_diabetes(code: str | None) -> bool:
    """250.x2 / 250.x3: diabetes stated as uncontrolled."""
    return code is not None and code.startswith("250.") and len(code) == 6 and code[-1] in "23"


# ---- names a clinician reads (explanations) ----------------------------------------------------------------
# ICD-9-CM chapters: (first code, last code, short name). V and E codes are the two supplementary classifications.
CHAPTERS: tuple[tuple[int, int, str], ...] = (
    (1, 139, "infectious and parasitic diseases"),
    (140, 239, "neoplasms"),
    (240, 279, "endocrine, nutritional and metabolic diseases"),
    (280, 289, "diseases of the blood"),
    (290, 319, "mental disorders"),
    (320, 389, "diseases of the nervous system and sense organs"),
    (390, 459, "diseases of the circulatory system"),
    (460, 519, "diseases of the respiratory system"),
    (520, 579, "diseases of the digestive system"),
    (580, 629, "diseases of the genitourinary system"),
    (630, 679, "complications of pregnancy and childbirth"),
    (680, 709, "diseases of the skin"),
    (710, 739, "diseases of the musculoskeletal system"),
    (740, 759, "congenital anomalies"),
    (760, 779, "perinatal conditions"),
    (780, 799, "symptoms and ill-defined conditions"),
    (800, 999, "injury and poisoning"),
)
V_CHAPTER = "supplementary V code: factors influencing health status"
E_CHAPTER = "supplementary E code: external causes of injury"
CHARLSON_NAMES = {
    "myocardial_infarction": "myocardial infarction",
    "heart_failure": "heart failure",
    "peripheral_vascular": "peripheral vascular disease",
    "cerebrovascular": "cerebrovascular disease",
    "dementia": "dementia",
    "chronic_pulmonary": "chronic pulmonary disease",
    "rheumatic": "rheumatic disease",
    "peptic_ulcer": "peptic ulcer disease",
    "mild_liver": "mild liver disease",
    "diabetes": "diabetes",
    "diabetes_complicated": "diabetes with complications",
    "hemiplegia": "hemiplegia or paraplegia",
    "renal": "renal disease",
    "malignancy": "malignancy",
    "severe_liver": "moderate or severe liver disease",
    "metastatic": "metastatic solid tumour",
    "hiv_aids": "HIV/AIDS",
}
# 250.xy: the fourth digit is the complication, the fifth the type and control (ICD-9-CM category 250).
_DIABETES_COMPLICATION = (
    "without complication",
    "with ketoacidosis",
    "with hyperosmolarity",
    "with other coma",
    "with renal manifestations",
    "with ophthalmic manifestations",
    "with neurological manifestations",
    "with peripheral circulatory disorders",
    "with other specified manifestations",
    "with unspecified complication",
)
_DIABETES_TYPE = ("type 2 or unspecified", "type 1", "type 2 or unspecified, uncontrolled", "type 1, uncontrolled")


def chapter(code: str) -> str:
    """The ICD-9-CM chapter of one code (as the data set writes it: leading zeros dropped)."""
    if code[0] == "V":
        return V_CHAPTER
    if code[0] == "E":
        return E_CHAPTER
    whole = int(float(code))
    return next((name for lo, hi, name in CHAPTERS if lo <= whole <= hi), "no ICD-9-CM chapter")


def charlson_conditions(mask: int) -> tuple[str, ...]:
    """Names of the Charlson conditions in a mask that count towards the index (milder forms superseded)."""
    found = [name for i, name in enumerate(_NAMES) if mask >> i & 1]
    dropped = {mild for severe, mild in _SUPERSEDES.items() if severe in found}
    return tuple(CHARLSON_NAMES[name] for name in found if name not in dropped)


@lru_cache(maxsize=4096)
def describe(code: str) -> str:
    """'428 heart failure (diseases of the circulatory system)': the code, what it names where this module knows
    (a diabetes code's complication and type, a Charlson condition), and its chapter."""
    specific = ""
    if code.startswith("250"):
        digits = code[4:] if len(code) > 4 else ""
        specific = "diabetes mellitus"
        if digits:
            specific += f" {_DIABETES_COMPLICATION[int(digits[0])]}"
        if len(digits) == 2 and int(digits[1]) < 4:
            specific += f", {_DIABETES_TYPE[int(digits[1])]}"
    elif names := charlson_conditions(charlson_mask(code)):
        specific = ", ".join(names)
    return f"{code} {specific} ({chapter(code)})" if specific else f"{code} ({chapter(code)})"
