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
