"""`readmit index`: the local index from a file (then found by the API's default store), and the AWS backfill
message that the embedder Lambda fans out."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from chalicelib.cli.main import main
from chalicelib.core.settings import index_dir
from chalicelib.data.tabular import Table
from chalicelib.similar.ingest import parse_message
from chalicelib.similar.numpy_store import NumpyStore


@pytest.mark.slow
def test_index_builds_the_default_store_from_a_file(
    sample_csv: Path, sample_table: Table, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["index", "--data", str(sample_csv), "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["indexed"] + report["excluded_from_cohort"] + report["unlabelled"] == len(sample_table.encounter_id)
    assert report["excluded_from_cohort"] > 0 and report["embedder"] == "local"
    assert NumpyStore(index_dir()).count() == report["indexed"] == report["points_in_store"]
    assert main(["index", "--data", str(sample_csv), "--quiet"]) == 0  # again: the same points, overwritten
    assert json.loads(capsys.readouterr().out)["points_in_store"] == report["indexed"]


def test_index_with_a_queue_sends_one_backfill_message_the_embedder_understands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with mock_aws():
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="ingest")["QueueUrl"]
        assert main(["index", "--data", "s3://data-bucket/training/diabetic_data.csv", "--queue", url]) == 0
        [message] = sqs.receive_message(QueueUrl=url)["Messages"]
    [chunk] = parse_message(message["Body"])
    assert (chunk.bucket, chunk.key, chunk.start, chunk.stop) == ("data-bucket", "training/diabetic_data.csv", 0, None)
    assert main(["index", "--data", "local.csv", "--queue", url]) == 2
