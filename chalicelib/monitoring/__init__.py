"""What happens after a prediction: drift reports, late outcome labels joined to the prediction log, the scheduled
monitor, and shadow scoring of an approved challenger with its report. Depends on registry and below."""

__all__ = ["drift_report", "monitor", "outcomes", "shadow", "shadow_report"]
