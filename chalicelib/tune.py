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
from .train import DEFAULT_PARAMS, DEFAULT_TREES, MONOTONE_INCREASING, TrainConfig, grouped_folds, out_of_fold, prepare

# The serving budget bounds the search: single-row SHAP costs ~0.5 µs per tree plus O(leaves × depth²) per tree,
# so /predict with factors inside 1 ms allows at most ~200 trees of depth ≤ 5. (An earlier unbounded search,
# depth 4–6 with 300–500 trees, topped out at 0.6890 ± 0.0062: no better beyond noise, at 3–5× the latency.)
GRID: dict[str, list[Any]] = {
    "max_depth": [4, 5],
    "eta": [0.1, 0.15],
    "trees": [100, 150, 200],
}


def tune(
    data_path: Path, folds: int = 5, grid: dict[str, list[Any]] | None = None, progress: Callable[[str], None] = print
) -> str:
    grid = grid or GRID
    prep = prepare(read_table(data_path, require_target=True))
    cfg = TrainConfig(folds=folds)
    fold_ids = grouped_folds(prep.y, prep.patients, folds, cfg.seed)
    rows = []
    trials = list(itertools.product(*grid.values()))
    for trial, values in enumerate(trials, 1):
        progress(f"trial {trial} of {len(trials)}")
        params = {**DEFAULT_PARAMS, **dict(zip(grid, values, strict=True))}
        trees = int(params.pop("trees", DEFAULT_TREES))
        started = time.perf_counter()
        oof = out_of_fold(prep.X, prep.y, fold_ids, params, trees, cfg)
        per_fold = [roc_auc_score(prep.y[fold_ids == k], oof[fold_ids == k]) for k in range(folds)]
        rows.append((float(np.mean(per_fold)), float(np.std(per_fold)), dict(zip(grid, values, strict=True)), trees))
        mean, sd, chosen, _ = rows[-1]
        progress(f"{chosen} trees={trees}: AUC {mean:.4f} ± {sd:.4f} ({time.perf_counter() - started:.0f}s)")
    rows.sort(key=lambda r: -r[0])
    columns = [*(k for k in grid if k != "trees"), "trees"]
    lines = [
        "# Hyper-parameter search",
        "",
        f"{folds}-fold patient-grouped CV on {len(prep.y):,} cohort encounters (training data only), ranked by mean",
        "out-of-fold ROC-AUC. Fixed: "
        + ", ".join(f"`{k}={v}`" for k, v in DEFAULT_PARAMS.items() if k not in grid and k != "monotone_constraints")
        + f", monotone increasing in {', '.join(f'`{n}`' for n in MONOTONE_INCREASING)}.",
        "",
        "| rank | " + " | ".join(columns) + " | AUC (mean ± sd over folds) |",
        "|---|" + "---|" * len(columns) + "---|",
    ]
    for i, (mean, sd, params, trees) in enumerate(rows, 1):
        shown = {**params, "trees": trees}
        lines.append(f"| {i} | " + " | ".join(str(shown[k]) for k in columns) + f" | {mean:.4f} ± {sd:.4f} |")
    return "\n".join(lines) + "\n"
