"""Canary deploys of code (issue #16 item 2): the API, embedder and batch functions go live through an alias that
CodeDeploy shifts (10% for 5 minutes by default) and rolls back when one of their alarms fires; everything that
invokes them calls the alias. Checked on the template after the SAM transform, as CloudFormation receives it."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from tests.iam_model import load_cfn, translate
from tests.test_template_first_deploy import BASE, TEMPLATE

CANARIED = ("ApiFunction", "EmbedderFunction", "BatchScoreFunction", "BatchScoreMapFunction", "BatchPrepareFunction",
            "BatchMergeFunction")  # fmt: skip


@functools.cache
def raw() -> dict[str, Any]:
    return load_cfn(TEMPLATE)


@functools.cache
def translated() -> dict[str, Any]:
    return translate(raw(), BASE)


def resources_of(kind: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in translated()["Resources"].items() if r["Type"] == kind}


@pytest.mark.parametrize("function", CANARIED)
@pytest.mark.slow
def test_the_function_deploys_through_a_canary_that_its_alarms_roll_back(function: str) -> None:
    props = raw()["Resources"][function]["Properties"]
    assert props["AutoPublishAlias"] == "live"
    alarms = [a["Ref"] for a in props["DeploymentPreference"]["Alarms"]]
    assert alarms and all(raw()["Resources"][a]["Type"] == "AWS::CloudWatch::Alarm" for a in alarms)
    group = resources_of("AWS::CodeDeploy::DeploymentGroup")[f"{function}DeploymentGroup"]["Properties"]
    assert group["AlarmConfiguration"]["Enabled"] is True
    assert [a["Name"] for a in group["AlarmConfiguration"]["Alarms"]] == [{"Ref": a} for a in alarms]
    assert {"DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM"} <= set(group["AutoRollbackConfiguration"]["Events"])
    config = group["DeploymentConfigName"]
    assert raw()["Parameters"]["CanaryDeployment"]["Default"] == "Canary10Percent5Minutes"
    assert "CodeDeployDefault.Lambda" in json.dumps(config)  # SAM's predefined Lambda configurations
    alias = resources_of("AWS::Lambda::Alias")[f"{function}Aliaslive"]["Properties"]
    assert alias["Name"] == "live" and "UpdatePolicy" in translated()["Resources"][f"{function}Aliaslive"]


@pytest.mark.slow
def test_the_api_calls_the_alias_not_the_function() -> None:
    body = json.dumps(next(iter(resources_of("AWS::ApiGateway::RestApi").values()))["Properties"]["Body"])
    assert "ApiFunctionAliaslive" in body
    permissions = [r["Properties"] for r in resources_of("AWS::Lambda::Permission").values()]
    api_invokes = [p for p in permissions if p["Principal"] == "apigateway.amazonaws.com"]
    assert api_invokes and all(p["FunctionName"] == {"Ref": "ApiFunctionAliaslive"} for p in api_invokes)


def test_the_queue_and_the_state_machine_call_the_aliases() -> None:
    [mapping] = resources_of("AWS::Lambda::EventSourceMapping").values()
    assert mapping["Properties"]["FunctionName"] == {"Ref": "EmbedderFunctionAliaslive"}
    machine = resources_of("AWS::StepFunctions::StateMachine")
    substitutions = next(m for k, m in machine.items() if "Batch" in k)["Properties"]["DefinitionSubstitutions"]
    for name, value in substitutions.items():
        if name.endswith("FunctionArn"):
            assert value == {"Ref": f"{name.removesuffix('Arn')}Aliaslive"}, name


def test_no_deploy_preference_on_functions_invoked_by_the_retraining_state_machine() -> None:
    """The retraining steps run a few times a week; a canary there would only split one execution across versions."""
    for function in ("StartTrainingFunction", "CheckTrainingFunction", "EvaluateFunction", "PromoteFunction"):
        assert "DeploymentPreference" not in raw()["Resources"][function]["Properties"], function
