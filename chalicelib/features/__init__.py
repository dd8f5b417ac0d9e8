"""The one feature code path: encounters (+ each patient's history) → the model's feature matrix, the ICD-9 groups it
uses, and the drift statistics computed on those features. Depends on data and core."""

__all__ = ["drift", "encoding", "icd9"]
