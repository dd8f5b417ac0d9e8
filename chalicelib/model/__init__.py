"""Training and the model itself: grouped CV training, calibration, evaluation with patient-clustered intervals, tuning,
the hash-checked bundle serving loads, XGBoost's C calls, SHAP explanations, the model card and experiment tracking.
Training modules import pandas/scikit-learn; bundle, calibration, explain and xgboost_calls never do (serving imports
them). Depends on features, data and core."""

__all__ = [
    "bootstrap",
    "bundle",
    "calibration",
    "capacity",
    "card",
    "evaluation",
    "explain",
    "sagemaker_train",
    "tracking",
    "train",
    "tune",
    "xgboost_calls",
]
