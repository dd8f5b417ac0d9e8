"""The one feature code path: encounters (+ each patient's history) → the model's feature matrix, the ICD-9 groups it
uses, and the drift statistics computed on those features: ``table`` (what each feature is), ``history`` (earlier
encounters), ``encoding`` (``encode``), ``docs`` (docs/features.md), ``icd9``, ``drift``. Depends on data and core."""

__all__ = ["docs", "drift", "encoding", "history", "icd9", "table"]
