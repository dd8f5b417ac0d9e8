"""`readmit invoke`: template.yaml's functions resolved (handler, code, environment) and run in-process, and every
fixture in events/ replayed through the resource it belongs to. Generic over the template: a function or fixture
added later is covered without editing this file (unknown functions get the generic contract below)."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from chalicelib.cli import main as cli
from chalicelib.cli.local_invoke import load_handler, module_file
from chalicelib.cli.sam_template import FUNCTION_TYPES, DevDependencyMissing, Resolver, Template, Unresolved
from chalicelib.core import settings
from chalicelib.registry.registry import Registry
from tests.replay import EVENTS, ROOT, fixture, proxy, retrain_world, rules_starting, run, starts, template
from tests.test_approval import moto_update_as_documented, person_decides
from tests.test_batch_job import aws  # noqa: F401  (the moto buckets the batch fixtures name)
from tests.test_embedder_function import BUCKET as EMBEDDER_BUCKET
from tests.test_embedder_function import world  # noqa: F401  (the moto world the SQS fixtures name)

FIXTURES = sorted(p.name for p in EVENTS.glob("*.json"))
FUNCTIONS = template().functions()
API_STATUS = {
    "api_predict.json": 200,
    "api_predict_no_factors.json": 200,
    "api_predict_invalid.json": 422,
    "api_predict_malformed.json": 400,
    "api_predict_wrong_content_type.json": 415,
    "api_predict_batch.json": 200,
    "api_health.json": 200,
    "api_model.json": 200,
    "api_model_shadow.json": 200,
    "api_metrics.json": 200,
    "api_openapi.json": 200,
    "api_unknown_path.json": 404,  # API Gateway's /{proxy+} resource: the app's own 404, in the error format
    "api_predict_wrong_method.json": 405,
    # No similar-patient index in this replay: 503, while /chat answers from the model's factors alone.
    # tests/test_similar_api.py and tests/test_chat.py replay the same requests against an index.
    "api_similar_patients.json": 503,
    "api_similar_patients_invalid.json": 422,
    "api_chat.json": 200,
    "api_chat_invalid.json": 422,
    "api_page.json": 200,
    "api_model_card.json": 200,
    "api_model_plot.json": 200,
    "api_model_plot_unknown.json": 404,
}
CHAMPION = "20261122T021400Z-9f8e7d6c"  # the versions the promote/reject fixtures name
CHALLENGER = "20261129T021500Z-1a2b3c4d"


# ---- coverage: functions ↔ fixtures, handlers ↔ builds ---------------------------------------------------------
def test_every_function_has_a_fixture_and_every_fixture_a_target() -> None:
    targets = {name: template().fixture_target(EVENTS / name) for name in FIXTURES}
    unmapped = [n for n, t in targets.items() if t not in template().resources]
    assert not unmapped, f"fixtures with no resource (name them <function>_… or list them in targets.toml): {unmapped}"
    without = set(FUNCTIONS) - set(targets.values())
    assert not without, f"functions with no fixture in events/: {without}"


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_each_handler_resolves_to_an_importable_callable(logical_id: str) -> None:
    spec = template().function(logical_id)
    assert callable(load_handler(spec))
    assert spec.runtime.startswith("python3") or template().properties(logical_id).get("PackageType") == "Image"


def _recipe(makefile: str, target: str) -> str:
    """A Makefile target's recipe with `$(call macro,arg)` expanded (one level, as our Makefile uses it)."""
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)*)", makefile, flags=re.MULTILINE)
    recipe = match.group(1) if match else ""
    macros = dict(re.findall(r"^define (\w+)\n(.*?)^endef", makefile, flags=re.MULTILINE | re.DOTALL))
    return re.sub(r"\$\(call (\w+),([^)]*)\)", lambda m: macros.get(m.group(1), "").replace("$(1)", m.group(2)), recipe)


@pytest.mark.parametrize("logical_id", FUNCTIONS)
def test_the_handler_module_invoked_here_is_the_one_the_build_packages(logical_id: str) -> None:
    spec = template().function(logical_id)
    source = module_file(spec)
    assert source is not None, f"{logical_id}: {spec.module} is not in {spec.search_path}"
    relative = str(source.relative_to(ROOT))
    resource = template().resources[logical_id]
    if template().properties(logical_id).get("PackageType") == "Image":
        dockerfile = ROOT / resource["Metadata"].get("DockerContext", ".") / resource["Metadata"]["Dockerfile"]
        assert re.search(rf"^COPY .*{re.escape(relative)}", dockerfile.read_text(), flags=re.MULTILINE), relative
    elif resource.get("Metadata", {}).get("BuildMethod") == "makefile":
        recipe = _recipe((ROOT / "Makefile").read_text(), f"build-{logical_id}")
        assert re.search(rf"(?<![\w/]){re.escape(relative)}\b", recipe), f"build-{logical_id} does not copy {relative}"


# ---- template resolution ---------------------------------------------------------------------------------------
def test_parameters_resolve_to_their_defaults_and_resources_are_left_to_local_defaults() -> None:
    spec = template().function("StartTrainingFunction")
    parameters = template().data["Parameters"]
    assert spec.environment["READMIT_TRAINING_INSTANCE"] == parameters["TrainingInstanceType"]["Default"]
    assert spec.environment["POWERTOOLS_SERVICE_NAME"] == "readmit"  # from Globals
    assert spec.unresolved["READMIT_TRAINING_IMAGE"] == "TrainingImage"  # a parameter without a default
    assert spec.unresolved["READMIT_SAGEMAKER_ROLE_ARN"] == "SageMakerRole.Arn"
    assert spec.unresolved["READMIT_ARTIFACT_URI"] == "ArtifactBucket"
    assert spec.timeout == template().properties("StartTrainingFunction")["Timeout"]


@pytest.mark.slow
def test_a_parameter_override_wins_over_the_default() -> None:
    overridden = Template(ROOT / "template.yaml", parameters={"TrainingInstanceType": "ml.c5.2xlarge"})
    assert overridden.function("StartTrainingFunction").environment["READMIT_TRAINING_INSTANCE"] == "ml.c5.2xlarge"


def test_the_resolver_handles_subs_pseudo_parameters_joins_and_escapes() -> None:
    resolve = Resolver({"Stage": "prod"}, region="eu-west-1")
    assert resolve({"Sub": "readmit-${Stage}-${AWS::Region}-${!Literal}"}) == "readmit-prod-eu-west-1-${Literal}"
    assert resolve({"Sub": ["${A}/${Stage}", {"A": {"Ref": "AWS::Partition"}}]}) == "aws/prod"
    assert resolve({"Fn::Join": ["-", ["a", {"Ref": "Stage"}]]}) == "a-prod"
    assert resolve(True) == "true" and resolve(7) == "7"
    with pytest.raises(Unresolved, match=r"Bucket\.Arn"):
        resolve({"GetAtt": ["Bucket", "Arn"]})


def test_the_template_needs_the_dev_extra_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(DevDependencyMissing, match=r"\[dev\]"):
        Template(ROOT / "template.yaml")


# ---- the command ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_command_prints_the_response_like_sam_local_invoke(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["invoke", "ApiFunction", "--event", str(EVENTS / "api_openapi.json")])
    out, err = capsys.readouterr()
    response = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and response["statusCode"] == 200 and json.loads(response["body"])["openapi"].startswith("3.")
    assert re.search(r"^START RequestId: \S+ Version: \$LATEST$", err, flags=re.MULTILINE)
    memory = template().properties("ApiFunction")["MemorySize"]  # the template's figure, as sam local reports it
    assert re.search(
        rf"^REPORT RequestId: \S+\tDuration: [\d.]+ ms\tMemory Size: {memory} MB$", err, flags=re.MULTILINE
    )
    assert "READMIT_REGISTRY (ModelBucket)" in err  # said to be left to the local default


def test_the_command_finds_the_function_from_the_fixture_and_reports_errors_as_lambda_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = EVENTS / "retrain_start_training.json"
    code = cli.main(["invoke", "--event", str(event), "--env", "READMIT_SAGEMAKER_ROLE_ARN="])
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and payload["errorType"] == "TrainingConfigMissing"
    assert "READMIT_SAGEMAKER_ROLE_ARN" in payload["errorMessage"] and payload["stackTrace"]
    assert "local_invoke.py" not in "".join(payload["stackTrace"])


def test_an_unknown_function_or_a_bad_env_pair_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["invoke", "RetrainStateMachine"]) == 2
    assert "not a function" in capsys.readouterr().err
    assert cli.main(["invoke", "ApiFunction", "--env", "NOVALUE"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


# ---- replay every fixture ---------------------------------------------------------------------------------------
Scenario = Callable[[pytest.FixtureRequest], Any]


@contextmanager
def local_champion(request: pytest.FixtureRequest) -> Iterator[None]:
    """The local registry (under $READMIT_HOME) with a real champion: what the unset bucket variables fall
    back to. Inside moto, so a function that reaches for AWS anyway gets an empty account, not the real one."""
    bundle = request.getfixturevalue("small_bundle")
    registry = Registry.open(settings.registry_uri())
    registry.register(bundle)
    registry.promote(bundle.name, "replay champion")
    with mock_aws():
        yield


@contextmanager
def retraining(request: pytest.FixtureRequest) -> Iterator[None]:
    """moto with the data, a trained artifact, the two versions the fixtures name and the job they poll."""
    from chalicelib.lifecycle.sagemaker_jobs import TrainingJobs, TrainingSettings

    with retrain_world(request.getfixturevalue("sample_csv"), request.getfixturevalue("model_tarball")):
        registry = Registry.open(fixture("retrain_promote.json")["registry_uri"])
        for version in (CHAMPION, CHALLENGER):
            registry.register(request.getfixturevalue("small_bundle"), version=version)
        registry.promote(CHAMPION, "replay champion")
        event = fixture("retrain_check_training.json")
        env = {**template().function("StartTrainingFunction").environment, **os.environ}
        TrainingJobs(TrainingSettings.from_env(env)).start(event["training"]["job_name"], event["data_uri"], {})
        yield


def package_decided(status: str) -> Scenario:
    """The retraining world plus the fixtures' model package for the challenger, approved or rejected by a person
    (the promote and reject functions also take SageMaker's state change events)."""

    @contextmanager
    def scenario(request: pytest.FixtureRequest) -> Iterator[None]:
        with retraining(request), moto_update_as_documented():
            person_decides(status, CHALLENGER, fixture("retrain_promote.json")["registry_uri"])
            yield

    return scenario


def check_api(name: str, response: dict[str, Any]) -> None:
    status, body = proxy(response)
    assert status == API_STATUS[name], body
    if status >= 400:
        assert body["error"] and body["details"] and body["request_id"]
    elif name.startswith("api_predict_batch"):
        assert body["scored"] >= 1 and len(body["results"]) == len(fixture_body(name)["encounters"])
    elif name.startswith("api_predict"):
        assert 0 <= body["risk"] <= 1 and body["risk_tier"] and body["model_version"]
    elif name == "api_health.json":
        assert body["ready"] is True and body["model_version"]  # the local registry's champion was found


def fixture_body(name: str) -> dict[str, Any]:
    return json.loads(fixture(name)["body"])


def check_retraining(name: str, out: dict[str, Any]) -> None:
    registry = Registry.open(fixture(name).get("registry_uri") or fixture("retrain_promote.json")["registry_uri"])
    if name == "retrain_start_training.json":
        assert out["job_name"].startswith("readmit-schedule-") and "_" not in out["job_name"]
    elif name == "retrain_check_training.json":
        assert out["status"] in ("InProgress", "Completed") and out["job_name"] == fixture(name)["training"]["job_name"]
    elif name == "retrain_evaluate.json":
        assert out["challenger_version"] in registry.list_versions() and out["champion_version"] == CHAMPION
        assert isinstance(out["promote"], bool) and out["reasons"]
    elif name == "retrain_promote.json":
        assert out == {"champion": CHALLENGER, "promoted": CHALLENGER} and registry.champion() == CHALLENGER
    elif name == "retrain_reject.json":
        assert out == {"champion": CHAMPION, "rejected": CHALLENGER} and registry.history()[-1]["event"] == "rejected"
    elif name == "promote_model_package_approved.json":
        assert out == {"champion": CHALLENGER, "promoted": CHALLENGER, "changed": True}
    elif name == "reject_model_package_rejected.json":
        assert out == {"champion": CHAMPION, "rejected": CHALLENGER, "changed": True}
        assert registry.history()[-1]["reason"] == "rejected by the fixtures' reviewer"


def check_drift_monitor(name: str, out: dict[str, Any]) -> None:
    assert out["status"] == "too few predictions" and out["model_version"]  # the local champion, an empty log


def check_generic(name: str, out: Any) -> None:
    """Any function: a response Lambda can marshal; an API response that is not a 5xx; a batch response whose
    failures name message ids."""
    json.dumps(out)
    if isinstance(out, dict) and "statusCode" in out:  # 503 (not ready: no model or no index) says why
        assert out["statusCode"] < 500 or (out["statusCode"] == 503 and json.loads(out["body"])["details"]), out
    if isinstance(out, dict) and "batchItemFailures" in out:
        assert all("itemIdentifier" in f for f in out["batchItemFailures"])


@contextmanager
def ingesting(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """moto S3 holding the files the SQS fixtures name, the ingest queue and its DLQ; the offline embedder
    (the template's default is Bedrock, which moto cannot serve)."""
    moto_world = request.getfixturevalue("world")
    yield {
        "READMIT_INGEST_QUEUE_URL": moto_world.queue_url,
        "READMIT_INGEST_REPORT_URI": f"s3://{EMBEDDER_BUCKET}/ingest-reports/",
        "READMIT_EMBEDDER": "local",
    }


def check_embedder(name: str, out: dict[str, Any]) -> None:
    assert isinstance(out["batchItemFailures"], list)
    if name == "embedder_sqs_poison.json":  # reported as failed: SQS moves them to the DLQ after maxReceiveCount
        assert {f["itemIdentifier"] for f in out["batchItemFailures"]} == {
            "4c9f6d1b-b25e-4c41-8f6d-5e0a8b2d3f04",
            "5d0a7e2c-c36f-4d52-9a7e-6f1b9c3e4a05",
        }


PLACEHOLDER_VERSION = "20261126T020000Z-0123abcd"  # the version the batch fixtures pin


@contextmanager
def batch_scoring(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """moto buckets (tests/test_batch_job.py) with the fixtures' discharge list uploaded, the fixtures' model
    version as champion, and the Distributed Map's parts of the fixtures' run written (what Merge reads)."""
    from tests.test_batch_job import MODELS, _simulate_distributed_map, fixture_file

    buckets = request.getfixturevalue("aws")
    registry = Registry.open(f"s3://{MODELS}/registry", s3_client=buckets.s3)
    registry.register(request.getfixturevalue("small_bundle"), version=PLACEHOLDER_VERSION)
    registry.promote(PLACEHOLDER_VERSION, "the fixtures' champion")
    job = fixture("batch_prepare_job.json")
    buckets.put(job["key"], fixture_file())
    prepared = run("BatchPrepareFunction", job)
    _simulate_distributed_map(buckets, prepared, job["run_id"])
    yield {}


def check_batch(name: str, out: dict[str, Any]) -> None:
    if name == "batch_score_map_batch.json":  # five rows, one with an impossible age
        assert (out["rows"], out["scored"], out["invalid"]) == (5, 4, 1)
    elif name == "batch_prepare_job.json":
        assert out["rows"] == 5 and out["model_version"] == PLACEHOLDER_VERSION
    else:  # the whole list scored (one Lambda, or merged from the parts): the notice names the scored file
        assert out["scored_file"].endswith("scored/2026-11-27/discharges.csv") and out["rows"] == 5


RETRAINING_STEPS = ("StartTrainingFunction", "CheckTrainingFunction", "EvaluateFunction", "PromoteFunction")
SCENARIOS: dict[str, tuple[Scenario, Callable[[str, Any], None]]] = {
    "ApiFunction": (local_champion, check_api),
    "DriftMonitorFunction": (local_champion, check_drift_monitor),
    **{step: (retraining, check_retraining) for step in RETRAINING_STEPS},
    "PromoteFunction": (package_decided("Approved"), check_retraining),
    "RejectFunction": (package_decided("Rejected"), check_retraining),
    "EmbedderFunction": (ingesting, check_embedder),
    **{
        fn: (batch_scoring, check_batch)
        for fn in ("BatchScoreFunction", "BatchScoreMapFunction", "BatchPrepareFunction", "BatchMergeFunction")
    },
}


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.slow
def test_every_fixture_replays_through_its_target(name: str, request: pytest.FixtureRequest) -> None:
    target = template().fixture_target(EVENTS / name)
    assert target in template().resources, name
    if template().resources[target]["Type"] not in FUNCTION_TYPES:  # a state machine: a rule must start it
        rules = rules_starting(target)
        assert any(starts(rule, fixture(name)) for rule in rules), f"no rule of {target} matches {name}"
        return
    scenario, check = SCENARIOS.get(target, (local_champion, check_generic))
    for variable in template().function(target).unresolved:  # left to local defaults, as for a developer
        request.getfixturevalue("monkeypatch").delenv(variable, raising=False)
    with scenario(request) as env:
        out = run(target, name, **(env or {}))
        check(name, out)
    check_generic(name, out)


def test_a_fixture_that_matches_no_rule_is_caught() -> None:
    event = fixture("eventbridge_drift_alarm.json")
    event["detail"]["state"]["value"] = "OK"
    assert not any(starts(rule, event) for rule in rules_starting("RetrainStateMachine"))
    schedule = fixture("eventbridge_weekly_schedule.json")
    schedule["resources"] = ["arn:aws:events:us-east-1:123456789012:rule/some-other-rule"]
    assert not any(starts(rule, schedule) for rule in rules_starting("RetrainStateMachine"))


def test_the_drift_monitor_uses_the_local_registry_when_its_bucket_is_not_set(
    request: pytest.FixtureRequest, small_bundle: Path
) -> None:
    with local_champion(request):
        out = run("DriftMonitorFunction", "drift_monitor_daily.json")
    assert out["model_version"] == small_bundle.name
