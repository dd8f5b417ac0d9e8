"""Patient-clustered bootstrap of the evaluation metrics, vectorised over resamples (training side: numpy only).

Encounters of one patient are correlated (readmissions cluster in frequent attenders), so resampling rows would
give intervals that are too narrow. Each resample draws patients with replacement and keeps all of their
encounters: a row's weight in resample b is the number of times its patient was drawn. Every metric is then a
weighted statistic of the fixed (y, p) arrays, so the rows are sorted once and each block of resamples is one
matrix product (counts, rates, calibration) plus a few passes over a (block, rows) weight matrix (AUC).

AUC is the Mann-Whitney statistic with ties counted one half (what ``sklearn.metrics.roc_auc_score`` returns):
over every (positive, negative) pair, weighted by the product of their weights, the share where the positive
scores higher. With the rows sorted by score it is one cumulative sum: each positive counts the negative weight
strictly below its score plus half the negative weight tied with it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

RESAMPLES = 1000
LEVEL = 0.95
SEED = 20260601
ECE_BINS = 10
_BLOCK_ELEMENTS = 4_000_000  # rows x resamples per block: ~32 MB per float64 temporary on the 80k-row CV set

# The per-group measures the bootstrap resamples, and the fairness measures whose largest gap is reported.
GROUP_MEASURES = ("roc_auc", "recall", "fpr", "calibration_in_the_large")


@dataclass(frozen=True)
class MinSize:
    """Smallest group whose metrics are judged. Below 10 readmissions a resample often holds 0-3 of them, so the
    AUC and recall replicates degenerate (recall moves in steps of 0.1 or more) and a percentile interval is not
    trustworthy; below 100 encounters the false-positive rate and calibration-in-the-large rest on a handful of
    patients. (Hanley-McNeil: with 10 events and AUC 0.65 the standard error is ~0.09, an interval ~0.35 wide,
    which is already uninformative.)"""

    encounters: int = 100
    readmissions: int = 10

    def judgeable(self, n: int, positives: int) -> bool:
        return n >= self.encounters and positives >= self.readmissions


JUDGEABLE = MinSize()  # the one place the minimum lives: evaluation, the model card and the gate's defaults use it


@dataclass
class _Layout:
    """One grouping's rows arranged once for the AUC: negatives sorted by (group, score), and for every positive
    where its score falls among its own group's negatives."""

    values: list[str]
    neg_rows: np.ndarray  # negative rows in (group, score) order
    pos_rows: np.ndarray  # positive rows
    lo: np.ndarray  # per positive: negatives (in neg_rows order) before the first of its group scoring >= it
    hi: np.ndarray  # ... before the first of its group scoring > it
    base: np.ndarray  # ... before the first of its group
    pos_group: np.ndarray  # (positives, groups) 0/1 indicator: segment sums become one matrix product
    group_bounds: np.ndarray  # (groups + 1,) start of each group in neg_rows, then the end


@dataclass
class Replicates:
    """Bootstrap replicates: ``overall[m]`` has shape (B,); ``groups[name][m]`` has shape (B, groups)."""

    resamples: int
    seed: int
    overall: dict[str, np.ndarray]
    group_values: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _layout(y: np.ndarray, p: np.ndarray, codes: np.ndarray, values: list[str]) -> _Layout:
    neg_rows = np.flatnonzero(y == 0)
    neg_rows = neg_rows[np.lexsort((p[neg_rows], codes[neg_rows]))]
    pos_rows = np.flatnonzero(y == 1)
    bounds = np.searchsorted(codes[neg_rows], np.arange(len(values) + 1), side="left")
    lo = np.empty(len(pos_rows), dtype=np.int64)
    hi = np.empty(len(pos_rows), dtype=np.int64)
    pos_codes = codes[pos_rows]
    for g in range(len(values)):
        mine = pos_codes == g
        scores = p[neg_rows[bounds[g] : bounds[g + 1]]]
        lo[mine] = bounds[g] + np.searchsorted(scores, p[pos_rows[mine]], side="left")
        hi[mine] = bounds[g] + np.searchsorted(scores, p[pos_rows[mine]], side="right")
    indicator = np.zeros((len(pos_rows), len(values)))
    indicator[np.arange(len(pos_rows)), pos_codes] = 1.0
    return _Layout(values, neg_rows, pos_rows, lo, hi, bounds[pos_codes], indicator, bounds)


def weighted_auc(counts: np.ndarray, pidx: np.ndarray, layout: _Layout) -> np.ndarray:
    """AUC per group for each row of patient ``counts`` (block, patients), a row's weight being its patient's
    count (``pidx``: each row's patient): (block, groups), NaN where a group has no positive or no negative weight.

    Only the negatives need a running sum (a cumulative sum over them in score order); each positive then reads
    the negative weight below its score and tied with it at two positions of that sum. Weights are whole
    counts, so the float64 sums are exact and the result equals the Mann-Whitney statistic with half ties."""
    # np.take, not fancy indexing: about twice as fast for a column gather
    w_neg = np.take(counts, pidx[layout.neg_rows], axis=1)
    below = np.zeros((counts.shape[0], len(layout.neg_rows) + 1), dtype=np.float32)
    np.cumsum(w_neg, axis=1, out=below[:, 1:])
    w_pos = np.take(counts, pidx[layout.pos_rows], axis=1)
    # 2 x (negative weight strictly below + half of the tied), within the positive's own group
    twice_below = np.take(below, layout.lo, axis=1) + np.take(below, layout.hi, axis=1)
    twice_below -= 2 * np.take(below, layout.base, axis=1)
    numerator = (w_pos * twice_below).astype(np.float64) @ layout.pos_group / 2  # the sum may pass 2**24
    npos = w_pos.astype(np.float64) @ layout.pos_group
    nneg = (below[:, layout.group_bounds[1:]] - below[:, layout.group_bounds[:-1]]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((npos > 0) & (nneg > 0), numerator / (npos * nneg), np.nan)


def _patient_sums(
    pidx: np.ndarray, n_patients: int, codes: np.ndarray, n_groups: int, columns: list[np.ndarray]
) -> np.ndarray:
    """(patients, groups * len(columns)): each patient's sum of every column over their rows in each group."""
    key = pidx * n_groups + codes
    return np.column_stack(
        [
            np.bincount(key, weights=col, minlength=n_patients * n_groups).reshape(n_patients, n_groups)
            for col in columns
        ]
    )


def _counts(rng: np.random.Generator, block: int, n_patients: int) -> np.ndarray:
    """(block, patients): how often each patient is drawn when n_patients are drawn with replacement."""
    draws = rng.integers(0, n_patients, size=(block, n_patients)) + np.arange(block)[:, None] * n_patients
    # float32 holds these whole counts, and every running sum of them below 2**24, exactly
    return np.bincount(draws.ravel(), minlength=block * n_patients).reshape(block, n_patients).astype(np.float32)


def _blocks(resamples: int, n_rows: int) -> Iterator[int]:
    size = max(1, min(resamples, _BLOCK_ELEMENTS // max(n_rows, 1)))
    done = 0
    while done < resamples:
        yield min(size, resamples - done)
        done += size


def replicates(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    patients: np.ndarray,
    groups: Mapping[str, np.ndarray] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Replicates:
    """Metrics of ``resamples`` patient-clustered bootstrap resamples: overall AUC, Brier, ECE and
    calibration-in-the-large; per group AUC, recall and false-positive rate at ``threshold`` and
    calibration-in-the-large. Deterministic for a given seed and input."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    _, pidx = np.unique(np.asarray(patients), return_inverse=True)
    n_patients = int(pidx.max()) + 1 if len(pidx) else 0
    flagged = (p >= threshold).astype(np.float64)
    ones = np.ones_like(y)
    base = [ones, y, p, flagged * y, flagged * (1 - y)]  # n, positives, sum of risk, true and false positives

    # every grouping as integer codes; "overall" is a grouping with one group
    groupings: dict[str, tuple[np.ndarray, list[str]]] = {"": (np.zeros(len(y), dtype=np.int64), ["all"])}
    for name, column in (groups or {}).items():
        uniq, codes = np.unique(np.asarray(column).astype(str), return_inverse=True)
        groupings[name] = (codes.astype(np.int64), uniq.tolist())
    layouts = {name: _layout(y, p, codes, vals) for name, (codes, vals) in groupings.items()}
    ece_bin = np.minimum((p * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    overall_extra = [(p - y) ** 2] + [(p - y) * (ece_bin == b) for b in range(ECE_BINS)]
    blocks_of_sums = [
        _patient_sums(pidx, n_patients, codes, len(vals), base + (overall_extra if name == "" else []))
        for name, (codes, vals) in groupings.items()
    ]
    # each patient has rows in few groups: sparse, the product costs a third of the dense one
    sums_t = sparse.csr_matrix(np.hstack(blocks_of_sums)).T
    widths = [b.shape[1] for b in blocks_of_sums]

    rng = np.random.default_rng(seed)
    auc_parts: dict[str, list[np.ndarray]] = {name: [] for name in groupings}
    sum_parts: list[np.ndarray] = []
    for block in _blocks(resamples, len(y)):
        counts = _counts(rng, block, n_patients)
        sum_parts.append(np.asarray(sums_t @ counts.T, dtype=np.float64).T)
        for name, layout in layouts.items():
            auc_parts[name].append(weighted_auc(counts, pidx, layout))
    sums = np.vstack(sum_parts)

    out = Replicates(resamples, seed, {})
    start = 0
    for (name, (_, vals)), width in zip(groupings.items(), widths, strict=True):
        g = len(vals)
        part = sums[:, start : start + width]
        start += width
        n, pos, risk, tp, fp = (part[:, i * g : (i + 1) * g] for i in range(5))
        with np.errstate(invalid="ignore", divide="ignore"):
            metrics = {
                "roc_auc": np.vstack(auc_parts[name]),
                "recall": tp / pos,
                "fpr": fp / (n - pos),
                "calibration_in_the_large": (risk - pos) / n,
            }
            if name == "":
                sq = part[:, 5 * g]
                bins = part[:, 5 * g + 1 :]
                out.overall = {k: v[:, 0] for k, v in metrics.items()}
                out.overall["brier"] = sq / n[:, 0]
                out.overall["ece"] = np.abs(bins).sum(axis=1) / n[:, 0]
        if name:
            out.group_values[name] = vals
            out.groups[name] = metrics
    return out


def interval(samples: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """Percentile interval of bootstrap replicates (NaN replicates, e.g. a resample without positives, dropped);
    None when fewer than half the replicates are defined."""
    finite = samples[np.isfinite(samples)]
    if finite.size < max(1, samples.size // 2):
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return [float(lo), float(hi)]


def gap_samples(values: np.ndarray, judged: np.ndarray) -> np.ndarray:
    """Largest minus smallest value over the judged groups, within each resample: (B, groups) → (B,)."""
    sub = values[:, judged]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN resample gives NaN, dropped by ``interval``
        return np.nanmax(sub, axis=1) - np.nanmin(sub, axis=1)
