"""`readmit predict` on a whole file: the whole process (best and median of N runs), then its phases in-process.

    .venv/bin/python benchmarks/predict_whole_file.py [--model DIR|URI] [--data PATH] [--runs 5] [--compare TREE]

``--compare`` times another checkout's ``chalicelib`` interleaved with this one (e.g. a copy of the old code), so
both see the same load on a shared machine; CPU time (user + sys, the model check's child included) is printed
beside wall time because it moves less with other people's load.

Reader: pandas' C CSV parser (``tabular.read_table``, fed the bytes), already a training-side dependency. Measured
here on the 18 MB file: ~0.25-0.32 s, against ~1.06 s for the csv module into columns. pyarrow is not installed;
its reader might save another ~0.2 s (an estimate, not measured here), not worth a new dependency. The serving
Lambda never imports ``tabular`` (no pandas there). Validation runs once per distinct value per column, integer
columns in numpy; history and features are numpy over the whole file; the model is one XGBoost call.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def whole_process(model: str, data: Path, runs: int, tree: Path = ROOT) -> tuple[list[float], list[float]]:
    """(wall, CPU user+sys) seconds of each ``readmit predict`` process, as a user runs it (bytecode caches
    allowed, as in a normal install). CPU time is printed too: on a shared machine it moves less than wall time.
    ``tree``: the checkout whose ``chalicelib`` runs (another one to compare with an older version)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    command = [
        sys.executable,
        "-m",
        "chalicelib.cli.main",
    ]  # what .venv/bin/readmit runs, with ``tree`` first on the path
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run(
                [*command, "predict", "--model", model, "--data", str(data), "--out", f"{tmp}/p.csv"],
                capture_output=True,
                text=True,
                env=env,
                cwd=tree,
            )
            walls.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if done.returncode:
                raise SystemExit(done.stderr)
    return walls, cpus


def phases(model_uri: str, data: Path) -> dict[str, float]:
    """Seconds per phase of one in-process run (imports and the model check excluded; they are start-up)."""
    from chalicelib.batch.local import import_xgboost_lean, predict_file

    import_xgboost_lean()
    from chalicelib.data.tabular import read_table
    from chalicelib.features.encoding import encode
    from chalicelib.features.history import history_in_file
    from chalicelib.registry.loader import load_model

    model = load_model(model_uri)
    t0 = time.perf_counter()
    table = read_table(data, require_target=False)
    t1 = time.perf_counter()
    history = history_in_file(table.patient_nbr.tolist(), table.encounter_id.tolist(), table.cols)
    X = encode(table.cols, history)
    t2 = time.perf_counter()
    risk = model.risk(X)
    model.tiers(risk)
    t3 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # the whole of predict_file again: what is left over is the write
        predict_file(model, data, Path(tmp) / "p.csv")
    t4 = time.perf_counter()
    write = (t4 - t3) - (t3 - t0)
    return {"read+validate": t1 - t0, "encode (history + features)": t2 - t1, "model": t3 - t2, "write": write}


def main() -> None:
    from chalicelib.core import settings
    from chalicelib.data.dataset import locate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="bundle folder or registry URI (default: the local registry's champion)")
    parser.add_argument("--data", help="UCI csv or zip (default: the data set `readmit data` finds)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="another checkout to time alongside (runs interleaved)")
    args = parser.parse_args()
    model = args.model or settings.registry_uri()
    model = str(Path(model).resolve()) if Path(model).exists() else model  # the runs' working folder varies
    data = locate(args.data).resolve()
    trees = {"this tree": ROOT, **({f"{args.compare}": args.compare} if args.compare else {})}
    runs: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in trees}
    for _ in range(args.runs):  # interleaved, so both see the same load on a shared machine
        for name, tree in trees.items():
            wall, cpu = whole_process(model, data, 1, tree)
            runs[name][0].extend(wall)
            runs[name][1].extend(cpu)
    load = os.getloadavg()[0]
    print(f"readmit predict on {data.name}, {args.runs} runs as a whole process (subprocess; load average {load:.1f}):")
    for name, (walls, cpus) in runs.items():
        print(
            f"  {name}: wall best {min(walls):.2f} s, median {statistics.median(walls):.2f} s;"
            f" CPU best {min(cpus):.2f} s, median {statistics.median(cpus):.2f} s  (target: wall ≤ 2 s)"
        )
    print("phases (one in-process run; start-up = whole process − their sum):")
    for name, seconds in phases(model, data).items():
        print(f"  {name:<28} {seconds:.2f} s")
    print("reader: pandas C parser (pyarrow not installed; see this file's docstring for why)")


if __name__ == "__main__":
    main()
