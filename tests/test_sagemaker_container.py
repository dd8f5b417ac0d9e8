"""The SageMaker training container, emulated (issue #14 items 1 and 9; no Docker here).

SageMaker runs our image as ``docker run IMAGE train`` with /opt/ml mounted and no sagemaker-training toolkit
(https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-algo-dockerfile.html), so these tests run
the image's ENTRYPOINT + ``train`` in a subprocess under the Python named by deploy/training/Dockerfile's FROM line
(.tools/training, built by `make training-env` through the same lock), with a temp dir laid out like /opt/ml
(https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-algo-running-container.html): string
hyperparameters in input/config/hyperparameters.json, the channel config, a real sample of the UCI data in
input/data/train/; and they read model/ and output/failure as SageMaker would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from chalicelib.data.tabular import read_table
from chalicelib.lifecycle import retrain
from chalicelib.model import sagemaker_train
from chalicelib.model.bundle import ModelBundle
from chalicelib.model.train import holdout_split, prepare

pytestmark = pytest.mark.slow  # runs the SageMaker entry point, training, in the image's Python

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "training" / "Dockerfile"
TRAINING_ENV_PYTHON = ROOT / ".tools" / "training" / "bin" / "python"
# The MetricDefinitions regexes match this line; its format is a contract with the training job definition.
METRIC_LINE = re.compile(r"^readmit-metric roc_auc=(0\.\d{5}|1\.00000) ece=(\d\.\d{5})$", flags=re.MULTILINE)
SMALL = {"n_estimators": "20", "folds": "2", "baselines": "false", "holdout_frac": "0.25"}  # a few seconds
SEED_A, SEED_B = 11, 12345


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [
        (m.group(1).upper(), m.group(2).strip())
        for m in re.finditer(r"^(\w+)\s+(.*)$", text, flags=re.MULTILINE)
        if not m.group(0).startswith("#")
    ]


def image_python() -> tuple[int, int]:
    (base,) = [arg for op, arg in dockerfile_instructions() if op == "FROM"]
    match = re.fullmatch(r"public\.ecr\.aws/docker/library/python:(\d+)\.(\d+)-slim", base)
    assert match, base
    return int(match.group(1)), int(match.group(2))


def requires_python() -> tuple[int, int]:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec)
    assert match, spec
    return int(match.group(1)), int(match.group(2))


@pytest.fixture(scope="module")
def image_interpreter() -> Path:
    """The container test env, whose Python must be the image's."""
    assert TRAINING_ENV_PYTHON.exists(), "run `make training-env` (make test does)"
    done = subprocess.run(
        [TRAINING_ENV_PYTHON, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True
    )
    assert tuple(map(int, done.stdout.split())) == image_python()
    return TRAINING_ENV_PYTHON


def ml_layout(root: Path, data: Path, hyperparameters: dict[str, str]) -> Path:
    """A directory laid out as SageMaker lays out /opt/ml for a File-mode job with one `train` channel."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    channel = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
    (config / "inputdataconfig.json").write_text(json.dumps({"train": channel}))
    (root / "input" / "data" / "train").mkdir(parents=True)
    shutil.copy(data, root / "input" / "data" / "train" / "encounters.csv")
    (root / "model").mkdir()
    (root / "output").mkdir()
    return root


def container_env(**extra: str) -> dict[str, str]:
    """The process environment of the image: no toolkit SM_* variables, no PYTHONPATH, none of ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SM_", "READMIT_", "PYTHON")) and k not in {"MPLBACKEND", "VIRTUAL_ENV"}
    }
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}, **extra)  # the Dockerfile's ENV
    return env


def workdir(tmp: Path) -> Path:
    """The image's WORKDIR: an empty folder (chalicelib is installed, not found through the working directory)."""
    (path,) = [arg for op, arg in dockerfile_instructions() if op == "WORKDIR"]
    assert path == "/opt/program"
    folder = tmp / "program"
    folder.mkdir(exist_ok=True)
    return folder


def run_image(python: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """`docker run IMAGE train`: ENTRYPOINT + "train", in WORKDIR, with /opt/ml at ``root`` (READMIT_ML_ROOT)."""
    (entrypoint,) = [json.loads(arg) for op, arg in dockerfile_instructions() if op == "ENTRYPOINT"]
    assert entrypoint[0] == "python"
    return subprocess.run(
        [python, *entrypoint[1:], "train"],
        cwd=workdir(root.parent),
        env=container_env(READMIT_ML_ROOT=str(root)),
        capture_output=True,
        text=True,
        timeout=300,
    )


@dataclass
class Job:
    root: Path
    done: subprocess.CompletedProcess[str]

    @property
    def meta(self) -> dict:
        return json.loads((self.root / "model" / "model.json").read_text())


@pytest.fixture(scope="module")
def jobs(image_interpreter: Path, sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Job]:
    """Two training jobs on the same data, differing only in the seed hyperparameter."""
    out = {}
    for seed in (SEED_A, SEED_B):
        root = ml_layout(tmp_path_factory.mktemp(f"job{seed}") / "ml", sample_csv, {**SMALL, "seed": str(seed)})
        out[seed] = Job(root, run_image(image_interpreter, root))
    return out


@pytest.fixture(scope="module")
def sample_patients(sample_csv: Path) -> np.ndarray:
    return prepare(read_table(sample_csv, require_target=True)).patients


# ---- item 1: the image's Python ------------------------------------------------------------------------------
def test_the_image_python_is_the_lambda_runtime_python_and_meets_requires_python() -> None:
    image = image_python()
    assert image >= requires_python() == sagemaker_train.REQUIRES_PYTHON
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^LAMBDA_PYTHON \?= {image[0]}\.{image[1]}$", makefile, flags=re.MULTILINE)
    runtimes = set(re.findall(r"^\s+Runtime: (\S+)", (ROOT / "template.yaml").read_text(), flags=re.MULTILINE))
    assert runtimes == {f"python{image[0]}.{image[1]}"}


def test_the_image_enters_the_entry_point_with_code_and_dependencies_baked_in() -> None:
    ops = dockerfile_instructions()
    (entrypoint,) = [json.loads(arg) for op, arg in ops if op == "ENTRYPOINT"]  # exec form: Python is PID 1
    assert entrypoint == ["python", "-m", "chalicelib.model.sagemaker_train"]
    assert [arg for op, arg in ops if op == "COPY" and "chalicelib" in arg] == ["chalicelib /tmp/readmit/chalicelib"]
    (install,) = [arg for op, arg in ops if op == "RUN" and "pip install" in arg]
    assert '"/tmp/readmit[train]"' in install and "--constraint /tmp/readmit/constraints.txt" in install
    assert not [arg for op, arg in ops if op == "ENV" and "PYTHONPATH" in arg]  # run_image() relies on it


def test_an_image_with_too_old_a_python_fails_the_job_with_a_reason(sample_csv: Path, tmp_path: Path) -> None:
    """The old default image ran Python 3.9, where importing the entry point raised deep inside the training
    stack (dataclass slots) and SageMaker reported no reason. Now the job fails saying which Python it needs."""
    old = sorted(Path("/root/.pyenv/versions").glob("3.9.*/bin/python"))
    if not old:
        pytest.skip("no Python 3.9 here (pyenv)")
    root = ml_layout(tmp_path / "ml", sample_csv, {**SMALL, "seed": "1"})
    done = subprocess.run(
        [old[-1], "-m", "chalicelib.model.sagemaker_train", "train"],
        cwd=ROOT,  # as a framework image would have chalicelib: in the working directory
        env=container_env(READMIT_ML_ROOT=str(root)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    failure = (root / "output" / "failure").read_text()
    assert "needs Python >= 3.11" in failure and "Python 3.9." in failure
    assert "Traceback" not in done.stderr


# ---- the container contract ----------------------------------------------------------------------------------
def test_the_job_writes_a_loadable_bundle_and_the_metric_line(jobs: dict[int, Job]) -> None:
    job = jobs[SEED_A]
    assert job.done.returncode == 0, job.done.stderr[-3000:]
    assert not (job.root / "output" / "failure").exists()
    bundle = ModelBundle.load(job.root / "model")  # trained under the image's Python, served under this one
    summary = json.loads((job.root / "output" / "data" / "summary.json").read_text())
    assert summary["version"] == bundle.version and summary["seed"] == SEED_A
    (metric,) = METRIC_LINE.findall(job.done.stdout)
    assert float(metric[0]) == pytest.approx(job.meta["summary"]["roc_auc"], abs=1e-5)
    assert job.meta["n_estimators"] == int(SMALL["n_estimators"]) and job.meta["cv"]["folds"] == int(SMALL["folds"])


def test_bad_hyperparameters_fail_the_job_naming_each(
    image_interpreter: Path, sample_csv: Path, tmp_path: Path
) -> None:
    bad = {"n_estimators": "many", "seed": "1.5", "sead": "3"}  # not a number, not an integer, a typo
    root = ml_layout(tmp_path / "ml", sample_csv, {**SMALL, **bad})
    done = run_image(image_interpreter, root)
    assert done.returncode != 0
    failure = (root / "output" / "failure").read_text()
    for named in (
        "bad hyperparameter n_estimators='many'",
        "bad hyperparameter seed='1.5'",
        "unknown hyperparameter 'sead'",
    ):
        assert named in failure, failure
    assert len(failure) <= 1024 and not any((root / "model").iterdir())


def test_the_toolkit_variables_still_work(image_interpreter: Path, sample_csv: Path, tmp_path: Path) -> None:
    """A framework image's toolkit runs the script with SM_* variables (SM_HPS as JSON values) and passes the
    hyperparameters again as arguments."""
    channel, model, data, output = (tmp_path / n for n in ("channel", "model", "data", "output"))
    channel.mkdir()
    shutil.copy(sample_csv, channel / "encounters.csv")
    env = {
        "SM_CHANNEL_TRAIN": str(channel),
        "SM_MODEL_DIR": str(model),
        "SM_OUTPUT_DATA_DIR": str(data),
        "SM_OUTPUT_DIR": str(output),
        "SM_HPS": json.dumps({"n_estimators": 20, "folds": 2, "baselines": False, "holdout_frac": 0.2, "seed": 7}),
    }
    script = ROOT / "chalicelib" / "model" / "sagemaker_train.py"
    args = ["--n_estimators", "20", "--seed", "7"]
    common = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 300}
    done = subprocess.run([image_interpreter, script, *args], env=container_env(**env), **common)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ModelBundle.load(model).meta["cv"]["seed"] == 7
    assert json.loads((data / "summary.json").read_text())["holdout_frac"] == 0.2
    assert METRIC_LINE.search(done.stdout)

    env["SM_HPS"] = json.dumps({"folds": 1})
    done = subprocess.run([image_interpreter, script], env=container_env(**env), **common)
    assert done.returncode != 0 and "folds=1" in (output / "failure").read_text()


# ---- item 9: the seed -----------------------------------------------------------------------------------------
def held_out(patients: np.ndarray, meta: dict) -> set:
    """The patients a bundle says it held out (its holdout_frac and seed, through train's own split)."""
    return set(patients[holdout_split(patients, meta["holdout_frac"], meta["cv"]["seed"])].tolist())


def test_the_seed_hyperparameter_moves_the_holdout(jobs: dict[int, Job], sample_patients: np.ndarray) -> None:
    metas = {seed: job.meta for seed, job in jobs.items()}
    assert {seed: meta["cv"]["seed"] for seed, meta in metas.items()} == {SEED_A: SEED_A, SEED_B: SEED_B}
    for meta in metas.values():  # the recorded split is the one the model was fitted without
        assert meta["data"]["train_rows"] == len(sample_patients) - int(
            holdout_split(sample_patients, meta["holdout_frac"], meta["cv"]["seed"]).sum()
        )
    assert held_out(sample_patients, metas[SEED_A]) != held_out(sample_patients, metas[SEED_B])


@pytest.mark.parametrize("seed", [SEED_A, SEED_B])
def test_the_gate_scores_no_patient_the_model_trained_on(
    seed: int, jobs: dict[int, Job], sample_csv: Path, sample_patients: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evaluation step rebuilds the evaluation set with the run's eval_frac and seed (the hyperparameters the
    pipeline sent); it must be exactly the holdout of the model that job trained."""
    meta = jobs[seed].meta
    trained = set(sample_patients.tolist()) - held_out(sample_patients, meta)
    drawn: list[np.ndarray] = []

    def recording_split(patients: np.ndarray, frac: float, split_seed: int) -> np.ndarray:
        mask = holdout_split(patients, frac, split_seed)
        drawn.append(patients[mask])
        return mask

    monkeypatch.setattr(retrain, "holdout_split", recording_split)
    evalset = retrain.evaluation_set(sample_csv, float(SMALL["holdout_frac"]), seed)
    (scored,) = drawn
    assert not set(scored.tolist()) & trained
    assert len(evalset.y) == meta["summary"]["n"]  # the very encounters the job evaluated its model on
