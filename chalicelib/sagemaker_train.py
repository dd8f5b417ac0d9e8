"""SageMaker script-mode entry point: the same `train()` as `readmit train`, wired to SageMaker's folders.

SageMaker runs ``python chalicelib/sagemaker_train.py`` with ``SM_CHANNEL_TRAIN`` (input files),
``SM_MODEL_DIR`` (packed into model.tar.gz) and ``SM_OUTPUT_DATA_DIR``; hyper-parameters arrive in
``SM_HPS`` as JSON. The bundle is written flat into the model dir so the registry can take it as is.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `chalicelib` importable from the source dir
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chalicelib.train import TrainConfig, train

DATA_SUFFIXES = (".zip", ".csv", ".gz")


def find_input(channel: Path) -> Path:
    files = sorted(p for p in channel.rglob("*") if p.is_file() and p.name.lower().endswith(DATA_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no .zip/.csv/.csv.gz in the training channel {channel}")
    return files[0]


def main(env: Mapping[str, str] = os.environ) -> Path:
    channel = Path(env.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    model_dir = Path(env.get("SM_MODEL_DIR", "/opt/ml/model"))
    output_dir = Path(env.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    hps = json.loads(env.get("SM_HPS", "{}") or "{}")
    cfg = TrainConfig(
        n_estimators=int(hps.get("n_estimators", TrainConfig.n_estimators)),
        folds=int(hps.get("folds", TrainConfig.folds)),
        holdout_frac=float(hps.get("holdout_frac", 0.0)),
        baselines=str(hps.get("baselines", "true")).lower() == "true",
    )
    staging = output_dir / "bundles"
    result = train(find_input(channel), staging, cfg, progress=lambda m: print(m, flush=True))
    model_dir.mkdir(parents=True, exist_ok=True)
    for item in result.bundle_dir.iterdir():
        target = model_dir / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    (output_dir / "summary.json").write_text(json.dumps({"version": result.version, **result.meta["summary"]}))
    # SageMaker picks metrics from the log with regexes defined on the training job.
    print(f"readmit-metric roc_auc={result.meta['summary']['roc_auc']:.5f} ece={result.meta['summary']['ece']:.5f}")
    return model_dir


if __name__ == "__main__":
    main()
