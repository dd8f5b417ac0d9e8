"""The retraining steps' errors, by the names statemachines/retrain.asl.json catches (chalicelib.core.errors says why
names, and which base means what). Each subclasses the builtin or library type its callers caught before, so a
caller catching ValueError, KeyError or InvalidModel still does."""

from __future__ import annotations

from chalicelib.core.errors import Misconfigured, PermanentError
from chalicelib.registry.model_check import InvalidModel


class TrainingConfigMissing(Misconfigured, KeyError):
    """A setting the training job needs (image, role, output, KMS key) is not configured on the function."""


class InvalidGateSetting(Misconfigured, ValueError):
    """A gate threshold of the stack ($READMIT_GATE_*) is not a number."""


class GateNotPassed(PermanentError, ValueError):
    """Promote was called for a decision that did not pass the gate: the step would promote a failed model."""


class AwaitingApproval(PermanentError, ValueError):
    """Promote was called for a candidate pending a person's approval (policy manual): a person approves it first."""


class ModelRefused(PermanentError, InvalidModel):
    """The stored model failed validation (model_check) at registration or promotion: it would crash the API."""
