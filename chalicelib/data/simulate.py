"""A drift simulator: a sample of real encounters, optionally shifted the way a population changes
(older patients, more prior admissions), to show end to end that monitoring notices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chalicelib.data.dataset import open_text
from chalicelib.data.schema import AGE_BANDS

SHIFTS = ("none", "older", "utilisation")


def shift_frame(frame: pd.DataFrame, shift: str, rng: np.random.Generator) -> pd.DataFrame:
    out = frame.copy()
    if shift == "older":
        # each patient moves up one or two age bands (capped at [90-100))
        index = out["age"].map({band: i for i, band in enumerate(AGE_BANDS)}).to_numpy()
        index = np.minimum(index + rng.integers(1, 3, size=len(out)), len(AGE_BANDS) - 1)
        out["age"] = [AGE_BANDS[i] for i in index]
    elif shift == "utilisation":
        out["number_inpatient"] = (out["number_inpatient"].astype(int) + rng.integers(1, 4, size=len(out))).astype(str)
        out["number_emergency"] = (out["number_emergency"].astype(int) + rng.integers(0, 3, size=len(out))).astype(str)
    elif shift != "none":
        raise ValueError(f"shift must be one of {SHIFTS}")
    return out


def shift_file(data: Path, out: Path, shift: str, rows: int = 5000, seed: int = 0) -> int:
    with open_text(data) as fh:
        frame = pd.read_csv(fh, dtype=str, keep_default_na=False, na_filter=False)
    rng = np.random.default_rng(seed)
    # whole patients, so history features (earlier encounters in the same file) keep their distribution
    patients = np.asarray(frame["patient_nbr"].unique(), dtype=object)  # a numpy array: shuffled in place, safely
    rng.shuffle(patients)
    per_patient = len(frame) / len(patients)
    chosen = patients[: max(1, int(rows / per_patient))]
    sample = frame[frame["patient_nbr"].isin(chosen)]
    shifted = shift_frame(sample, shift, rng)
    out.parent.mkdir(parents=True, exist_ok=True)
    shifted.to_csv(out, index=False)
    return len(shifted)
