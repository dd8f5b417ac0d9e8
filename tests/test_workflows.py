"""The GitHub Actions workflows: tests on every change, AWS only through OIDC roles, deploys only after the tests,
and the deploy builds and pushes the SageMaker training image the stack then runs, pinned by digest."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    assert "sourcedir" not in script  # the training code is baked into the image now (issue #14)


def test_the_deploy_pushes_the_training_image_and_passes_it_pinned_by_digest() -> None:
    deploy = load("deploy.yml")["jobs"]["deploy"]
    names = [s.get("name", "") for s in steps(deploy)]
    (push,) = [s for s in steps(deploy) if "make --no-print-directory training-image" in s.get("run", "")]
    assert names.index(push["name"]) < names.index("sam deploy")
    assert push["env"] == {"REPO": "${{ vars.SAM_IMAGE_REPOSITORY }}", "TAG": "training-${{ github.sha }}"}
    assert 'REPO="$REPO" TRAINING_TAG="$TAG"' in push["run"] and "docker login" in push["run"]
    (sam,) = [s for s in steps(deploy) if s.get("name") == "sam deploy"]
    assert re.search(r'--parameter-overrides "[^"]*\bTrainingImage=\$TRAINING_IMAGE\b', sam["run"])


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


def test_the_training_image_target_builds_the_training_dockerfile_and_prints_the_digest_uri() -> None:
    repo = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/readmit"
    plan = subprocess.run(
        ["make", "-n", "training-image", f"REPO={repo}", "TRAINING_TAG=training-abc"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f'-f deploy/training/Dockerfile -t "{repo}:training-abc" .' in plan
    assert f'docker push "{repo}:training-abc"' in plan
    assert f'grep -m1 "^{repo}@sha256:"' in plan and 'echo "TrainingImage=$digest"' in plan
    unset = subprocess.run(["make", "-s", "training-image", "REPO="], cwd=ROOT, capture_output=True, text=True)
    assert unset.returncode != 0 and "usage: make training-image REPO=" in unset.stderr
