"""MLflow experiment tracking (issue #15): a training run logs its configuration, metrics, model card, plots and data
fingerprint; the bundle and the registry version name the run and the run names the version; tracking that cannot
work (MLflow missing, a server that does not answer) costs one warning and never the training; the API does not
import MLflow.

MLflow's import and a new SQLite store's migrations take seconds: one module-scoped training run against one store
serves the logging tests, and only the tests that need MLflow import it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from chalicelib.core.storage import open_storage
from chalicelib.data.dataset import content_sha256
from chalicelib.model import sagemaker_train, tracking
from chalicelib.model.bundle import ModelBundle
from chalicelib.model.train import TrainConfig, train
from chalicelib.registry.registry import Registry

pytestmark = pytest.mark.slow  # trains with MLflow tracking and imports MLflow in subprocesses (a minute together)

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"n_estimators": 20, "folds": 3, "baselines": False, "holdout_frac": 0.2}
PACKAGE_ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/readmit-models/1"


@pytest.fixture(scope="module")
def tracked(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory):
    """One small training run tracked in a fresh SQLite store, through the environment as `readmit train` reads it
    (READMIT_MLFLOW_TRACKING_URI unset: the default store under READMIT_HOME)."""
    home = tmp_path_factory.mktemp("tracked-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("READMIT_HOME", str(home))
        mp.delenv(tracking.ENV_TRACKING_URI, raising=False)
        mp.delenv(tracking.ENV_EXPERIMENT, raising=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train(sample_csv, home / "bundles", TrainConfig(**SMALL))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home.resolve() / 'mlflow.db'}")
    return home, result, client, [w for w in caught if issubclass(w.category, tracking.TrackingWarning)]


def test_settings_default_to_a_local_sqlite_store_and_off_means_off(tmp_path: Path) -> None:
    env = {"READMIT_HOME": str(tmp_path)}
    local = tracking.TrackingSettings.from_env(env)
    assert local.uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert local.artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    for off in ("off", "", "OFF"):
        assert not tracking.TrackingSettings.from_env({**env, tracking.ENV_TRACKING_URI: off}).enabled
    arn = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/readmit"
    remote = tracking.TrackingSettings.from_env({**env, tracking.ENV_TRACKING_URI: arn})
    assert (remote.uri, remote.artifact_location) == (arn, None)  # the server chooses where artifacts go
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # off is a choice, not a problem: no warning, no run
        assert tracking.open_run("train", tracking.TrackingSettings(uri=None)).run_id is None


def test_a_sagemaker_job_tracks_only_where_its_environment_says() -> None:
    arn = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/readmit"
    settings, tags = sagemaker_train.tracking_config({})
    assert not settings.enabled  # no tracking server given: no local store inside the container either
    settings, tags = sagemaker_train.tracking_config(
        {tracking.ENV_TRACKING_URI: arn, sagemaker_train.ENV_JOB_NAME: "readmit-drift-exec1"}
    )
    assert settings.uri == arn
    assert tags == {tracking.TAG_SOURCE: "sagemaker", "sagemaker.training_job": "readmit-drift-exec1"}


def test_training_logs_params_metrics_card_plots_and_data_fingerprint(tracked, sample_csv: Path) -> None:
    home, result, client, warned = tracked
    assert warned == []
    ref = result.meta[tracking.META_KEY]
    run = client.get_run(ref["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == result.version
    assert run.info.artifact_uri.startswith((home.resolve() / "mlartifacts").as_uri())

    params = run.data.params
    assert params["n_estimators"] == "20" and params["folds"] == "3" and params["holdout_frac"] == "0.2"
    assert params["params.max_depth"] == str(TrainConfig().params["max_depth"])
    assert params["calibration.method"] == result.meta["calibration"]["method"]
    sha = content_sha256(sample_csv)
    assert params["data.sha256"] == sha == run.data.tags["data.sha256"]
    assert params["data.rows"] == str(result.meta["data"]["rows"])
    dataset = run.inputs.dataset_inputs[0].dataset
    assert dataset.digest == sha[:36] and json.loads(dataset.profile)["num_rows"] == result.meta["data"]["rows"]

    metrics = run.data.metrics
    holdout = result.metrics["holdout"]["models"]["production"]
    for measure in ("roc_auc", "brier", "ece"):
        assert metrics[f"holdout.{measure}"] == pytest.approx(holdout[measure])
        low, high = holdout["intervals"][measure]
        assert metrics[f"holdout.{measure}_low"] == pytest.approx(low)
        assert metrics[f"holdout.{measure}_high"] == pytest.approx(high)
        assert low <= metrics[f"holdout.{measure}"] <= high
    assert metrics["cv.roc_auc"] == pytest.approx(result.metrics["cv"]["models"]["production"]["roc_auc"])
    assert 0.5 < metrics["cv_auc_mean"] < 1 and 0 < metrics["cv_auc_sd"] < 0.1  # three folds of real data

    assert run.data.tags[tracking.TAG_VERSION] == result.version
    assert run.data.tags[tracking.TAG_SOURCE] == "train"
    assert run.data.tags[tracking.TAG_CODE_VERSION] == result.meta["code_version"]
    top = {a.path for a in client.list_artifacts(ref["run_id"])}
    assert {"model_card.md", "metrics.json", "model.json", "plots"} <= top
    assert "data_report.json" not in top  # it quotes invalid rows
    plots = {Path(a.path).name for a in client.list_artifacts(ref["run_id"], "plots")}
    assert plots == {p.name for p in (result.bundle_dir / "plots").iterdir()} and "calibration.png" in plots
    card = Path(client.download_artifacts(ref["run_id"], "model_card.md", str(home / "download")))
    assert card.read_text() == (result.bundle_dir / "model_card.md").read_text()


def test_bundle_registry_version_and_run_reference_each_other(tracked, tmp_path: Path) -> None:
    home, result, client, _ = tracked
    ref = result.meta[tracking.META_KEY]
    assert ref["tracking_uri"] == f"sqlite:///{home.resolve() / 'mlflow.db'}"
    assert ModelBundle.load(result.bundle_dir).meta[tracking.META_KEY] == ref  # in model.json, under the manifest

    registry = Registry(open_storage(str(tmp_path / "registry")))
    version = registry.register(result.bundle_dir)
    here = {"READMIT_HOME": str(home)}  # tracking on where the version is registered (the default)
    run_id = tracking.record_registration(registry, version, result.meta, model_package_arn=PACKAGE_ARN, env=here)
    assert run_id == ref["run_id"]
    assert registry.metadata(version)["mlflow_run_id"] == ref["run_id"]
    tags = client.get_run(ref["run_id"]).data.tags
    assert tags[tracking.TAG_REGISTRY_VERSION] == version
    assert tags[tracking.TAG_MODEL_PACKAGE_ARN] == PACKAGE_ARN
    assert tags[tracking.TAG_REGISTRY_URI] == registry.storage.uri


def test_tuning_trials_are_nested_runs(tracked) -> None:
    home, _, client, _ = tracked
    store = tracking.TrackingSettings.from_env({"READMIT_HOME": str(home)})
    with tracking.run("tune", store) as parent:
        child = parent.child("trial 1", {"max_depth": 4, "eta": 0.1}, {"cv_auc_mean": 0.68, "cv_auc_sd": 0.004})
    trial = client.get_run(child)
    assert trial.data.tags[tracking.TAG_PARENT] == parent.run_id
    assert trial.data.params == {"max_depth": "4", "eta": "0.1"}
    assert trial.data.metrics == {"cv_auc_mean": 0.68, "cv_auc_sd": 0.004}
    assert client.get_run(parent.run_id).info.status == "FINISHED"


def test_an_unreachable_server_costs_one_warning_not_the_training(
    sample_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(tracking.ENV_TRACKING_URI, f"http://127.0.0.1:{port}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(sample_csv, tmp_path, TrainConfig(n_estimators=10, folds=2, baselines=False))
    warned = [w for w in caught if issubclass(w.category, tracking.TrackingWarning)]
    assert len(warned) == 1 and f"127.0.0.1:{port}" in str(warned[0].message)
    assert tracking.META_KEY not in result.meta
    assert ModelBundle.load(result.bundle_dir).version == result.version


def test_training_without_mlflow_installed_warns_once_and_imports_nothing(sample_csv: Path, tmp_path: Path) -> None:
    """A fresh process where `import mlflow` fails (as in an environment without the train extra's MLflow)."""
    script = textwrap.dedent(
        f"""
        import sys, warnings
        sys.modules["mlflow"] = None  # import mlflow raises ImportError
        from pathlib import Path
        from chalicelib.model import tracking
        from chalicelib.model.train import TrainConfig, train
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train(Path({str(sample_csv)!r}), Path({str(tmp_path)!r}), TrainConfig(n_estimators=5, folds=2,
                baselines=False))
        warned = [str(w.message) for w in caught if issubclass(w.category, tracking.TrackingWarning)]
        assert len(warned) == 1 and "not installed" in warned[0], warned
        assert tracking.META_KEY not in result.meta
        """
    )
    env = {k: v for k, v in os.environ.items() if k != tracking.ENV_TRACKING_URI}
    env["READMIT_HOME"] = str(tmp_path / "home")
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "home" / "mlflow.db").exists()


def test_the_api_and_the_training_code_import_no_mlflow() -> None:
    """MLflow stays on the training side and loads only when a run starts: importing the API (what the Lambda
    imports), the training module or the tracking adapter itself must not import it."""
    code = (
        "import sys, app; assert 'mlflow' not in sys.modules, 'app'; "
        "import chalicelib.model.train, chalicelib.model.tracking, chalicelib.model.sagemaker_train; "
        "assert 'mlflow' not in sys.modules, 'training modules'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
