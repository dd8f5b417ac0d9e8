"""The dynamic half of tests/test_function_permissions.py: every events/ fixture replayed (as
tests/test_invoke.py replays them, in moto) with botocore's calls recorded; each operation a function really made
must be one the static collector found, so the collector provably misses nothing that runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests import replay
from tests.iam_actions import Recorder, code_calls
from tests.replay import EVENTS, run, template
from tests.test_batch_job import aws  # noqa: F401  (the moto buckets the batch fixtures name)
from tests.test_embedder_function import world  # noqa: F401  (the moto world the SQS fixtures name)
from tests.test_invoke import FIXTURES, SCENARIOS, local_champion

FUNCTION_FIXTURES = [
    n for n in FIXTURES if template().resources[template().fixture_target(EVENTS / n)]["Type"].endswith("Function")
]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """Records the calls made inside replay.run's invocation only (not the scenario's own moto set-up)."""
    recording = Recorder()
    original = replay.invoke

    def invoke(spec: Any, event: Any, overrides: Any = None, request_id: Any = None) -> Any:
        with recording.active(spec.logical_id):
            return original(spec, event, overrides, request_id)

    monkeypatch.setattr(replay, "invoke", invoke)
    with recording.installed():
        yield recording


def test_the_recorder_sees_a_call_made_through_moto(recorder: Recorder) -> None:
    with mock_aws(), recorder.active("X"):
        boto3.client("s3", region_name="us-east-1").list_buckets()
    assert recorder.calls == {"X": {("s3", "ListBuckets")}}


@pytest.mark.parametrize("name", FUNCTION_FIXTURES)
@pytest.mark.slow
def test_every_operation_a_replay_makes_was_found_statically(
    name: str, request: pytest.FixtureRequest, recorder: Recorder
) -> None:
    target = template().fixture_target(EVENTS / name)
    assert target is not None
    scenario, _ = SCENARIOS.get(target, (local_champion, None))
    for variable in template().function(target).unresolved:
        request.getfixturevalue("monkeypatch").delenv(variable, raising=False)
    with scenario(request) as env:
        run(target, name, **(env or {}))
    for function, made in recorder.calls.items():
        unseen = made - code_calls(template(), function).operations()
        assert not unseen, f"{function} called {sorted(unseen)} while replaying {name}: the static collector missed it"
