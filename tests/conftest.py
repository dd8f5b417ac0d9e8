"""Shared fixtures: the real data set, small real samples of it, and trained bundles.

The data is never downloaded by tests: they use ``$READMIT_DATA`` (set by the Makefile to the provided
copy) or ``../shared/data/dataset_diabetes.zip``.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import settings

from chalicelib.data.dataset import DatasetNotFound, locate, open_text

# Property and contract fuzz tests draw the same examples on every run of the same code, so a build fails only when
# the code changes, never by the luck of a draw; HYPOTHESIS_PROFILE=explore draws fresh examples when hunting.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
os.environ.setdefault("READMIT_MLFLOW_TRACKING_URI", "off")  # session fixtures train too; test_tracking.py opts in

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the developer's .readmit folder or real AWS."""
    monkeypatch.setenv("READMIT_HOME", str(tmp_path_factory.mktemp("home")))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(var, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("READMIT_MLFLOW_TRACKING_URI", "off")  # tests track only when they ask (test_tracking.py)


@pytest.fixture(scope="session")
def data_path() -> Path:
    try:  # $READMIT_DATA, the user cache (filled by `readmit data`, which `make test` runs), ../shared; no download
        return locate(download=False)
    except DatasetNotFound as exc:
        pytest.fail(f"the UCI data set is needed: {exc}")


@pytest.fixture(scope="session")
def raw_frame(data_path: Path) -> pd.DataFrame:
    """The whole data set as strings, exactly as written."""
    with open_text(data_path) as fh:
        return pd.read_csv(fh, dtype=str, keep_default_na=False, na_filter=False)


@pytest.fixture(scope="session")
def sample_csv(raw_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every encounter of 6,000 random patients (about 8,500 rows): real data, small enough to train fast."""
    rng = np.random.default_rng(7)
    patients = rng.choice(raw_frame["patient_nbr"].unique(), size=6000, replace=False)
    sample = raw_frame[raw_frame["patient_nbr"].isin(patients)]
    path = tmp_path_factory.mktemp("data") / "sample.csv"
    sample.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def small_bundle(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (small) model: 3-fold grouped CV, 60 trees, on the sample."""
    from chalicelib.model.train import TrainConfig, train

    cfg = TrainConfig(n_estimators=60, folds=3, baselines=False, holdout_frac=0.2)
    return train(sample_csv, tmp_path_factory.mktemp("bundles"), cfg).bundle_dir


# ---- similar patients (issue #5) ----------------------------------------------------------------------------
SIMILAR_SALT = "similar-test-salt"  # index and queries must hash encounter ids alike


@pytest.fixture(scope="session")
def sample_table(sample_csv: Path):
    from chalicelib.data.tabular import read_table

    return read_table(sample_csv, require_target=True)


@pytest.fixture(scope="session")
def sample_index(sample_table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's labelled, in-cohort encounters, indexed with the local embedder (ids hashed with SIMILAR_SALT)."""
    from chalicelib.similar.embedding import LocalEmbedder
    from chalicelib.similar.indexing import index_rows, select, take
    from chalicelib.similar.numpy_store import NumpyStore

    folder = tmp_path_factory.mktemp("index")
    t = sample_table
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("READMIT_ID_SALT", SIMILAR_SALT)
        rows = select(t.cols, t.target).keep.nonzero()[0]
        index_rows(
            take(t.cols, rows),
            t.encounter_id[rows].tolist(),
            t.target[rows].tolist(),
            LocalEmbedder(),
            NumpyStore(folder),
        )
    return folder


@pytest.fixture(scope="session")
def model_tarball(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """model.tar.gz exactly as SageMaker packs SM_MODEL_DIR after our entry point (sagemaker_train) ran."""
    import io
    import json
    import tarfile

    from chalicelib.model import sagemaker_train

    tmp = tmp_path_factory.mktemp("sm")
    (tmp / "train").mkdir()
    (tmp / "train" / "data.csv").write_bytes(sample_csv.read_bytes())
    hps = {"n_estimators": 40, "folds": 3, "baselines": "false", "holdout_frac": 0.2}
    env = {
        "SM_CHANNEL_TRAIN": str(tmp / "train"),
        "SM_MODEL_DIR": str(tmp / "model"),
        "SM_OUTPUT_DATA_DIR": str(tmp / "out"),
        "SM_HPS": json.dumps(hps),
    }
    sagemaker_train.main(env)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for item in sorted((tmp / "model").rglob("*")):
            tar.add(item, arcname=str(item.relative_to(tmp / "model")))
    return buf.getvalue()


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The service log's lines, formatted as they are written (Powertools' JSON), from a handler of our own: the
    logger's stdout handler holds the stream it found at import, which capsys/capfd do not replace."""
    from chalicelib.core import telemetry

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(telemetry.logger.registered_formatter)
    logger = logging.getLogger(telemetry.logger.name)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole session (Playwright's sync API allows one running instance per thread:
    a second, from a fixture defined twice, fails with "Sync API inside the asyncio loop")."""
    from tests.test_browser_e2e import CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()
