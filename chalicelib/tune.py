"""Hyper-parameter search by patient-grouped CV on training data only (`readmit tune`).

Writes a Markdown report; the chosen parameters are then pinned as ``train.DEFAULT_PARAMS``, so that
`readmit train` stays inside its time budget and every retrain is reproducible.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from .tabular import read_table
from .train import DEFAULT_PARAMS, MONOTONE_INCREASING, TrainConfig, grouped_folds, out_of_fold, prepare

GRID: dict[str, list[Any]] = {
    "max_depth": [4, 5, 6],
    "min_child_weight": [20, 50],
    "colsample_bytree": [0.5, 0.8],
}
TREES = {4: 500, 5: 400, 6: 300}  # fewer, deeper trees keep each candidate's cost comparable


def tune(
    data_path: Path, folds: int = 5, grid: dict[str, list[Any]] | None = None, progress: Callable[[str], None] = print
) -> str:
    grid = grid or GRID
    prep = prepare(read_table(data_path, require_target=True))
    cfg = TrainConfig(folds=folds)
    fold_ids = grouped_folds(prep.y, prep.patients, folds, cfg.seed)
    rows = []
    for values in itertools.product(*grid.values()):
        params = {**DEFAULT_PARAMS, **dict(zip(grid, values, strict=True))}
        trees = TREES.get(params["max_depth"], 400)
        started = time.perf_counter()
        oof = out_of_fold(prep.X, prep.y, fold_ids, params, trees, cfg)
        per_fold = [roc_auc_score(prep.y[fold_ids == k], oof[fold_ids == k]) for k in range(folds)]
        rows.append((float(np.mean(per_fold)), float(np.std(per_fold)), dict(zip(grid, values, strict=True)), trees))
        mean, sd, chosen, _ = rows[-1]
        progress(f"{chosen} trees={trees}: AUC {mean:.4f} ± {sd:.4f} ({time.perf_counter() - started:.0f}s)")
    rows.sort(key=lambda r: -r[0])
    lines = [
        "# Hyper-parameter search",
        "",
        f"{folds}-fold patient-grouped CV on {len(prep.y):,} cohort encounters (training data only), ranked by mean",
        "out-of-fold ROC-AUC. Fixed: "
        + ", ".join(f"`{k}={v}`" for k, v in DEFAULT_PARAMS.items() if k not in grid and k != "monotone_constraints")
        + f", monotone increasing in {', '.join(f'`{n}`' for n in MONOTONE_INCREASING)}.",
        "",
        "| rank | " + " | ".join(grid) + " | trees | AUC (mean ± sd over folds) |",
        "|---|" + "---|" * len(grid) + "---|---|",
    ]
    for i, (mean, sd, params, trees) in enumerate(rows, 1):
        lines.append(f"| {i} | " + " | ".join(str(params[k]) for k in grid) + f" | {trees} | {mean:.4f} ± {sd:.4f} |")
    return "\n".join(lines) + "\n"
