"""Answers to "why is this patient high risk?", grounded in what the model reported, and nothing else.

The facts are the calibrated risk and tier, the top SHAP factors, and how many of the most similar past patients
were readmitted. With a Bedrock model configured ($READMIT_CHAT_MODEL), Claude phrases the answer through the
Converse API; otherwise, or when Bedrock throttles, times out or fails, a deterministic template states the same
facts, and ``fallback_reason`` says why. The prompt carries no identifiers (the encounter itself never enters it,
and long digit runs in the question are masked), and an answer that names a model feature the model did not
report for this patient is replaced by the template (``ungrounded``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from . import settings, telemetry
from .aws_clients import LazyClient
from .explain import CONCEPT_BY_ID, CONCEPTS
from .features import FEATURE_BY_NAME

FallbackReason = Literal["not_configured", "throttled", "timeout", "error", "ungrounded"]
READ_TIMEOUT_S = 12.0  # API Gateway gives the whole request 29 s
MAX_TOKENS = 400
_THROTTLED = {"ThrottlingException", "ServiceQuotaExceededException", "TooManyRequestsException"}
_TIMED_OUT = {"ModelTimeoutException", "RequestTimeout", "RequestTimeoutException"}
_QUALIFIER = re.compile(
    r"\s*\((days|prior year)\)$", re.IGNORECASE
)  # "Inpatient stays (prior year)" → "Inpatient stays"
_LONG_NUMBER = re.compile(r"\d{6,}")  # UCI identifiers are 6-9 digits; clinical values in a question are short


@dataclass(frozen=True)
class Facts:
    """Everything an answer may rest on."""

    risk: float
    tier: str
    factors: Sequence[Mapping[str, Any]]
    similar_count: int
    similar_rate: float


@dataclass(frozen=True)
class Answer:
    text: str
    source: Literal["bedrock", "template"]
    fallback_reason: FallbackReason | None


class ChatUnavailable(RuntimeError):
    """Bedrock gave no usable answer; ``reason`` is the fallback flag."""

    def __init__(self, reason: FallbackReason, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason: FallbackReason = reason


# ---- the prompt --------------------------------------------------------------------------------------------
SYSTEM = (
    "You explain a 30-day hospital readmission risk model's output to a clinician. Use only the facts given: the "
    "calibrated risk, its tier, the model's top factors for this patient, and the outcomes of similar past "
    "patients. Refer to factors by their labels exactly as given. Do not mention any other patient "
    "characteristic, diagnosis or treatment, and do not give treatment advice. Answer in at most 120 words."
)


def _factor_line(f: Mapping[str, Any]) -> str:
    return f"- {f['label']}: {f['value']} ({f['direction']}, SHAP {f['contribution']:+.3f})"


def scrub(question: str, identifiers: Sequence[Any] = ()) -> str:
    """The question with the encounter's identifiers and any identifier-like digit run masked."""
    for ident in identifiers:
        if ident is not None and str(ident):
            question = question.replace(str(ident), "[identifier]")
    return _LONG_NUMBER.sub("[identifier]", question)


def user_prompt(facts: Facts, question: str) -> str:
    factors = "\n".join(_factor_line(f) for f in facts.factors) or "- (none reported)"
    if facts.similar_count:
        similar = (
            f"{facts.similar_count} most similar past patients: {facts.similar_rate:.0%} were readmitted "
            "within 30 days."
        )
    else:
        similar = "No similar past patients are available."
    return (
        f"Risk of readmission within 30 days: {facts.risk:.1%} ({facts.tier} tier).\n"
        f"Top factors reported by the model:\n{factors}\n{similar}\n\nClinician's question: {question}"
    )


def template_answer(facts: Facts) -> str:
    """The deterministic answer: the same facts, stated plainly."""
    parts = [f"Estimated risk of readmission within 30 days: {facts.risk:.1%} ({facts.tier} risk tier)."]
    if facts.factors:
        named = "; ".join(f"{f['label']}: {f['value']} ({f['direction']})" for f in facts.factors)
        parts.append(f"The factors the model weighed most for this patient: {named}.")
    else:
        parts.append("The model reported no individual factors for this patient.")
    if facts.similar_count:
        readmitted = round(facts.similar_rate * facts.similar_count)
        parts.append(
            f"Among the {facts.similar_count} most similar past patients, {readmitted} "
            f"({facts.similar_rate:.0%}) were readmitted within 30 days."
        )
    else:
        parts.append("No similar past patients are indexed yet.")
    return " ".join(parts)


# ---- the grounding check ------------------------------------------------------------------------------------
def _forms(label: str, name: str) -> set[str]:
    return {label.lower(), _QUALIFIER.sub("", label).lower(), name.lower()}


def _pattern(form: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![a-z0-9_]){re.escape(form)}(?![a-z0-9_])")


# A factor is a concept (explain.CONCEPTS): it may be named by its own label or id, or by any of its model features'
# labels or names ("HbA1c > 8%" names the HbA1c concept).
_FORMS = {
    c.label: _forms(c.label, c.id).union(*(_forms(FEATURE_BY_NAME[n].label, n) for n in c.features)) for c in CONCEPTS
}
_PATTERNS = {form: _pattern(form) for forms in _FORMS.values() for form in forms}


def _reported_forms(factor: Mapping[str, Any]) -> set[str]:
    """What naming a reported factor may look like: its concept's forms, its label and value as shown, and the
    input fields it comes from (its value often names them)."""
    label, name = str(factor.get("label", "")), str(factor.get("feature", ""))
    forms = _forms(label, name) | {str(factor.get("value", "")).lower()}
    if concept := CONCEPT_BY_ID.get(name):
        forms |= _FORMS[concept.label] | {s.lower() for s in concept.fields}
    return {f for f in forms if f}


def ungrounded(answer: str, factors: Sequence[Mapping[str, Any]]) -> list[str]:
    """Labels of concepts the answer names although the model did not report them for this patient."""
    reported = {f.get("label") for f in factors}
    text = answer.lower()
    for form in sorted({x for f in factors for x in _reported_forms(f)}, key=len, reverse=True):
        text = (_PATTERNS.get(form) or _pattern(form)).sub(" ", text)
    return [
        label
        for label, forms in _FORMS.items()
        if label not in reported and any(_PATTERNS[f].search(text) for f in forms)
    ]


# ---- Bedrock ---------------------------------------------------------------------------------------------------
def bedrock_client(read_timeout: float = READ_TIMEOUT_S, **kwargs: Any) -> Any:
    """A bedrock-runtime client that gives up quickly: no retries (the template answers instead), short timeouts."""
    import boto3
    from botocore.config import Config

    config = Config(read_timeout=read_timeout, connect_timeout=3, retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.client("bedrock-runtime", config=config, **kwargs)


class BedrockChat:
    """Claude through the Bedrock Converse API; every failure becomes a ChatUnavailable with its reason."""

    def __init__(self, model_id: str, client: Any = None) -> None:
        self.model_id = model_id
        self._client = client

    client = LazyClient("bedrock-runtime", bedrock_client)

    def ask(self, system: str, prompt: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

        try:
            response = self.client.converse(
                modelId=self.model_id,
                system=[{"text": system}],
                messages=[{"role": "user", "content": [{"text": prompt}]}],
                inferenceConfig={"maxTokens": MAX_TOKENS, "temperature": 0.0},
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            reason: FallbackReason = "throttled" if code in _THROTTLED else "timeout" if code in _TIMED_OUT else "error"
            raise ChatUnavailable(reason, code) from None
        except (ReadTimeoutError, ConnectTimeoutError) as exc:
            raise ChatUnavailable("timeout", type(exc).__name__) from None
        except BotoCoreError as exc:
            raise ChatUnavailable("error", type(exc).__name__) from None
        if response.get("stopReason") in ("guardrail_intervened", "content_filtered"):
            raise ChatUnavailable("error", str(response["stopReason"]))
        blocks = response.get("output", {}).get("message", {}).get("content", [])
        text = "".join(b.get("text", "") for b in blocks).strip()
        if not text:
            raise ChatUnavailable("error", "empty answer")
        return text


class Explainer:
    def __init__(self, chat: BedrockChat | None = None) -> None:
        self.chat = chat

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Explainer:
        model = env.get(settings.ENV_CHAT_MODEL)
        return cls(BedrockChat(model) if model else None)

    def answer(self, facts: Facts, question: str, identifiers: Sequence[Any] = ()) -> Answer:
        if self.chat is None:
            return Answer(template_answer(facts), "template", "not_configured")
        try:
            text = self.chat.ask(SYSTEM, user_prompt(facts, scrub(question, identifiers)))
        except ChatUnavailable as exc:
            telemetry.logger.warning("chat fallback", extra={"reason": exc.reason, "detail": str(exc)})
            return Answer(template_answer(facts), "template", exc.reason)
        except Exception as exc:  # anything else from the client (an unknown shape, a stubbed service): still answer
            telemetry.logger.warning("chat fallback", extra={"reason": "error", "error_type": type(exc).__name__})
            return Answer(template_answer(facts), "template", "error")
        if named := ungrounded(text, facts.factors):
            telemetry.logger.warning("chat fallback", extra={"reason": "ungrounded", "labels": named})
            return Answer(template_answer(facts), "template", "ungrounded")
        return Answer(text, "bedrock", None)
