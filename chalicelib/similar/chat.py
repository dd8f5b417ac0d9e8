"""Answers to "why is this patient high risk?", grounded in what the model reported, and nothing else.

The facts are the calibrated risk and tier, the top SHAP factors, and how many of the most similar past patients
were readmitted. With a Bedrock model configured ($READMIT_CHAT_MODEL), Claude phrases the answer through the
Converse API; otherwise, or when Bedrock throttles, times out or fails, a deterministic template states the same
facts, and ``fallback_reason`` says why. The prompt carries no identifiers (the encounter itself never enters it,
and long digit runs in the question are masked), and an answer that names a model feature the model did not
report for this patient is replaced by the template (``ungrounded``). With a Bedrock Guardrail configured
($READMIT_GUARDRAIL_ID, $READMIT_GUARDRAIL_VERSION), it checks the clinician's question and the model's answer
(personal information, dosing and treatment instructions); when it intervenes, the template answers
(``guardrail``) and the response says whether the prompt or the answer was blocked and by which policies, never
what was blocked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chalicelib.core import settings, telemetry
from chalicelib.core.aws_clients import LazyClient
from chalicelib.features.table import FEATURE_BY_NAME
from chalicelib.model.explain import CONCEPT_BY_ID, CONCEPTS

FallbackReason = Literal["not_configured", "throttled", "timeout", "error", "ungrounded", "guardrail"]
GuardrailStage = Literal["prompt", "answer", "unknown"]  # where the guardrail intervened (unknown: no trace)
# The policy members of a GuardrailAssessment in Converse's trace (botocore/data/bedrock-runtime/2023-09-30/
# service-2.json, shape GuardrailAssessment; its other members, invocationMetrics and appliedGuardrailDetails, are
# no policies). Each holds lists of findings with an ``action``: BLOCKED, ANONYMIZED or NONE.
GuardrailPolicy = Literal[
    "topicPolicy",
    "contentPolicy",
    "wordPolicy",
    "sensitiveInformationPolicy",
    "contextualGroundingPolicy",
    "automatedReasoningPolicy",
]
GUARDRAIL_POLICIES: tuple[GuardrailPolicy, ...] = get_args(GuardrailPolicy)
QUESTION_LABEL = "Clinician's question:"
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
class GuardrailBlock:
    """What the response may say about a guardrail intervention: where, and which policy types fired."""

    stage: GuardrailStage
    policies: tuple[GuardrailPolicy, ...]

    def body(self) -> dict[str, Any]:
        return {"stage": self.stage, "policies": list(self.policies)}


@dataclass(frozen=True)
class Answer:
    text: str
    source: Literal["bedrock", "template"]
    fallback_reason: FallbackReason | None
    guardrail: GuardrailBlock | None = None


class ChatUnavailable(RuntimeError):
    """Bedrock gave no usable answer; ``reason`` is the fallback flag."""

    def __init__(self, reason: FallbackReason, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason: FallbackReason = reason


class GuardrailBlocked(ChatUnavailable):
    """The guardrail intervened (stopReason guardrail_intervened); carries where and which policies, not the text."""

    def __init__(self, block: GuardrailBlock) -> None:
        super().__init__("guardrail", "guardrail_intervened")
        self.block = block


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


def grounding(facts: Facts) -> str:
    """The facts part of the prompt: everything the answer may rest on, written by us, not by the clinician."""
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
        f"Top factors reported by the model:\n{factors}\n{similar}"
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


_GUARDRAIL_IDENTIFIER = r"^([a-z0-9]+|arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:guardrail/[a-z0-9]+)$"


class GuardrailConfig(BaseModel):
    """The Bedrock Guardrail on /chat's Converse calls, checked at start-up against the patterns of botocore's
    GuardrailConfiguration (guardrailIdentifier: an id or a guardrail ARN; guardrailVersion: a number or DRAFT)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    identifier: str = Field(pattern=_GUARDRAIL_IDENTIFIER)
    version: str = Field(pattern=r"^([1-9][0-9]{0,7}|DRAFT)$")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> GuardrailConfig | None:
        s = settings.Settings.from_env(env)
        identifier, version = s.guardrail_id or "", s.guardrail_version or ""
        if not identifier and not version:
            return None
        if not (identifier and version):
            raise ValueError(f"${settings.ENV_GUARDRAIL_ID} and ${settings.ENV_GUARDRAIL_VERSION} are set together")
        try:
            return cls(identifier=identifier, version=version)
        except ValidationError:
            raise ValueError(
                f"${settings.ENV_GUARDRAIL_ID} must be a guardrail id or ARN and ${settings.ENV_GUARDRAIL_VERSION} "
                "a version number or DRAFT"
            ) from None

    def request(self) -> dict[str, str]:
        # trace "enabled" makes the response's trace.guardrail say which policies fired on the input
        # (inputAssessment) or on the model's output (outputAssessments); "Include a guardrail with the Converse API",
        # https://docs.aws.amazon.com/bedrock/latest/userguide/guardrails-use-converse-api.html. The trace also
        # holds the matched text and the blocked output (modelOutput): only policy names and actions are read.
        return {"guardrailIdentifier": self.identifier, "guardrailVersion": self.version, "trace": "enabled"}


def _fired(assessment: Any) -> set[GuardrailPolicy]:
    """The policies of one GuardrailAssessment with a finding whose action is not NONE (BLOCKED or ANONYMIZED)."""
    if not isinstance(assessment, Mapping):
        return set()
    fired: set[GuardrailPolicy] = set()
    for policy in GUARDRAIL_POLICIES:
        findings = assessment.get(policy)
        lists = findings.values() if isinstance(findings, Mapping) else ()
        if any(
            isinstance(f, Mapping) and f.get("action", "NONE") != "NONE"
            for items in lists
            if isinstance(items, list)
            for f in items
        ):
            fired.add(policy)
    return fired


def guardrail_block(response: Mapping[str, Any]) -> GuardrailBlock:
    """Where the guardrail intervened and which policies fired, from Converse's trace.guardrail: inputAssessment
    maps a guardrail id to one assessment of the prompt, outputAssessments a guardrail id to assessments of the
    answer (ConverseTrace > GuardrailTraceAssessment in botocore's bedrock-runtime model)."""
    trace = response.get("trace")
    guardrail = trace.get("guardrail") if isinstance(trace, Mapping) else None
    guardrail = guardrail if isinstance(guardrail, Mapping) else {}
    inputs = guardrail.get("inputAssessment")
    outputs = guardrail.get("outputAssessments")
    prompt: set[GuardrailPolicy] = set()
    answer: set[GuardrailPolicy] = set()
    for assessment in inputs.values() if isinstance(inputs, Mapping) else ():
        prompt |= _fired(assessment)
    for assessments in outputs.values() if isinstance(outputs, Mapping) else ():
        for assessment in assessments if isinstance(assessments, list) else ():
            answer |= _fired(assessment)
    stage: GuardrailStage = "prompt" if prompt else "answer" if answer else "unknown"
    return GuardrailBlock(stage, tuple(p for p in GUARDRAIL_POLICIES if p in prompt | answer))


class BedrockChat:
    """Claude through the Bedrock Converse API; every failure becomes a ChatUnavailable with its reason."""

    def __init__(self, model_id: str, client: Any = None, guardrail: GuardrailConfig | None = None) -> None:
        self.model_id = model_id
        self._client = client
        self.guardrail = guardrail

    client = LazyClient("bedrock-runtime", bedrock_client)

    def _request(self, system: str, facts: str, question: str) -> dict[str, Any]:
        if self.guardrail is None:
            content: list[dict[str, Any]] = [{"text": f"{facts}\n\n{QUESTION_LABEL} {question}"}]
            return {"messages": [{"role": "user", "content": content}], "system": [{"text": system}]}
        # Only the clinician's question is a guardContent block. With one in the messages, the guardrail evaluates
        # that block, not the rest of the message, and a system prompt without one is not evaluated
        # (guardrails-use-converse-api.html, "Evaluate only specific content in a message" and "Message and system
        # prompt guardrail behavior"; botocore's guardrailConfig: "the guardrail operates only on those messages").
        # So our own facts (an age band, medication changes) are never taken for personal information or treatment
        # instructions, while the model's answer is always evaluated.
        content = [{"text": f"{facts}\n\n{QUESTION_LABEL}"}, {"guardContent": {"text": {"text": question}}}]
        return {
            "messages": [{"role": "user", "content": content}],
            "system": [{"text": system}],
            "guardrailConfig": self.guardrail.request(),
        }

    def ask(self, system: str, facts: str, question: str) -> str:
        """The model's answer to ``question`` from ``facts`` (with a guardrail, the question alone is guarded)."""
        from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

        try:
            response = self.client.converse(
                modelId=self.model_id,
                inferenceConfig={"maxTokens": MAX_TOKENS, "temperature": 0.0},
                **self._request(system, facts, question),
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            reason: FallbackReason = "throttled" if code in _THROTTLED else "timeout" if code in _TIMED_OUT else "error"
            raise ChatUnavailable(reason, code) from None
        except (ReadTimeoutError, ConnectTimeoutError) as exc:
            raise ChatUnavailable("timeout", type(exc).__name__) from None
        except BotoCoreError as exc:
            raise ChatUnavailable("error", type(exc).__name__) from None
        # Any intervention falls back, even an ANONYMIZED one: the readmit guardrail BLOCKs, and an account- or
        # organization-enforced guardrail may intervene without one configured here.
        if response.get("stopReason") == "guardrail_intervened":
            raise GuardrailBlocked(guardrail_block(response))
        if response.get("stopReason") == "content_filtered":
            raise ChatUnavailable("error", "content_filtered")
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
        model = settings.Settings.from_env(env).chat_model
        guardrail = GuardrailConfig.from_env(env)  # checked even without a model: a bad setting fails at start-up
        return cls(BedrockChat(model, guardrail=guardrail) if model else None)

    def answer(self, facts: Facts, question: str, identifiers: Sequence[Any] = ()) -> Answer:
        if self.chat is None:
            return Answer(template_answer(facts), "template", "not_configured")
        try:
            text = self.chat.ask(SYSTEM, grounding(facts), scrub(question, identifiers))
        except GuardrailBlocked as exc:  # policy types and the stage only: never the question or the blocked text
            block = exc.block
            extra = {"reason": exc.reason, "stage": block.stage, "policies": list(block.policies)}
            telemetry.logger.warning("chat fallback", extra=extra)
            return Answer(template_answer(facts), "template", exc.reason, block)
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
