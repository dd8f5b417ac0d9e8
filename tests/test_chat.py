"""/chat: the template answer, Bedrock Converse through botocore's Stubber with real response shapes, every
fallback (not configured, throttled, a real read timeout, an error, an ungrounded answer, a guardrail that blocked
the question or the answer), and no identifiers in the prompt or blocked text in the log."""

from __future__ import annotations

import http.server
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from chalicelib.registry.provider import ModelProvider
from chalicelib.serving.api import ReadmitAPI, Request
from chalicelib.serving.service import Predictor
from chalicelib.similar.chat import (
    GUARDRAIL_POLICIES,
    SYSTEM,
    BedrockChat,
    Explainer,
    Facts,
    GuardrailConfig,
    bedrock_client,
    guardrail_block,
    scrub,
    ungrounded,
)
from chalicelib.similar.embedding import LocalEmbedder
from chalicelib.similar.numpy_store import NumpyStore
from chalicelib.similar.search import SimilarPatients

EVENTS = Path(__file__).resolve().parent.parent / "events"
MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"


def chat_body() -> dict[str, Any]:
    return json.loads(json.loads((EVENTS / "api_chat.json").read_text())["body"])


def converse_response(text: str) -> dict[str, Any]:
    """The shape Bedrock's Converse API returns."""
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 412, "outputTokens": 96, "totalTokens": 508},
        "metrics": {"latencyMs": 1187},
    }


@pytest.fixture
def client() -> Any:
    return boto3.client("bedrock-runtime", region_name="us-east-1")


@pytest.fixture
def prompts(client: Any) -> list[dict[str, Any]]:
    """Every Converse request as the client was asked to send it."""
    seen: list[dict[str, Any]] = []
    client.meta.events.register(
        "provide-client-params.bedrock-runtime.Converse", lambda params, **_: seen.append(params)
    )
    return seen


def make_api(bundle: Path, index: Path | None, explainer: Explainer) -> ReadmitAPI:
    similar = SimilarPatients(LocalEmbedder(), NumpyStore(index)) if index else None
    return ReadmitAPI(Predictor(ModelProvider(model_uri=str(bundle))), similar, explainer)


def ask(api: ReadmitAPI, body: Any) -> tuple[int, Any]:
    response = api.chat(Request(json.dumps(body).encode(), {"Content-Type": "application/json"}))
    return response.status, response.body


def predict(api: ReadmitAPI, encounter: dict[str, Any]) -> dict[str, Any]:
    response = api.predict(Request(json.dumps(encounter).encode(), {"Content-Type": "application/json"}))
    assert response.status == 200
    return response.body


@pytest.fixture
def reported(small_bundle: Path) -> list[dict[str, Any]]:
    """The top factors the model reports for the fixture's encounter."""
    api = make_api(small_bundle, None, Explainer(None))
    return predict(api, chat_body()["encounter"])["top_factors"]


@pytest.mark.slow
def test_without_bedrock_the_template_states_risk_factors_and_similar_outcomes(
    small_bundle: Path, sample_index: Path
) -> None:
    api = make_api(small_bundle, sample_index, Explainer(None))
    status, out = ask(api, chat_body())
    assert status == 200 and out["source"] == "template" and out["fallback_reason"] == "not_configured"
    prediction = predict(api, chat_body()["encounter"])
    assert out["risk"] == prediction["risk"] and out["risk_tier"] == prediction["risk_tier"]
    assert out["top_factors"] == prediction["top_factors"]
    assert f"{out['risk']:.1%}" in out["answer"] and all(f["label"] in out["answer"] for f in out["top_factors"])
    similar = api.similar_patients(
        Request(json.dumps({"encounter": chat_body()["encounter"]}).encode(), {"Content-Type": "application/json"})
    ).body
    assert out["similar"] == {"count": 5, "readmission_rate": similar["readmission_rate"]}
    assert f"Among the 5 most similar past patients, {round(similar['readmission_rate'] * 5)}" in out["answer"]
    assert ungrounded(out["answer"], out["top_factors"]) == []  # the template itself is grounded


def test_without_an_index_chat_still_answers_from_the_factors(small_bundle: Path, tmp_path: Path) -> None:
    api = make_api(small_bundle, tmp_path / "no-index", Explainer(None))
    status, out = ask(api, chat_body())
    assert status == 200 and out["similar"] == {"count": 0, "readmission_rate": 0.0}
    assert "No similar past patients" in out["answer"] and out["top_factors"]


def test_bedrock_answers_when_it_names_only_the_reported_factors(
    small_bundle: Path, sample_index: Path, client: Any, prompts: list, reported: list
) -> None:
    text = f"The risk is driven mainly by {reported[0]['label']} and {reported[1]['label']}."
    with Stubber(client) as stub:
        stub.add_response("converse", converse_response(text))
        api = make_api(small_bundle, sample_index, Explainer(BedrockChat(MODEL_ID, client)))
        status, out = ask(api, chat_body())
        stub.assert_no_pending_responses()
    assert status == 200 and out["source"] == "bedrock" and out["fallback_reason"] is None and out["answer"] == text
    [params] = prompts
    assert params["modelId"] == MODEL_ID and params["system"] == [{"text": SYSTEM}]
    prompt = params["messages"][0]["content"][0]["text"]
    assert all(f["label"] in prompt for f in reported) and chat_body()["question"] in prompt


def test_the_prompt_carries_no_identifier_even_when_the_question_does(
    small_bundle: Path, client: Any, prompts: list, reported: list
) -> None:
    body = chat_body()
    ids = (str(body["encounter"]["patient_nbr"]), str(body["encounter"]["encounter_id"]))
    body["question"] = f"Patient {ids[0]} (encounter {ids[1]}, MRN 55512345): why high risk?"
    with Stubber(client) as stub:
        stub.add_response("converse", converse_response(f"Mostly {reported[0]['label']}."))
        status, _ = ask(make_api(small_bundle, None, Explainer(BedrockChat(MODEL_ID, client))), body)
    assert status == 200
    sent = json.dumps(prompts[0])
    assert not any(i in sent for i in ids) and "55512345" not in sent and "[identifier]" in sent
    assert "patient_nbr" not in sent and "encounter_id" not in sent


def test_an_answer_naming_an_unreported_factor_falls_back_as_ungrounded(
    small_bundle: Path, client: Any, reported: list
) -> None:
    labels = {f["label"] for f in reported}
    unreported = next(x for x in ("Number of diagnoses", "HbA1c", "Age", "Medications given") if x not in labels)
    text = f"{reported[0]['label']} matters, and so does {unreported.lower()}."
    with Stubber(client) as stub:
        stub.add_response("converse", converse_response(text))
        status, out = ask(make_api(small_bundle, None, Explainer(BedrockChat(MODEL_ID, client))), chat_body())
    assert status == 200 and out["source"] == "template" and out["fallback_reason"] == "ungrounded"
    assert out["answer"] != text and reported[0]["label"] in out["answer"]


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        ("ThrottlingException", 429, "throttled"),
        ("ModelTimeoutException", 408, "timeout"),
        ("AccessDeniedException", 403, "error"),
        ("ValidationException", 400, "error"),
        ("InternalServerException", 500, "error"),
    ],
)
def test_bedrock_errors_fall_back_to_the_template_with_their_reason(
    small_bundle: Path, client: Any, code: str, status: int, reason: str
) -> None:
    with Stubber(client) as stub:
        stub.add_client_error("converse", service_error_code=code, http_status_code=status)
        got, out = ask(make_api(small_bundle, None, Explainer(BedrockChat(MODEL_ID, client))), chat_body())
    assert got == 200 and out["source"] == "template" and out["fallback_reason"] == reason
    assert out["answer"].startswith("Estimated risk of readmission")


@pytest.fixture
def slow_endpoint() -> Iterator[str]:
    """A loopback HTTP endpoint that answers only after the client's read timeout."""

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            time.sleep(1.5)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_a_real_read_timeout_falls_back_as_timeout(small_bundle: Path, slow_endpoint: str) -> None:
    client = bedrock_client(read_timeout=0.3, region_name="us-east-1", endpoint_url=slow_endpoint)
    started = time.monotonic()
    status, out = ask(make_api(small_bundle, None, Explainer(BedrockChat(MODEL_ID, client))), chat_body())
    assert status == 200 and out["fallback_reason"] == "timeout" and out["source"] == "template"
    assert time.monotonic() - started < 1.4  # gave up at the read timeout, no retry


def test_an_unreachable_endpoint_is_an_error_fallback(small_bundle: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = bedrock_client(region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}")
    status, out = ask(make_api(small_bundle, None, Explainer(BedrockChat(MODEL_ID, client))), chat_body())
    assert status == 200 and out["fallback_reason"] == "error"


def test_an_empty_or_content_filtered_answer_is_an_error_fallback(small_bundle: Path, client: Any) -> None:
    filtered = {**converse_response("…"), "stopReason": "content_filtered"}
    with Stubber(client) as stub:
        stub.add_response("converse", converse_response("   "))
        stub.add_response("converse", filtered)
        api = make_api(small_bundle, None, Explainer(BedrockChat(MODEL_ID, client)))
        for _ in range(2):
            out = ask(api, chat_body())[1]
            assert out["fallback_reason"] == "error" and out["guardrail"] is None


def test_an_untraced_guardrail_intervention_is_a_guardrail_fallback(small_bundle: Path, client: Any) -> None:
    """An account- or organization-enforced guardrail can intervene on a call that configured none (no trace)."""
    blocked = {
        **converse_response("Sorry, the model cannot answer this question."),
        "stopReason": "guardrail_intervened",
    }
    with Stubber(client) as stub:
        stub.add_response("converse", blocked)
        status, out = ask(make_api(small_bundle, None, Explainer(BedrockChat(MODEL_ID, client))), chat_body())
    assert status == 200 and out["source"] == "template" and out["fallback_reason"] == "guardrail"
    assert out["guardrail"] == {"stage": "unknown", "policies": []} and "Sorry" not in out["answer"]


@pytest.mark.slow
def test_predict_answers_while_bedrock_is_down(small_bundle: Path, slow_endpoint: str) -> None:
    client = bedrock_client(read_timeout=0.3, region_name="us-east-1", endpoint_url=slow_endpoint)
    api = make_api(small_bundle, None, Explainer(BedrockChat(MODEL_ID, client)))
    started = time.monotonic()
    assert predict(api, chat_body()["encounter"])["risk"] > 0
    assert time.monotonic() - started < 0.3  # never waited on Bedrock


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"encounter": None, "question": "why?"}, "encounter"),
        ({"encounter": {}, "question": "why?"}, "encounter.gender"),
        ({"question": "   "}, "question"),
        ({"question": "x" * 1001}, "question"),
        ({"question": 42}, "question"),
        ({"question": "why?", "model": "claude"}, "model"),
    ],
)
def test_bad_chat_input_is_a_422_naming_the_field(small_bundle: Path, body: dict, field: str) -> None:
    full = {"encounter": chat_body()["encounter"], **body}
    status, out = ask(make_api(small_bundle, None, Explainer(None)), full)
    assert status == 422 and field in {d["field"] for d in out["details"]}


def test_the_chat_model_is_configured_by_environment() -> None:
    assert Explainer.from_env({}).chat is None
    chat = Explainer.from_env({"READMIT_CHAT_MODEL": MODEL_ID}).chat
    assert chat is not None and chat.model_id == MODEL_ID and chat.guardrail is None


# ---- the grounding check and the scrubber, directly -------------------------------------------------------------
FACTORS = [  # factors are concepts (chalicelib/model/explain.py), as /predict reports them
    {"feature": "inpatient_stays", "label": "Inpatient stays (prior year)", "value": "2"},
    {
        "feature": "discharge_disposition",
        "label": "Discharge disposition",
        "value": "Discharged/transferred to skilled nursing facility (3)",
    },
]


@pytest.mark.parametrize(
    ("answer", "flagged"),
    [
        ("Two inpatient stays (prior year) and discharge to nursing/skilled facility raise the risk.", []),
        ("Her inpatient stays drive the risk.", []),  # the label without its qualifier is still the factor
        ("number_inpatient is the main factor.", []),
        ("Inpatient stays and the length of stay drive the risk.", ["Length of stay"]),
        ("Her HbA1c > 8% matters too.", ["HbA1c"]),  # a model feature's label names its concept
        ("The discharge disposition and her HbA1c matter.", ["HbA1c"]),
        ("At her age, inpatient stays matter.", ["Age"]),
        ("Managed by the agency.", []),  # "age" only as a whole word
    ],
)
def test_ungrounded_finds_exactly_the_unreported_model_features(answer: str, flagged: list[str]) -> None:
    assert ungrounded(answer, FACTORS) == flagged


def test_scrub_masks_the_encounters_ids_and_identifier_like_numbers_but_not_clinical_values() -> None:
    out = scrub("Encounter 2278392, patient 8222157: HbA1c 8.1, 2 stays, MRN 123456", (8222157, 2278392))
    assert out == "Encounter [identifier], patient [identifier]: HbA1c 8.1, 2 stays, MRN [identifier]"


def test_facts_without_factors_or_neighbours_still_make_a_template_answer() -> None:
    answer = Explainer(None).answer(Facts(0.05, "low", [], 0, 0.0), "why?")
    assert answer.source == "template" and "5.0%" in answer.text and "no individual factors" in answer.text


# ---- the Bedrock Guardrail ----------------------------------------------------------------------------------------
# Response shapes: ConverseResponse > trace (ConverseTrace) > guardrail (GuardrailTraceAssessment) in botocore's
# bedrock-runtime model; the Stubber checks every name and type against it.
GUARDRAIL_ID = "x7k2m9p4q1rz"
GUARDRAIL = GuardrailConfig(identifier=GUARDRAIL_ID, version="3")
BLOCKED_INPUT = "readmit's assistant cannot take this question: it may hold personal information or ask for dosing."
BLOCKED_OUTPUT = "readmit's assistant withheld its answer: it may hold personal information or dosing instructions."
PHI_QUESTION = "Why is John Smith (phone 555-0142, john.smith@example.com) at high risk?"
DOSING_ANSWER = "Increase insulin glargine to 30 units nightly and add metformin 500 mg twice daily."


def metrics(guarded: int) -> dict[str, Any]:
    """GuardrailInvocationMetrics (the six usage units are required members)."""
    usage = {"topicPolicyUnits": 1, "contentPolicyUnits": 0, "wordPolicyUnits": 0, "contextualGroundingPolicyUnits": 0}
    usage |= {"sensitiveInformationPolicyUnits": 1, "sensitiveInformationPolicyFreeUnits": 0}
    return {
        "guardrailProcessingLatency": 212,
        "usage": usage,
        "guardrailCoverage": {"textCharacters": {"guarded": guarded, "total": guarded}},
    }


def guarded_response(text: str, stop: str, guardrail: dict[str, Any], tokens: tuple[int, int]) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": stop,
        "usage": {"inputTokens": tokens[0], "outputTokens": tokens[1], "totalTokens": sum(tokens)},
        "metrics": {"latencyMs": 640},
        "trace": {"guardrail": guardrail},
    }


def input_blocked() -> dict[str, Any]:
    """The question held a name, a phone number and an e-mail address: blocked before the model ran."""
    pii = [
        {"match": "John Smith", "type": "NAME", "action": "BLOCKED", "detected": True},
        {"match": "555-0142", "type": "PHONE", "action": "BLOCKED", "detected": True},
        {"match": "john.smith@example.com", "type": "EMAIL", "action": "BLOCKED", "detected": True},
    ]
    assessment = {"sensitiveInformationPolicy": {"piiEntities": pii, "regexes": []}, "invocationMetrics": metrics(72)}
    return guarded_response(
        BLOCKED_INPUT, "guardrail_intervened", {"inputAssessment": {GUARDRAIL_ID: assessment}}, (0, 0)
    )


def output_blocked() -> dict[str, Any]:
    """The model's answer gave dosing instructions: the denied topic blocked it (modelOutput is what it said)."""
    topic = {"name": "Dosing and treatment instructions", "type": "DENY", "action": "BLOCKED", "detected": True}
    guardrail = {
        "modelOutput": [DOSING_ANSWER],
        "inputAssessment": {GUARDRAIL_ID: {"invocationMetrics": metrics(20)}},
        "outputAssessments": {GUARDRAIL_ID: [{"topicPolicy": {"topics": [topic]}, "invocationMetrics": metrics(84)}]},
    }
    return guarded_response(BLOCKED_OUTPUT, "guardrail_intervened", guardrail, (405, 31))


def passed(text: str) -> dict[str, Any]:
    """Trace enabled, nothing fired: the assessments carry only their metrics."""
    guardrail = {
        "modelOutput": [text],
        "inputAssessment": {GUARDRAIL_ID: {"invocationMetrics": metrics(20)}},
        "outputAssessments": {GUARDRAIL_ID: [{"invocationMetrics": metrics(len(text))}]},
    }
    return guarded_response(text, "end_turn", guardrail, (405, 25))


def expected_call() -> dict[str, Any]:
    """What the Stubber requires: the guardrail configured with its trace on (the prompt is checked apart)."""
    return {
        "modelId": MODEL_ID,
        "system": [{"text": SYSTEM}],
        "messages": ANY,
        "inferenceConfig": {"maxTokens": 400, "temperature": 0.0},
        "guardrailConfig": {"guardrailIdentifier": GUARDRAIL_ID, "guardrailVersion": "3", "trace": "enabled"},
    }


def chat_response_is_declared(out: dict[str, Any]) -> None:
    """The body validates against the OpenAPI document's ChatResponse."""
    from jsonschema import Draft202012Validator

    doc = ReadmitAPI.openapi(None, Request()).body  # type: ignore[arg-type]
    schema = {"$ref": "#/components/schemas/ChatResponse", "components": doc["components"]}
    Draft202012Validator(schema).validate(out)


def guarded_api(bundle: Path, client: Any) -> ReadmitAPI:
    return make_api(bundle, None, Explainer(BedrockChat(MODEL_ID, client, GUARDRAIL)))


def test_with_a_guardrail_only_the_question_is_guarded_and_a_clean_answer_passes(
    small_bundle: Path, client: Any, prompts: list, reported: list
) -> None:
    text = f"The risk is driven mainly by {reported[0]['label']}."
    body = {**chat_body(), "question": "Why is MRN 55512345 at high risk?"}
    with Stubber(client) as stub:
        stub.add_response("converse", passed(text), expected_call())
        status, out = ask(guarded_api(small_bundle, client), body)
        stub.assert_no_pending_responses()
    assert status == 200 and out["source"] == "bedrock" and out["answer"] == text
    assert out["fallback_reason"] is None and out["guardrail"] is None
    chat_response_is_declared(out)
    [params] = prompts
    [message] = params["messages"]
    facts, question = message["content"]  # the question, still scrubbed, is the one guarded block
    assert question == {"guardContent": {"text": {"text": "Why is MRN [identifier] at high risk?"}}}
    assert "high risk?" not in facts["text"] and facts["text"].endswith("Clinician's question:")
    assert all(f["label"] in facts["text"] for f in reported) and "guardContent" not in json.dumps(params["system"])


def test_a_question_the_guardrail_blocks_gets_the_template_flagged_prompt(
    small_bundle: Path, client: Any, log_output: io.StringIO, caplog: pytest.LogCaptureFixture, capsys: Any
) -> None:
    body = {**chat_body(), "question": PHI_QUESTION}
    with caplog.at_level(logging.DEBUG), Stubber(client) as stub:
        stub.add_response("converse", input_blocked(), expected_call())
        status, out = ask(guarded_api(small_bundle, client), body)
        stub.assert_no_pending_responses()
    assert status == 200 and out["source"] == "template" and out["fallback_reason"] == "guardrail"
    assert out["guardrail"] == {"stage": "prompt", "policies": ["sensitiveInformationPolicy"]}
    assert out["answer"].startswith("Estimated risk of readmission") and BLOCKED_INPUT not in out["answer"]
    chat_response_is_declared(out)
    logged = log_output.getvalue() + caplog.text + "".join(capsys.readouterr())
    [line] = [json.loads(x) for x in log_output.getvalue().splitlines() if '"chat fallback"' in x]
    assert line["reason"] == "guardrail" and line["stage"] == "prompt"
    assert line["policies"] == ["sensitiveInformationPolicy"]
    for blocked in ("John Smith", "555-0142", "john.smith", BLOCKED_INPUT):
        assert blocked not in logged and blocked not in json.dumps(out)


def test_an_answer_the_guardrail_blocks_gets_the_template_flagged_answer(
    small_bundle: Path, client: Any, log_output: io.StringIO, caplog: pytest.LogCaptureFixture, capsys: Any
) -> None:
    with caplog.at_level(logging.DEBUG), Stubber(client) as stub:
        stub.add_response("converse", output_blocked(), expected_call())
        status, out = ask(guarded_api(small_bundle, client), chat_body())
        stub.assert_no_pending_responses()
    assert status == 200 and out["source"] == "template" and out["fallback_reason"] == "guardrail"
    assert out["guardrail"] == {"stage": "answer", "policies": ["topicPolicy"]}
    chat_response_is_declared(out)
    logged = log_output.getvalue() + caplog.text + "".join(capsys.readouterr())
    assert '"stage":"answer"' in log_output.getvalue() and '"policies":["topicPolicy"]' in log_output.getvalue()
    for blocked in ("glargine", "30 units", "metformin 500", BLOCKED_OUTPUT, "Dosing and treatment"):
        assert blocked not in logged and blocked not in json.dumps(out)


@pytest.mark.parametrize(
    ("guardrail", "stage", "policies"),
    [
        ({}, "unknown", []),
        ({"inputAssessment": {GUARDRAIL_ID: {"invocationMetrics": metrics(5)}}}, "unknown", []),
        (  # a finding the guardrail detected but did not act on is no intervention
            {
                "inputAssessment": {
                    GUARDRAIL_ID: {
                        "contentPolicy": {"filters": [{"type": "INSULTS", "confidence": "LOW", "action": "NONE"}]}
                    }
                }
            },
            "unknown",
            [],
        ),
        (
            {
                "inputAssessment": {
                    GUARDRAIL_ID: {
                        "wordPolicy": {
                            "customWords": [],
                            "managedWordLists": [{"match": "x", "type": "PROFANITY", "action": "BLOCKED"}],
                        },
                        "contentPolicy": {
                            "filters": [{"type": "PROMPT_ATTACK", "confidence": "HIGH", "action": "BLOCKED"}]
                        },
                    }
                }
            },
            "prompt",
            ["contentPolicy", "wordPolicy"],
        ),
        (
            {
                "outputAssessments": {
                    GUARDRAIL_ID: [
                        {
                            "sensitiveInformationPolicy": {
                                "piiEntities": [],
                                "regexes": [{"name": "MRN", "action": "ANONYMIZED"}],
                            }
                        },
                        {
                            "contextualGroundingPolicy": {
                                "filters": [{"type": "GROUNDING", "threshold": 0.7, "score": 0.2, "action": "BLOCKED"}]
                            }
                        },
                    ]
                }
            },
            "answer",
            ["sensitiveInformationPolicy", "contextualGroundingPolicy"],
        ),
    ],
)
def test_the_trace_says_where_the_guardrail_intervened_and_which_policies_fired(
    client: Any, guardrail: dict, stage: str, policies: list
) -> None:
    response = guarded_response("blocked", "guardrail_intervened", guardrail, (0, 0))
    with Stubber(client) as stub:  # the shape is botocore's: the Stubber refuses any other
        stub.add_response("converse", response)
        parsed = client.converse(modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "q"}]}])
    block = guardrail_block(parsed)
    assert block.stage == stage and list(block.policies) == policies


def test_the_policy_names_are_the_assessments_policy_members_in_botocores_model() -> None:
    shape = boto3.client("bedrock-runtime", region_name="us-east-1").meta.service_model.shape_for("GuardrailAssessment")
    assert set(GUARDRAIL_POLICIES) == set(shape.members) - {"invocationMetrics", "appliedGuardrailDetails"}


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"READMIT_GUARDRAIL_ID": GUARDRAIL_ID}, "are set together"),
        ({"READMIT_GUARDRAIL_VERSION": "3"}, "are set together"),
        ({"READMIT_GUARDRAIL_ID": GUARDRAIL_ID, "READMIT_GUARDRAIL_VERSION": "v3"}, "version number or DRAFT"),
        ({"READMIT_GUARDRAIL_ID": "My Guardrail", "READMIT_GUARDRAIL_VERSION": "3"}, "guardrail id or ARN"),
        ({"READMIT_GUARDRAIL_ID": GUARDRAIL_ID, "READMIT_GUARDRAIL_VERSION": "0"}, "version number or DRAFT"),
    ],
)
def test_a_half_or_wrongly_set_guardrail_stops_the_start(env: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Explainer.from_env({"READMIT_CHAT_MODEL": MODEL_ID, **env})


@pytest.mark.parametrize(
    ("identifier", "version"),
    [(GUARDRAIL_ID, "3"), (f"arn:aws:bedrock:us-east-1:123456789012:guardrail/{GUARDRAIL_ID}", "DRAFT")],
)
def test_the_guardrail_is_configured_by_environment(identifier: str, version: str) -> None:
    env = {"READMIT_CHAT_MODEL": MODEL_ID, "READMIT_GUARDRAIL_ID": identifier, "READMIT_GUARDRAIL_VERSION": version}
    chat = Explainer.from_env(env).chat
    assert chat is not None and chat.guardrail == GuardrailConfig(identifier=identifier, version=version)
    assert chat.guardrail.request() == {
        "guardrailIdentifier": identifier,
        "guardrailVersion": version,
        "trace": "enabled",
    }
