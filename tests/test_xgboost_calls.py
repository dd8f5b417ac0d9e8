"""The direct C calls give exactly what XGBoost's Python wrapper gives, and fail like it does."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from chalicelib.data.tabular import Table
from chalicelib.features.encoding import encode
from chalicelib.features.table import FEATURE_NAMES
from chalicelib.model import xgboost_calls
from chalicelib.model.bundle import ModelBundle


@pytest.fixture(scope="module")
def model(small_bundle: Path) -> ModelBundle:
    return ModelBundle.load(small_bundle)


@pytest.fixture(scope="module")
def real_rows(sample_table: Table) -> np.ndarray:
    """Real encounters' features, NaN (missing) values included."""
    X = encode(sample_table.cols)
    assert np.isnan(X).any()
    return X


def wrapper_contribs(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    return booster.predict(xgb.DMatrix(X, missing=np.nan), pred_contribs=True, validate_features=False)


@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("threads", [1, 2])
def test_contributions_equal_the_wrapper_bit_for_bit(
    model: ModelBundle, real_rows: np.ndarray, rows: int, threads: int
) -> None:
    X = real_rows[:rows]
    got = xgboost_calls.contributions(model.booster, X, threads)
    assert got.dtype == np.float32 and got.shape == (rows, len(FEATURE_NAMES) + 1)
    np.testing.assert_array_equal(got, wrapper_contribs(model.booster, X))


def test_probabilities_equal_inplace_predict_bit_for_bit(model: ModelBundle, real_rows: np.ndarray) -> None:
    for X in (real_rows[:1], real_rows[:500]):
        expected = model.booster.inplace_predict(X, validate_features=False)
        np.testing.assert_array_equal(xgboost_calls.probabilities(model.booster, X), expected)


def test_inputs_that_are_not_c_ordered_float32_are_converted_not_misread(
    model: ModelBundle, real_rows: np.ndarray
) -> None:
    X = real_rows[:20]
    fortran64 = np.asfortranarray(X.astype(np.float64))
    strided = np.repeat(X, 2, axis=0)[::2]  # a view with a row stride twice the row size
    for variant in (fortran64, strided):
        np.testing.assert_array_equal(
            xgboost_calls.contributions(model.booster, variant), wrapper_contribs(model.booster, X)
        )
        np.testing.assert_array_equal(
            xgboost_calls.probabilities(model.booster, variant),
            model.booster.inplace_predict(X, validate_features=False),
        )


def test_the_result_is_a_copy_that_later_calls_do_not_overwrite(model: ModelBundle, real_rows: np.ndarray) -> None:
    first = xgboost_calls.contributions(model.booster, real_rows[:1])
    kept = first.copy()
    xgboost_calls.contributions(model.booster, real_rows[1:2])  # XGBoost reuses its output buffer per thread
    np.testing.assert_array_equal(first, kept)


def test_a_matrix_of_the_wrong_width_raises_xgboosts_error_not_a_crash(model: ModelBundle) -> None:
    narrow = np.zeros((1, len(FEATURE_NAMES) - 3), dtype=np.float32)
    with pytest.raises(xgb.core.XGBoostError):
        xgboost_calls.probabilities(model.booster, narrow)
    with pytest.raises(ValueError, match="2-d"):
        xgboost_calls.contributions(model.booster, np.zeros(len(FEATURE_NAMES), dtype=np.float32))


def test_concurrent_single_row_calls_from_threads_each_get_their_own_answer(
    model: ModelBundle, real_rows: np.ndarray
) -> None:
    rows = real_rows[:64]
    expected = wrapper_contribs(model.booster, rows)
    got: dict[int, np.ndarray] = {}
    start = threading.Barrier(4)

    def work(offset: int) -> None:
        start.wait()
        for _ in range(5):
            for i in range(offset, len(rows), 4):
                got[i] = xgboost_calls.contributions(model.booster, rows[i : i + 1])[0]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(np.stack([got[i] for i in range(len(rows))]), expected)
