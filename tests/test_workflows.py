"""The GitHub Actions workflows: tests on every change, AWS only through OIDC roles, deploys only after the tests,
and the SageMaker source the deploy uploads is what the training job runs."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib.sagemaker_jobs import ENTRY_POINT

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
AWS_JOBS = {("deploy.yml", "deploy"), ("retrain.yml", "retrain")}  # the only jobs that assume an AWS role


def load(name: str) -> dict[str, Any]:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as True
    return workflow


def all_workflows() -> dict[str, dict[str, Any]]:
    return {p.name: load(p.name) for p in sorted(WORKFLOWS.glob("*.yml"))}


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job.get("steps", [])


def runs(job: dict[str, Any]) -> str:
    return "\n".join(s.get("run", "") for s in steps(job))


def test_the_expected_workflows_exist() -> None:
    assert {"test.yml", "validate.yml", "deploy.yml", "retrain.yml"} <= set(all_workflows())


def test_id_token_write_is_granted_only_to_the_jobs_that_assume_an_aws_role() -> None:
    granted = set()
    for name, workflow in all_workflows().items():
        assert (workflow.get("permissions") or {}).get("id-token") != "write", f"{name}: id-token at workflow level"
        for job_id, job in workflow["jobs"].items():
            if (job.get("permissions") or {}).get("id-token") == "write":
                granted.add((name, job_id))
    assert granted == AWS_JOBS


def test_aws_credentials_come_only_from_an_oidc_role_never_from_keys() -> None:
    for name, workflow in all_workflows().items():
        text = (WORKFLOWS / name).read_text()
        assert "AWS_ACCESS_KEY_ID" not in text and "AWS_SECRET_ACCESS_KEY" not in text, name
        assert "aws-access-key-id" not in text and "aws-secret-access-key" not in text, name
        for job_id, job in workflow["jobs"].items():
            for step in steps(job):
                if step.get("uses", "").startswith("aws-actions/configure-aws-credentials"):
                    assert (name, job_id) in AWS_JOBS
                    assert step["with"]["role-to-assume"].startswith("${{ vars."), (name, job_id)


def test_tests_run_on_every_pull_request_and_push() -> None:
    workflow = load("test.yml")
    assert {"pull_request", "push", "workflow_call"} <= set(workflow["on"])
    assert "make test" in runs(workflow["jobs"]["test"])


def test_deploy_runs_on_main_after_the_tests_and_deploys_without_prompting() -> None:
    workflow = load("deploy.yml")
    assert workflow["on"] == {"push": {"branches": ["main"]}}
    deploy = workflow["jobs"]["deploy"]
    needs = deploy["needs"] if isinstance(deploy["needs"], list) else [deploy["needs"]]
    test_jobs = [j for j in needs if workflow["jobs"][j].get("uses") == "./.github/workflows/test.yml"]
    assert test_jobs, "the deploy job must depend on the test workflow"
    script = runs(deploy)
    assert "sam build" in script and "sam deploy" in script
    assert "--no-confirm-changeset" in script and "--no-fail-on-empty-changeset" in script
    assert "make sourcedir" in script and "/code/sourcedir.tar.gz" in script  # READMIT_SOURCE_URI's object


def test_validate_runs_every_template_and_state_machine_check() -> None:
    script = runs(load("validate.yml")["jobs"]["validate"])
    for check in ("cfn-lint template.yaml deploy/aws/", "sam validate --lint", "make checkov", "make validate-asl"):
        assert check in script


def test_retraining_is_a_manual_dispatch() -> None:
    assert set(load("retrain.yml")["on"]) == {"workflow_dispatch"}


def test_every_action_is_pinned_to_a_version() -> None:
    for name, workflow in all_workflows().items():
        for job in workflow["jobs"].values():
            for step in steps(job):
                if "uses" in step:
                    assert "@" in step["uses"], (name, step["uses"])


@pytest.mark.parametrize("variable", ["AWS_DEPLOY_ROLE_ARN", "CFN_EXECUTION_ROLE_ARN", "SAM_PACKAGE_BUCKET"])
def test_the_deploy_variables_are_outputs_of_the_bootstrap_stack(variable: str) -> None:
    assert f"vars.{variable}" in (WORKFLOWS / "deploy.yml").read_text()
    assert f"variable {variable}" in (ROOT / "deploy" / "aws" / "github-oidc.yaml").read_text()


def test_the_sagemaker_source_holds_the_entry_point_and_the_training_requirements(tmp_path: Path) -> None:
    out = tmp_path / "sourcedir.tar.gz"
    subprocess.run(["make", "-s", "sourcedir", f"SOURCEDIR={out}"], cwd=ROOT, check=True, capture_output=True)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        requirements = tar.extractfile("./requirements.txt").read().decode()  # type: ignore[union-attr]
    assert f"./{ENTRY_POINT}" in names
    assert {"xgboost-cpu", "pandas", "scikit-learn"} <= {r.split(">")[0].split("[")[0] for r in requirements.split()}
