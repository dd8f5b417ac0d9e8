"""`.chalice/config.json` is for the local server only: SAM (template.yaml) deploys the API, so no stage may name
AWS resources (a `chalice deploy` of it would build a second, misconfigured stack) and `chalice deploy` must stop
before it creates anything."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chalice.config import Config
from chalice.deploy.validate import validate_configuration

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".chalice" / "config.json"
AWS_MARKERS = ("s3://", "dynamodb://", "arn:", "https://sqs.", ".amazonaws.com")


def strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string value in the config with its path (keys starting with "_" are notes, not settings)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not key.startswith("_"):
                yield from strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from strings(item, f"{where}[{i}]")
    elif isinstance(value, str):
        yield where, value


def test_no_setting_of_any_stage_points_at_aws_resources() -> None:
    disk = json.loads(CONFIG.read_text())
    aws = [(where, value) for where, value in strings(disk) if any(m in value for m in AWS_MARKERS)]
    assert not aws, f"SAM deploys readmit; these settings would make `chalice deploy` build a second stack: {aws}"
    assert set(disk.get("stages", {})) <= {"local"}


@pytest.mark.parametrize("stage", ["dev", "local", "prod"])
def test_chalice_deploy_stops_at_validation_for_every_stage(stage: str) -> None:
    """`chalice deploy` runs chalice.deploy.validate.validate_configuration before it builds or calls AWS
    (chalice/deploy/deployer.py, Deployer._validate_config); "dev" is its default stage."""
    from app import app

    config = Config(stage, config_from_disk=json.loads(CONFIG.read_text()), user_provided_params={"chalice_app": app})
    with pytest.raises(ValueError, match="manage_iam_role"):
        validate_configuration(config)
