"""The command line as a new user meets it (issue #17, part 2): user mistakes are one line on stderr and exit 2,
`--help` starts fast, progress shows, evaluate is honest about which patients trained the model.

Most tests run the real `readmit` console script in a subprocess, as a user would."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READMIT = ROOT / ".venv" / "bin" / "readmit"


def readmit(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    full.pop("READMIT_DEBUG", None)
    command = [str(READMIT)] if READMIT.exists() else [sys.executable, "-m", "chalicelib.cli.main"]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=300)


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("readmit "), lines
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def header(sample_csv: Path) -> str:
    return sample_csv.read_text().splitlines()[0]


@pytest.mark.slow
def test_a_markdown_file_as_data_is_not_a_uci_csv() -> None:
    one_line_error(readmit("data", "--offline", "--data", str(ROOT / "README.md")), "README.md", "not a UCI-format CSV")


def test_an_empty_csv_says_it_is_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    one_line_error(readmit("data", "--offline", "--data", str(tmp_path / "empty.csv")), "empty.csv", "is empty")


@pytest.mark.slow
def test_a_folder_as_data_says_it_is_a_folder(tmp_path: Path) -> None:
    one_line_error(readmit("data", "--offline", "--data", str(tmp_path)), "a folder")


@pytest.mark.parametrize(("sep", "name"), [(";", "semicolon"), ("\t", "tab")])
@pytest.mark.slow
def test_another_delimiter_gets_a_hint(tmp_path: Path, header: str, sep: str, name: str) -> None:
    path = tmp_path / "other.csv"
    path.write_text(header.replace(",", sep) + "\n" + "1" + sep + "2\n")
    one_line_error(readmit("data", "--offline", "--data", str(path)), f"{name}-delimited")


@pytest.mark.slow
def test_predict_with_a_model_path_that_does_not_exist(tmp_path: Path, sample_csv: Path) -> None:
    done = readmit("predict", "--model", "/no/such/path", "--data", str(sample_csv), "--out", str(tmp_path / "o.csv"))
    one_line_error(done, "/no/such/path does not exist")
    assert "champion" not in done.stderr


@pytest.mark.slow
def test_an_unknown_version_lists_the_known_ones(tmp_path: Path, sample_csv: Path, small_bundle: Path) -> None:
    from chalicelib.registry.registry import Registry

    registry = Registry.open(tmp_path / "reg", validate=False)
    registry.register(small_bundle)
    model = f"{tmp_path / 'reg'}/models/bogus"
    done = readmit("predict", "--model", model, "--data", str(sample_csv), "--out", str(tmp_path / "o.csv"))
    one_line_error(done, "no model version 'bogus' in registry", f"known: {small_bundle.name}")


@pytest.mark.slow
def test_serve_with_a_bad_model_path_fails_at_start(tmp_path: Path) -> None:
    one_line_error(readmit("serve", "--model", str(tmp_path / "nope"), "--port", "0"), "does not exist")


@pytest.mark.slow
def test_a_closed_pipe_is_not_a_traceback() -> None:
    program = READMIT if READMIT.exists() else f"{sys.executable} -m chalicelib.cli.main"
    command = f"{program} features | true"  # the reader is gone before the first write
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stderr == "", done.stderr


def test_an_unexpected_error_is_one_line_unless_debugging(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from chalicelib.cli import data
    from chalicelib.cli import main as cli

    def boom(_args: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(data, "cmd_features", boom)
    monkeypatch.delenv("READMIT_DEBUG", raising=False)
    assert cli.main(["features"]) == 1
    err = capsys.readouterr().err
    assert "ZeroDivisionError: a bug" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        cli.main(["features", "--debug"])
    monkeypatch.setenv("READMIT_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.main(["features"])


@pytest.mark.slow
def test_a_ragged_row_is_marked_invalid_and_the_rest_is_scored(
    small_bundle: Path, sample_csv: Path, tmp_path: Path
) -> None:
    lines = sample_csv.read_text().splitlines()[:201]
    lines[50] = lines[50] + ",extra"  # line 51 of the file: 51 fields in a 50-column file
    source = tmp_path / "ragged.csv"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.csv"
    done = readmit("predict", "--model", str(small_bundle), "--data", str(source), "--out", str(out))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 200
    assert rows[49]["status"] == "invalid" and "51 fields, expected 50" in rows[49]["reason"]
    assert rows[49]["encounter_id"] == lines[50].split(",")[0]
    assert sum(r["status"] == "scored" for r in rows) > 150


@pytest.mark.slow
def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys\nfrom chalicelib.cli import main as cli\n"
        "names = cli.build_parser()._subparsers._group_actions[0].choices\n"
        "for argv in (['--help'], *[[c, '--help'] for c in names]):\n"
        "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('xgboost', 'pandas', 'sklearn', 'numpy') if m in sys.modules), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "[]", done.stderr


@pytest.mark.slow
def test_version_prints_the_package_version_and_the_local_champion(small_bundle: Path, tmp_path: Path) -> None:
    from importlib.metadata import version

    from chalicelib.registry.registry import Registry

    registry = Registry.open(tmp_path / "reg", validate=False)
    registry.promote(registry.register(small_bundle), "test")
    done = readmit("--version", env={"READMIT_REGISTRY": str(tmp_path / "reg")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"readmit {version('readmit')}", f"champion: {small_bundle.name} "
                                        f"(registry {tmp_path / 'reg'})"]  # fmt: skip


@pytest.mark.slow
def test_training_prints_step_lines_when_stderr_is_not_a_terminal(sample_csv: Path, tmp_path: Path) -> None:
    done = readmit("train", "--data", str(sample_csv), "--out", str(tmp_path), "--trees", "20", "--folds", "2")
    assert done.returncode == 0, done.stderr
    assert "final fit: 20 trees…" in done.stderr
    assert "baselines' grouped CV: 2 folds…" in done.stderr and "baseline grouped CV fold 2/2" in done.stderr
    assert "\r" not in done.stderr  # no bar redraws in a log
    assert json.loads(done.stdout)["version"]  # piped: the summary stays JSON


@pytest.mark.slow
def test_tune_says_trial_k_of_n(sample_csv: Path) -> None:
    from chalicelib.model.tune import tune

    lines: list[str] = []
    tune(sample_csv, folds=2, grid={"max_depth": [3], "eta": [0.3], "trees": [5, 10]}, progress=lines.append)
    assert [line for line in lines if line.startswith("trial")] == ["trial 1 of 2", "trial 2 of 2"]


@pytest.mark.slow
def test_evaluate_defaults_to_the_bundles_own_holdout(small_bundle: Path, sample_csv: Path) -> None:
    meta = json.loads((small_bundle / "model.json").read_text())
    done = readmit("evaluate", "--model", str(small_bundle), env={"READMIT_DATA": str(sample_csv)})
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    assert metrics["n"] == meta["summary"]["n"]  # exactly the patients training held out
    assert metrics["roc_auc"] == pytest.approx(meta["summary"]["roc_auc"], abs=1e-9)
    assert metrics["training_overlap"] == 0 and "holdout" in metrics["evaluated_on"]
    assert "WARNING" not in done.stderr


@pytest.mark.slow
def test_evaluate_warns_when_the_data_overlaps_the_training_patients(small_bundle: Path, sample_csv: Path) -> None:
    done = readmit("evaluate", "--model", str(small_bundle), "--data", str(sample_csv))
    assert done.returncode == 0, done.stderr
    overlap = json.loads(done.stdout)["training_overlap"]
    assert 0.7 < overlap < 0.9  # 80% of the patients trained it
    assert f"WARNING: {overlap:.1%} of these encounters belong to patients" in done.stderr


def test_summaries_are_aligned_text_on_a_terminal_and_json_with_the_flag(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import argparse

    from chalicelib.cli import common as cli

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    summary = {"version": "v1", "roc_auc": 0.681234, "registry": {"champion": "v1"}, "reasons": ["a", "b"]}
    cli.emit(argparse.Namespace(json=False), summary)
    assert capsys.readouterr().out.splitlines() == [
        "version   v1", "roc_auc   0.6812", "registry", "  champion  v1", "reasons   a, b",
    ]  # fmt: skip
    cli.emit(argparse.Namespace(json=True), summary)
    assert json.loads(capsys.readouterr().out) == summary


@pytest.mark.slow
def test_invoke_names_the_unset_variables_the_function_needs(capsys) -> None:  # type: ignore[no-untyped-def]
    from chalicelib.cli import main as cli

    cli.main(["invoke", "StartTrainingFunction", "--event", str(ROOT / "events" / "retrain_start_training.json")])
    err = capsys.readouterr().err
    assert "Left unset, so local defaults apply" not in err
    line = next(x for x in err.splitlines() if "unset here" in x)
    assert "StartTrainingFunction" in line and "needs them" in line and "--env NAME=VALUE" in line
    assert "READMIT_ARTIFACT_URI" in line
