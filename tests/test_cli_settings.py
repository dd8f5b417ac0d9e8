"""`readmit settings` prints the effective configuration (issue #18): each READMIT_* variable, where its value comes
from, secrets masked; `python -m chalicelib.cli` runs the CLI; `readmit retrain`'s gate defaults are GateConfig's."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SALT = "salt-that-must-not-show-7f3a"


def rows_by_name(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {row["name"]: row for row in rows}


@pytest.mark.slow
def test_settings_as_json_shows_where_each_value_comes_from_and_masks_the_salt(tmp_path: Path) -> None:
    env = {**os.environ, "READMIT_REGISTRY": str(tmp_path / "reg"), "READMIT_ID_SALT": SALT}
    env.pop("READMIT_STATE_MACHINE", None)
    done = subprocess.run(  # `python -m chalicelib.cli`: the package's __main__.py
        [sys.executable, "-m", "chalicelib.cli", "settings", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert SALT not in done.stdout and SALT not in done.stderr
    rows = rows_by_name(json.loads(done.stdout))
    assert set(rows["READMIT_REGISTRY"]) == {"name", "value", "default", "source", "doc"}
    assert rows["READMIT_REGISTRY"]["value"] == str(tmp_path / "reg")
    assert rows["READMIT_REGISTRY"]["source"] == "env"
    assert rows["READMIT_ID_SALT"]["source"] == "env"
    assert rows["READMIT_ID_SALT"]["value"] not in ("", SALT)
    assert rows["READMIT_STATE_MACHINE"]["source"] == "default"


def test_settings_on_a_terminal_is_a_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("READMIT_REGISTRY", "s3://bucket/registry")
    monkeypatch.setenv("READMIT_ID_SALT", SALT)
    monkeypatch.delenv("READMIT_STATE_MACHINE", raising=False)
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert SALT not in out
    lines = out.splitlines()
    assert lines[0].split() == ["name", "value", "source", "doc"]
    table = {line.split()[0]: line.split()[1:3] for line in lines[1:]}
    assert table["READMIT_REGISTRY"] == ["s3://bucket/registry", "env"]
    assert table["READMIT_ID_SALT"][1] == "env" and table["READMIT_ID_SALT"][0] != SALT
    assert table["READMIT_STATE_MACHINE"] == ["-", "default"]  # unset: no value, the default applies
    column = lines[0].index("source")
    assert all(line[column:].split()[0] in ("env", "default") for line in lines[1:])  # aligned under its header


def test_an_invalid_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("READMIT_PROMOTION_POLICY", "sometimes")
    assert main(["settings", "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("readmit settings: ") and "READMIT_PROMOTION_POLICY" in err[0]


def test_retrain_takes_the_gate_defaults_from_gate_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flag left out means GateConfig's default (the one place it is written), a flag given overrides it."""
    from chalicelib.lifecycle import gate, retrain

    @dataclasses.dataclass(frozen=True)
    class OtherDefaults(gate.GateConfig):
        min_auc: float = 0.71
        max_auc_drop: float = 0.003
        max_ece: float = 0.013

    seen: list[gate.GateConfig] = []

    class Stop(Exception):
        pass

    def fake_retrain(*_args: object, gate_cfg: gate.GateConfig, **_kwargs: object) -> None:
        seen.append(gate_cfg)
        raise Stop

    monkeypatch.setattr(gate, "GateConfig", OtherDefaults)
    monkeypatch.setattr(retrain, "retrain", fake_retrain)
    data = tmp_path / "data.csv"
    data.write_text("encounter_id\n")
    argv = ["retrain", "--data", str(data), "--registry", str(tmp_path / "reg")]
    assert main(argv) == 1 and main([*argv, "--max-ece", "0.05"]) == 1  # Stop: an unexpected error, one line
    assert seen == [OtherDefaults(), OtherDefaults(max_ece=0.05)]
    capsys.readouterr()
