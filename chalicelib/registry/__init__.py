"""Which model is which: versions, aliases and approval states over a folder or S3, the SageMaker Model Package Group
mirror, the child-process model check, the bundle loader and the serving side's hot-swapping model provider. Depends
on model and below."""

__all__ = ["loader", "model_check", "provider", "registry", "sagemaker"]
