"""XGBoost's own C prediction calls, made without the Python wrapper's per-call work.

For one row, ``Booster.predict(DMatrix(X), pred_contribs=True)`` spends more time in Python (argument checks,
JSON configs, a class built per call to wrap the output, copies) than XGBoost spends computing the SHAP
values. These functions make the same documented C API calls (``XGDMatrixCreateFromDense``,
``XGBoosterPredictFromDMatrix``, ``XGBoosterPredictFromDense``) on the library the ``xgboost`` package
loaded, with the configs prepared once: the numbers are XGBoost's, bit for bit (tested against the wrapper).
"""

from __future__ import annotations

import ctypes
import functools
import json
import math

import numpy as np
import xgboost as xgb
from xgboost.core import _LIB, XGBoostError

_ULONG = ctypes.c_uint64
_GET_LAST_ERROR = _LIB.XGBGetLastError
_GET_LAST_ERROR.restype = ctypes.c_char_p
_CREATE_DENSE = _LIB.XGDMatrixCreateFromDense
_FREE = _LIB.XGDMatrixFree
_FROM_DMATRIX = _LIB.XGBoosterPredictFromDMatrix
_FROM_DENSE = _LIB.XGBoosterPredictFromDense

_PREDICT_BASE = {"training": False, "iteration_begin": 0, "iteration_end": 0, "strict_shape": False}
_CONTRIBUTIONS = json.dumps({"type": 2, **_PREDICT_BASE}).encode()  # 2: exact SHAP (TreeSHAP)
_VALUE = json.dumps({"type": 0, **_PREDICT_BASE, "missing": float("nan"), "cache_id": 0}).encode()


@functools.cache
def _dense_config(threads: int) -> bytes:
    return json.dumps({"missing": float("nan"), "nthread": threads, "data_split_mode": 0}).encode()


def _check(code: int) -> None:
    if code != 0:
        message = _GET_LAST_ERROR()
        raise XGBoostError(message.decode() if message else "XGBoost call failed")


def _interface(X: np.ndarray) -> bytes:
    """The JSON array interface XGBoost reads a dense float32 matrix from (C order, no copy)."""
    return (
        f'{{"data": [{X.ctypes.data}, true], "shape": [{X.shape[0]}, {X.shape[1]}], '
        f'"strides": null, "typestr": "<f4", "version": 3}}'
    ).encode()


def _matrix(X: np.ndarray) -> np.ndarray:
    if X.ndim != 2:
        raise ValueError(f"expected a 2-d feature matrix, got {X.ndim} dimensions")
    return np.ascontiguousarray(X, dtype=np.float32)


def _result(shape: ctypes._Pointer, dims: ctypes.c_uint64, out: ctypes._Pointer, expect: tuple[int, ...]) -> np.ndarray:
    got = tuple(shape[i] for i in range(dims.value))
    if got != expect:
        raise XGBoostError(f"XGBoost returned shape {got}, expected {expect}")
    size = math.prod(expect)
    # XGBoost owns the buffer until this thread's next call: copy it out now.
    return (
        np.frombuffer(memoryview((ctypes.c_float * size).from_address(ctypes.addressof(out.contents))), np.float32)
        .reshape(expect)
        .copy()
    )


def contributions(booster: xgb.Booster, X: np.ndarray, threads: int = 1) -> np.ndarray:
    """SHAP values (n × (features + 1), the bias last), as ``predict(..., pred_contribs=True)`` returns them."""
    X = _matrix(X)
    handle = ctypes.c_void_p()
    _check(_CREATE_DENSE(_interface(X), _dense_config(threads), ctypes.byref(handle)))
    try:
        shape, dims, out = ctypes.POINTER(_ULONG)(), _ULONG(), ctypes.POINTER(ctypes.c_float)()
        _check(
            _FROM_DMATRIX(
                booster.handle, handle, _CONTRIBUTIONS, ctypes.byref(shape), ctypes.byref(dims), ctypes.byref(out)
            )
        )
        return _result(shape, dims, out, (X.shape[0], X.shape[1] + 1))
    finally:
        _FREE(handle)


def probabilities(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    """The booster's output (a probability for ``binary:logistic``), as ``inplace_predict`` returns it."""
    X = _matrix(X)
    shape, dims, out = ctypes.POINTER(_ULONG)(), _ULONG(), ctypes.POINTER(ctypes.c_float)()
    _check(
        _FROM_DENSE(
            booster.handle, _interface(X), _VALUE, None, ctypes.byref(shape), ctypes.byref(dims), ctypes.byref(out)
        )
    )
    return _result(shape, dims, out, (X.shape[0],))
