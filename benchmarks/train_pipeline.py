"""Times the full training pipeline and batch prediction on the real data; prints the figures.

    .venv/bin/python benchmarks/train_pipeline.py [--data PATH] [--holdout-frac 0.2]

Targets (issue #2): pipeline ≤ 60 s; batch predict of all 101,766 encounters ≤ 3 s; holdout ROC-AUC ≥ 0.69,
ECE ≤ 0.015, Brier ≤ 0.098.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from chalicelib.batch.local import predict_file
from chalicelib.data.dataset import locate
from chalicelib.model.bundle import ModelBundle
from chalicelib.model.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    parser.add_argument("--holdout-frac", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    args = parser.parse_args()
    data = locate(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = train(data, Path(tmp), TrainConfig(holdout_frac=args.holdout_frac, seed=args.seed))
        train_s = time.perf_counter() - started
        model = ModelBundle.load(result.bundle_dir)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            counts = predict_file(model, data, Path(tmp) / "predictions.csv")
            timings.append(time.perf_counter() - started)
    s = result.meta["summary"]
    print(f"evaluation: {result.meta['evaluation']} ({s['n']:,} encounters), seed {args.seed}")
    print(f"ROC-AUC {s['roc_auc']:.4f}  PR-AUC {s['pr_auc']:.4f}  Brier {s['brier']:.4f}  ECE {s['ece']:.4f}")
    for name, m in result.metrics[result.meta["evaluation"]]["models"].items():
        print(f"  {name:16s} AUC {m['roc_auc']:.4f}  Brier {m['brier']:.4f}  ECE {m['ece']:.4f}")
    print(f"training pipeline (load → features → CV → fit → calibrate → evaluate → card): {train_s:.1f} s")
    print(
        f"batch predict of {sum(counts.values()):,} rows (read, validate, features, score, write CSV): "
        f"best {min(timings):.2f} s, runs {', '.join(f'{t:.2f}' for t in timings)}"
    )


if __name__ == "__main__":
    main()
