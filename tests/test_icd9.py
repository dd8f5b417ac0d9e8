"""ICD-9 diagnosis groups (Strack et al. 2014), Charlson index, numeric codes: the edges."""

from __future__ import annotations

import pytest

from chalicelib.features.icd9 import (
    DIAG_GROUPS,
    charlson_from_mask,
    charlson_index,
    charlson_mask,
    diag_group,
    is_uncontrolled_diabetes,
    numeric,
)


# ---- Strack et al. 2014 groups ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "group"),
    [
        # diabetes: any 250.xx
        ("250", "diabetes"),
        ("250.83", "diabetes"),
        ("250.01", "diabetes"),
        ("250.9", "diabetes"),
        ("249", "other"),
        ("251", "other"),
        # supplementary (V) and external cause (E) codes
        ("V45", "other"),
        ("V57.1", "other"),
        ("E878", "other"),
        ("E909", "other"),
        # symptom codes Strack assigns to organ systems
        ("785", "circulatory"),
        ("786", "respiratory"),
        ("787", "digestive"),
        ("788", "genitourinary"),
        ("789", "other"),
        # range boundaries
        ("389", "other"),
        ("390", "circulatory"),
        ("459.99", "circulatory"),
        ("460", "respiratory"),
        ("519.9", "respiratory"),
        ("520", "digestive"),
        ("579", "digestive"),
        ("580", "genitourinary"),
        ("629", "genitourinary"),
        ("630", "other"),
        ("139", "other"),
        ("140", "neoplasms"),
        ("239", "neoplasms"),
        ("240", "other"),
        ("709", "other"),
        ("710", "musculoskeletal"),
        ("739", "musculoskeletal"),
        ("740", "other"),
        ("799", "other"),
        ("800", "injury"),
        ("999", "injury"),
        # '38' is 038 (septicemia) with its leading zero lost: not 380-range
        ("38", "other"),
        ("8", "other"),
    ],
)
def test_codes_fall_in_their_strack_group(code: str, group: str) -> None:
    assert diag_group(code) == group


@pytest.mark.parametrize("code", [None, ""])
def test_a_missing_code_has_no_group(code: str | None) -> None:
    assert diag_group(code) is None


def test_every_group_is_one_of_the_nine_documented_groups() -> None:
    codes = ["1", "38", "250.5", "401", "493", "562", "599", "715", "996", "174", "V58", "E849"]
    assert {diag_group(c) for c in codes} == set(DIAG_GROUPS)


# ---- Charlson index ---------------------------------------------------------------------------------------------
def test_heart_failure_scores_one() -> None:
    assert charlson_index(("428", None, None)) == 1


def test_no_diagnoses_or_only_v_and_e_codes_score_zero() -> None:
    assert charlson_index((None, None, None)) == 0
    assert charlson_index(("V45", "E878", "")) == 0
    assert charlson_mask("V45") == charlson_mask(None) == 0


def test_uncomplicated_diabetes_scores_one() -> None:
    assert charlson_index(("250.01", None, None)) == 1


def test_complicated_diabetes_supersedes_uncomplicated() -> None:
    # 250.4x (renal complication) 2 points; 250.0x would add 1 but the severe form replaces it: 2, not 3
    assert charlson_index(("250.41", None, None)) == 2
    assert charlson_index(("250.01", "250.41", None)) == 2
    assert charlson_index(("250.4", "250.02", None)) == 2


def test_metastatic_cancer_supersedes_malignancy() -> None:
    assert charlson_index(("153", None, None)) == 2  # colon cancer
    assert charlson_index(("196", None, None)) == 6  # secondary (metastatic) lymph node neoplasm
    assert charlson_index(("153", "196", None)) == 6  # not 8


def test_severe_liver_disease_supersedes_mild() -> None:
    assert charlson_index(("571", None, None)) == 1
    assert charlson_index(("571", "572", None)) == 3


def test_each_condition_is_counted_once_across_the_three_diagnoses() -> None:
    assert charlson_index(("428", "428", "428")) == 1
    assert charlson_index(("250.01", "250.02", "250.03")) == 1


def test_different_conditions_add_up() -> None:
    # heart failure 1 + COPD 1 + renal 2 = 4
    assert charlson_index(("428", "496", "585")) == 4


def test_charlson_index_equals_the_score_of_the_union_of_masks() -> None:
    codes = ("410", "250.6", "162")
    mask = charlson_mask(codes[0]) | charlson_mask(codes[1]) | charlson_mask(codes[2])
    assert charlson_from_mask(mask) == charlson_index(codes) == 1 + 2 + 2


@pytest.mark.parametrize(
    ("code", "quan_score"),
    [("411", 0), ("343", 2), ("173", 0), ("250.8", 1), ("250.92", 1), ("570", 1)],
)
def test_charlson_weights_follow_quan_2005(code: str, quan_score: int) -> None:
    assert charlson_index((code, None, None)) == quan_score


# ---- numeric codes ------------------------------------------------------------------------------------------
def test_numeric_code_keeps_plain_codes_as_numbers() -> None:
    assert numeric("38") == 38.0
    assert numeric("250.83") == pytest.approx(250.83)


def test_numeric_code_offsets_v_and_e_codes() -> None:
    assert numeric("V45") == 1045.0
    assert numeric("V57.1") == pytest.approx(1057.1)
    assert numeric("E878") == 2878.0


def test_numeric_code_keeps_ordering_within_and_across_code_families() -> None:
    ordered = ["8", "38", "250", "250.83", "459.99", "999", "V01", "V45", "V57.1", "V91", "E800", "E878", "E999"]
    values = [numeric(c) for c in ordered]
    assert values == sorted(values)
    assert len(set(values)) == len(values)


# ---- uncontrolled diabetes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", ["250.02", "250.03", "250.12", "250.83", "250.92"])
def test_fifth_digit_two_or_three_means_uncontrolled(code: str) -> None:
    assert is_uncontrolled_diabetes(code)


@pytest.mark.parametrize("code", ["250", "250.00", "250.01", "250.2", "250.3", "250.81", "251.02", "V50.02", None])
def test_other_codes_are_not_uncontrolled_diabetes(code: str | None) -> None:
    assert not is_uncontrolled_diabetes(code)


def test_a_code_outside_every_chapter_is_named_so_rather_than_raising() -> None:
    from chalicelib.features.icd9 import chapter

    assert chapter("0") == "no ICD-9-CM chapter"  # the API refuses it; other callers must not crash on it
    assert chapter("428") != "no ICD-9-CM chapter"
