"""The one settings object (chalicelib/core/settings.py): every READMIT_* variable the code, the handlers and the
template name is declared there; env overrides defaults; invalid values fail with the variable's name; describe()
masks secrets; and the retraining gate's defaults agree across GateConfig, template.yaml and the README."""

from __future__ import annotations

import math
import re
from dataclasses import fields
from pathlib import Path

import pytest

from chalicelib.cli.sam_template import load_template
from chalicelib.core import settings
from chalicelib.core.settings import ENV, SECRETS, Settings, SettingsError, describe
from chalicelib.lifecycle.gate import GateConfig

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bREADMIT_[A-Z0-9_]*[A-Z0-9]\b")
# Knobs of the browser test harness (tests/test_browser_e2e.py), not of readmit: the app never reads them.
TEST_HARNESS = {"READMIT_CHROMIUM", "READMIT_AXE", "READMIT_ARTIFACTS"}


def _names_in(paths: list[Path]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in paths:
        for name in NAME.findall(path.read_text(encoding="utf-8")):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_readmit_variable_named_anywhere_is_declared_once() -> None:
    sources = [ROOT / "app.py", ROOT / "template.yaml", *sorted((ROOT / "chalicelib").rglob("*.py"))]
    sources += sorted((ROOT / "functions").rglob("*.py"))
    used = _names_in(sources)
    assert len(used) > 40, "the grep found too few names: is the pattern right?"
    undeclared = {name: where for name, where in used.items() if name not in settings.FIELD}
    assert not undeclared, f"declare these in chalicelib/core/settings.py: {undeclared}"
    # the tests' own names too (env mappings, setenv), apart from the browser harness's knobs
    in_tests = _names_in(sorted((ROOT / "tests").glob("*.py")))
    assert set(in_tests) - set(settings.FIELD) - TEST_HARNESS == set()
    assert len(set(ENV.values())) == len(ENV)  # one variable per field


def test_every_setting_has_a_doc_and_an_env_constant() -> None:
    assert all(info.description for info in Settings.model_fields.values())
    constants = {v for k, v in vars(settings).items() if k.startswith("ENV_") and isinstance(v, str)}
    assert set(ENV.values()) == constants
    assert (settings.ENV_SALT, settings.ENV_SALT_SECRET) == ("READMIT_ID_SALT", "READMIT_ID_SALT_SECRET")


def test_the_sagemaker_entry_points_literal_names_agree() -> None:
    """sagemaker_train keeps READMIT_ML_ROOT literal (its pre-check imports only the standard library)."""
    from chalicelib.model import sagemaker_train

    assert sagemaker_train.ML_ROOT_ENV == settings.ENV_ML_ROOT
    assert Path(sagemaker_train.DEFAULT_ML_ROOT) == settings.default("ml_root")


def test_defaults_when_unset_or_empty_and_env_overrides_them() -> None:
    s = Settings.from_env({})
    assert (s.home, s.registry, s.check_interval, s.promotion_policy, s.embed_dimensions) == (
        Path(".readmit"),
        None,
        300.0,
        "auto",
        512,
    )
    assert Settings.from_env({"READMIT_CHECK_INTERVAL": "", "READMIT_REGISTRY": ""}) == s  # empty is unset
    env = {
        "READMIT_HOME": "/srv/readmit",
        "READMIT_CHECK_INTERVAL": "12.5",
        "READMIT_PROMOTION_POLICY": " Manual ",
        "READMIT_EMBED_DIMENSIONS": "1024",
        "READMIT_DEBUG": "1",
        "READMIT_GATE_MIN_AUC": "0.7",
        "UNRELATED": "ignored",
    }
    s = Settings.from_env(env)
    assert (s.home, s.check_interval, s.promotion_policy, s.embed_dimensions, s.debug, s.gate_min_auc) == (
        Path("/srv/readmit"),
        12.5,
        "manual",
        1024,
        True,
        0.7,
    )
    # an empty tracking URI is a value (off), not "unset" (the local SQLite store)
    assert Settings.from_env({"READMIT_MLFLOW_TRACKING_URI": ""}).mlflow_tracking_uri == ""
    assert Settings.from_env({}).mlflow_tracking_uri is None


def test_a_mapping_is_the_whole_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_env(mapping) reads the mapping only (pydantic-settings' own sources would add os.environ)."""
    monkeypatch.setenv("READMIT_REGISTRY", "s3://from-os-environ/registry")
    monkeypatch.setenv("READMIT_EMBED_DIMENSIONS", "256")
    assert Settings.from_env({}).registry is None
    assert Settings.from_env().registry == "s3://from-os-environ/registry"
    assert Settings.from_env().embed_dimensions == 256
    assert settings.registry_uri() == "s3://from-os-environ/registry"
    assert settings.registry_uri("explicit") == "explicit"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"READMIT_CHECK_INTERVAL": "soon"}, "READMIT_CHECK_INTERVAL='soon' is not a number"),
        ({"READMIT_GATE_MIN_AUC": "high"}, "READMIT_GATE_MIN_AUC='high' is not a number"),
        ({"READMIT_GATE_MAX_ECE": "nan"}, "READMIT_GATE_MAX_ECE must be a finite number"),
        ({"READMIT_EMBED_DIMENSIONS": "5.5"}, "READMIT_EMBED_DIMENSIONS='5.5' is not a number"),
        ({"READMIT_MIN_SHADOW_HOURS": "-1"}, "READMIT_MIN_SHADOW_HOURS must be 0 or more, got -1.0"),
        ({"READMIT_MIN_SHADOW_HOURS": "nan"}, "READMIT_MIN_SHADOW_HOURS must be 0 or more"),
        ({"READMIT_MIN_SHADOW_REQUESTS": "-3"}, "READMIT_MIN_SHADOW_REQUESTS must be 0 or more, got -3"),
        ({"READMIT_PROMOTION_POLICY": "sometimes"}, "READMIT_PROMOTION_POLICY must be one of ('auto', 'manual')"),
        ({"READMIT_DEBUG": "maybe"}, "READMIT_DEBUG='maybe'"),
    ],
)
def test_an_invalid_value_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env(env)
    assert issubclass(SettingsError, ValueError)  # callers that caught ValueError still do


def test_an_invalid_secret_is_not_echoed() -> None:
    err = settings._explain({"loc": ("id_salt",), "type": "string_type", "msg": "bad"}, {"id_salt": "s3cr3t"})
    assert "s3cr3t" not in err and "READMIT_ID_SALT=****" in err


def test_the_helpers_read_their_own_variable_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("READMIT_HOME", str(tmp_path))
    monkeypatch.setenv("READMIT_EMBED_DIMENSIONS", "not a number")  # someone else's problem: home() still works
    assert settings.home() == tmp_path
    assert settings.index_dir() == tmp_path / "index"
    assert settings.promotion_policy() == "auto" and settings.promotion_policy("MANUAL") == "manual"
    assert settings.min_shadow_hours(2.5) == 2.5 and settings.min_shadow_requests() == 0
    with pytest.raises(ValueError, match="READMIT_PROMOTION_POLICY must be one of"):
        settings.promotion_policy("bogus")
    with pytest.raises(ValueError, match="READMIT_MIN_SHADOW_REQUESTS must be 0 or more, got -1"):
        settings.min_shadow_requests(-1)
    with pytest.raises(SettingsError, match="READMIT_EMBED_DIMENSIONS"):
        Settings.from_env()  # the whole object checks every variable


def test_raw_reads_declared_names_only() -> None:
    assert settings.raw("READMIT_ID_SALT", {"READMIT_ID_SALT": "x"}) == "x"
    assert settings.raw("READMIT_ID_SALT", {"READMIT_ID_SALT": ""}) is None
    typo = settings.ENV_SALT + "S"
    with pytest.raises(KeyError, match=f"{typo} is not a declared setting"):
        settings.raw(typo, {})


def test_describe_lists_every_setting_and_masks_secrets() -> None:
    env = {
        "READMIT_ID_SALT": "pepper-1234",
        "READMIT_QDRANT_API_KEY": "qdrant-key-5678",
        "READMIT_DEV_AUTH_SECRET": "hs256-key-9012",
        "READMIT_QDRANT_API_KEY_SECRET": "arn:aws:secretsmanager:us-east-1:123456789012:secret:qdrant",
        "READMIT_REGISTRY": "s3://models/registry",
        "READMIT_DEBUG": "true",
    }
    rows = describe(env)
    assert [r["name"] for r in rows] == list(ENV.values())
    assert all(set(r) == {"name", "value", "default", "source", "doc"} for r in rows)
    assert all(isinstance(v, str) for r in rows for v in r.values())
    by_name = {r["name"]: r for r in rows}
    text = repr(rows)
    for secret in ("pepper-1234", "qdrant-key-5678", "hs256-key-9012"):
        assert secret not in text
    for name in ("READMIT_ID_SALT", "READMIT_QDRANT_API_KEY", "READMIT_DEV_AUTH_SECRET"):
        assert by_name[name]["value"] == "****" and by_name[name]["source"] == "env"
    assert {"id_salt", "qdrant_api_key", "dev_auth_secret"} <= SECRETS
    # a secret's id (an ARN) is not the secret: shown, so an operator can see which one is used
    assert by_name["READMIT_QDRANT_API_KEY_SECRET"]["value"].startswith("arn:aws:secretsmanager:")
    assert by_name["READMIT_REGISTRY"] == {
        "name": "READMIT_REGISTRY",
        "value": "s3://models/registry",
        "default": "",
        "source": "env",
        "doc": Settings.model_fields["registry"].description,
    }
    assert by_name["READMIT_DEBUG"]["value"] == "true"
    interval = by_name["READMIT_CHECK_INTERVAL"]
    assert (interval["value"], interval["default"], interval["source"]) == ("300.0", "300.0", "default")
    unset = {r["name"]: r["value"] for r in describe({})}
    assert unset["READMIT_ID_SALT"] == "" and unset["READMIT_HOME"] == ".readmit"  # unset secrets: nothing to mask


def test_describe_reports_an_invalid_value() -> None:
    with pytest.raises(SettingsError, match="READMIT_MIN_SHADOW_HOURS"):
        describe({"READMIT_MIN_SHADOW_HOURS": "-2"})


# ---- the retraining gate's defaults: GateConfig is the one place; the template and the README agree ----------
GATE = {"min_auc": "GateMinAuc", "max_auc_drop": "GateMaxAucDrop", "max_ece": "GateMaxEce"}


def test_the_templates_gate_parameters_default_to_gate_config() -> None:
    parameters = load_template(ROOT / "template.yaml")["Parameters"]
    defaults = {f.name: f.default for f in fields(GateConfig)}
    for field, parameter in GATE.items():
        assert math.isclose(float(parameters[parameter]["Default"]), defaults[field]), parameter
        # and each parameter reaches the evaluate step as the variable Settings declares
        assert f"gate_{field}" in Settings.model_fields


def test_the_readme_states_gate_config_defaults() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    g = GateConfig()
    rules = [f"ROC-AUC ≥ {g.min_auc:g}.", f"At most {g.max_auc_drop:g} AUC below the champion."]
    rules.append(f"ECE ≤ {g.max_ece:g}.")
    for rule in rules:
        assert rule in readme, rule
    listed = f"`GateMinAuc`, `GateMaxAucDrop`, `GateMaxEce`: the retraining gate ({g.min_auc:g}, {g.max_auc_drop:g}, "
    assert f"{listed}{g.max_ece:g})" in readme
    assert f"wholly below {g.min_subgroup_auc:.2f}, or wholly more than {g.max_subgroup_gap:.2f} under" in readme
