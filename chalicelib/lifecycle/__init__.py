"""Retraining: the champion/challenger gate, promotion/approval/rejection (the only place the champion changes), local
retraining, the retraining state machine's steps and its SageMaker training jobs. Depends on monitoring, registry and
below."""

__all__ = ["errors", "gate", "pipeline", "promotion", "retrain", "sagemaker_jobs"]
