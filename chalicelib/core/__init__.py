"""Infrastructure every capability shares, with no domain knowledge: settings, lazily made AWS clients, key/value
storage (folder or S3), salted identifiers, PHI-safe telemetry, the prediction (audit) log, the Lambda step wrapper
and post-invoke work. Imports nothing else from chalicelib."""

__all__ = [
    "audit",
    "aws_clients",
    "errors",
    "identifiers",
    "lambda_step",
    "plotting",
    "post_invoke",
    "settings",
    "storage",
    "telemetry",
]
