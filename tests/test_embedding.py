"""Embedders: the local one (deterministic, the model's own feature code path, blind to identifiers and race) and
Titan Text Embeddings v2 through botocore's Stubber with the real response body."""

from __future__ import annotations

import io
import json
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from botocore.stub import Stubber

from chalicelib.data.schema import columns_from_records
from chalicelib.data.tabular import Table
from chalicelib.features.encoding import encode
from chalicelib.similar.embedding import (
    AXES,
    BedrockEmbedder,
    EmbeddingError,
    LocalEmbedder,
    open_embedder,
    render_text,
    row_record,
)

TITAN = "amazon.titan-embed-text-v2:0"


def record(table: Table, i: int, **change: Any) -> dict[str, Any]:
    return {**row_record(table.cols, i), **change}


def embed_one(r: dict[str, Any]) -> np.ndarray:
    return LocalEmbedder().embed(columns_from_records([r]))[0]


def test_local_vectors_are_unit_length_of_fixed_dimension(sample_table: Table) -> None:
    V = LocalEmbedder.from_features(encode(sample_table.cols))
    assert V.shape == (len(sample_table.encounter_id), len(AXES)) and V.dtype == np.float32
    assert np.allclose(np.linalg.norm(V, axis=1), 1.0, atol=1e-5)


def test_one_encounter_embeds_exactly_as_it_did_in_the_batch(sample_table: Table) -> None:
    batch = LocalEmbedder.from_features(encode(sample_table.cols))
    for i in (0, 17, 402):
        assert np.allclose(embed_one(record(sample_table, i)), batch[i], atol=1e-6)


def test_identifiers_and_race_do_not_move_the_vector(sample_table: Table) -> None:
    base = record(sample_table, 5, race="Caucasian")
    same = record(sample_table, 5, race="AfricanAmerican", patient_nbr=1, encounter_id=2)
    assert np.array_equal(embed_one(base), embed_one(same))


def test_a_small_clinical_change_stays_closer_than_a_different_patient(sample_table: Table) -> None:
    base = record(sample_table, 9, number_inpatient=1, time_in_hospital=4, age="[60-70)")
    nudged = {**base, "time_in_hospital": 5}
    different = {**base, "number_inpatient": 8, "number_emergency": 5, "age": "[20-30)", "diag_1": "V57"}
    v = embed_one(base)
    assert v @ embed_one(nudged) > v @ embed_one(different)


def test_the_text_for_titan_has_no_identifiers_and_no_race(sample_table: Table) -> None:
    r = record(sample_table, 3, patient_nbr=80012345, encounter_id=90054321, race="Hispanic")
    text = render_text(r)
    assert "80012345" not in text and "90054321" not in text and "Hispanic" not in text
    assert r["age"] in text and f"{r['time_in_hospital']} days in hospital" in text


def titan_body(vector: list[float], tokens: int = 97) -> dict[str, Any]:
    """The invoke_model response of Titan Text Embeddings v2."""
    payload = json.dumps({"embedding": vector, "inputTextTokenCount": tokens, "embeddingsByType": {"float": vector}})
    raw = payload.encode()
    return {"body": StreamingBody(io.BytesIO(raw), len(raw)), "contentType": "application/json"}


def test_titan_vectors_come_from_invoke_model_with_the_configured_dimension(sample_table: Table) -> None:
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    sent: list[dict[str, Any]] = []
    client.meta.events.register(
        "provide-client-params.bedrock-runtime.InvokeModel", lambda params, **_: sent.append(params)
    )
    rng = np.random.default_rng(1)
    vectors = [rng.normal(size=256).tolist() for _ in range(2)]
    with Stubber(client) as stub:
        for v in vectors:
            stub.add_response("invoke_model", titan_body(v))
        cols = {k: v[:2] for k, v in sample_table.cols.items()}
        out = BedrockEmbedder(client, TITAN, 256, workers=1).embed(cols)
        stub.assert_no_pending_responses()
    assert out.shape == (2, 256)
    expected = np.array(vectors) / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.allclose(out, expected, atol=1e-6)
    body = json.loads(sent[0]["body"])
    assert sent[0]["modelId"] == TITAN and body["dimensions"] == 256 and body["normalize"] is True
    assert body["inputText"] == render_text(row_record(cols, 0))


def test_a_titan_answer_of_the_wrong_dimension_is_an_error(sample_table: Table) -> None:
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_response("invoke_model", titan_body([0.1] * 512))
        with pytest.raises(EmbeddingError):
            BedrockEmbedder(client, TITAN, 1024, workers=1).embed({k: v[:1] for k, v in sample_table.cols.items()})


def test_titan_throttling_reaches_the_caller_so_the_message_is_retried(sample_table: Table) -> None:
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_client_error("invoke_model", service_error_code="ThrottlingException", http_status_code=429)
        with pytest.raises(ClientError, match="ThrottlingException"):
            BedrockEmbedder(client, TITAN, 512, workers=1).embed({k: v[:1] for k, v in sample_table.cols.items()})


def test_the_embedder_is_chosen_by_environment() -> None:
    assert isinstance(open_embedder(env={}), LocalEmbedder)
    titan = open_embedder(env={"READMIT_EMBEDDER": "bedrock", "READMIT_EMBED_DIMENSIONS": "1024"})
    assert isinstance(titan, BedrockEmbedder) and titan.dimension == 1024 and titan.model_id == TITAN
    with pytest.raises(ValueError):
        BedrockEmbedder(None, TITAN, 300)
    with pytest.raises(ValueError):
        open_embedder("word2vec", env={})
