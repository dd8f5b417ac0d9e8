"""The one feature code path: encounters in columnar form (+ each patient's earlier history) → features.

Training, batch prediction and the API all call ``encode``. It is numpy over columns, so a batch of
100k encounters and a single API request run the same code; the online path builds its one-row columns
without pandas or scikit-learn. The features, in column order, are ``table.FEATURES``; the history block
comes from ``history.py``; ``docs/features.md`` is generated from the table (``docs.py``, ``readmit features``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache

import numpy as np

from chalicelib.data.schema import COLUMN_BY_NAME, MEDICATIONS, category_code
from chalicelib.features import icd9
from chalicelib.features.icd9 import DIAG_GROUPS
from chalicelib.features.table import (
    ADMISSION_GROUPS,
    COUNTS,
    DIAGS,
    DISCHARGE_GROUPS,
    FEATURE_NAMES,
    FEATURES,
    METFORMINS,
    PAYERS,
    RACES,
    SOURCE_GROUPS,
    SPECIALTY_GROUPS,
    SULFONYLUREAS,
    THIAZOLIDINEDIONES,
    Columns,
    specialty_group,
)

_IDX = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _span(prefix: str, names: Iterable[str]) -> slice:
    idx = [_IDX[f"{prefix}{n}"] for n in names]
    assert idx == list(range(idx[0], idx[-1] + 1)), prefix
    return slice(idx[0], idx[-1] + 1)


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
            s: [float(specialty_group(s) == g) for g in SPECIALTY_GROUPS]
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
    uncontrolled = _any(np.array([i[2] for i in info_u], dtype=bool)[inverse], axis=1)
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
