"""Candidate features judged by patient-grouped CV on the training data only (issue #19, part 2).

    .venv/bin/python benchmarks/feature_experiments.py [--data PATH] [--folds 5] [--only NAME ...] [--json OUT]

The pipeline's patient-disjoint holdout (``train.holdout_split`` with the pipeline's 20% and seed) is removed
first, so nothing here ever sees it; every candidate is then scored by the same patient-grouped folds
(``train.grouped_folds``) with the pinned model (``train.DEFAULT_PARAMS``, ``DEFAULT_TREES`` trees, 2 threads:
the machine is shared). Per candidate it prints ROC-AUC (mean ± sd over folds, on the raw booster output),
the paired per-fold difference to the current features, the Brier score of the isotonic-calibrated out-of-fold
risk (calibrated by the other folds, as ``train`` reports it) and the out-of-fold ROC-AUC per age band.

A candidate is a function of the validated table that returns extra columns for every valid row; history-like
candidates see the excluded encounters too, as ``train.prepare``'s history does. Nothing here is served: a
candidate that is kept is re-implemented in ``chalicelib/features/encoding.py``'s one path.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from chalicelib.data.dataset import locate
from chalicelib.data.schema import MEDICATIONS, category_code
from chalicelib.data.tabular import Table, read_table
from chalicelib.features import icd9
from chalicelib.features.encoding import _diag_info
from chalicelib.features.table import DIAGS, FEATURE_NAMES
from chalicelib.model import calibration
from chalicelib.model.train import (
    DEFAULT_PARAMS,
    DEFAULT_TREES,
    MONOTONE_INCREASING,
    TrainConfig,
    grouped_folds,
    holdout_split,
    predict_raw,
    prepare,
)

PIPELINE_HOLDOUT = (
    0.2  # chalicelib/lifecycle/pipeline.py RunInput.eval_frac: the share the retraining pipeline holds out
)
OLD_BANDS = ("[70-80)", "[80-90)", "[90-100)")
Extra = tuple[list[str], np.ndarray]  # (names, matrix over the table's valid rows)


# ---- per-patient history helpers (order: patient_nbr, then encounter_id, as features.history_in_file) ------------
@dataclass
class Order:
    order: np.ndarray  # rows sorted by (patient, encounter_id)
    start: np.ndarray  # sorted position starts a patient
    group: np.ndarray  # patient index per sorted position
    first: np.ndarray  # sorted position of each patient's first row

    @classmethod
    def of(cls, table: Table) -> Order:
        order = np.lexsort((table.encounter_id, table.patient_nbr))
        patients = table.patient_nbr[order]
        start = np.ones(len(order), dtype=bool)
        start[1:] = patients[1:] != patients[:-1]
        group = np.cumsum(start) - 1
        return cls(order, start, group, np.flatnonzero(start))

    def earlier_sum(self, values: np.ndarray) -> np.ndarray:
        """Per row: the sum of ``values`` over the same patient's earlier encounters."""
        v = values[self.order].astype(np.float64)
        before = np.cumsum(v) - v
        out = np.empty(len(v))
        out[self.order] = before - before[self.first][self.group]
        return out

    def previous(self, values: np.ndarray, missing: float = np.nan) -> np.ndarray:
        """Per row: ``values`` of the same patient's immediately preceding encounter (``missing`` for the first)."""
        v = values[self.order].astype(np.float64)
        prev = np.full(len(v), missing)
        prev[1:] = v[:-1]
        prev[self.start] = missing
        out = np.empty(len(v))
        out[self.order] = prev
        return out

    def rank(self) -> np.ndarray:
        """Per row: how many earlier encounters the patient has."""
        out = np.empty(len(self.order))
        out[self.order] = np.arange(len(self.order)) - self.first[self.group]
        return out


# ---- candidates -----------------------------------------------------------------------------------------------
def prior_outcomes(table: Table) -> Extra:
    """(a) Earlier encounters' outcomes: counts of earlier <30 and >30, and whether the immediately preceding one
    was <30. Only *earlier* rows' labels enter; the current row's label never does."""
    o = Order.of(table)
    lt30, gt30 = (table.target == "<30").astype(float), (table.target == ">30").astype(float)
    return ["hist_lt30", "hist_gt30", "prev_lt30"], np.column_stack(
        (o.earlier_sum(lt30), o.earlier_sum(gt30), o.previous(lt30, 0.0))
    )


def prior_outcomes_counts(table: Table) -> Extra:
    """(a') Only the counts (no flag for the preceding encounter)."""
    names, m = prior_outcomes(table)
    return names[:2], m[:, :2]


def prior_outcomes_lagged(table: Table) -> Extra:
    """(a'') Outcomes of earlier encounters except the immediately preceding one: the preceding encounter's outcome
    matures (30 days after its discharge) possibly after the current encounter is scored, so it is left out."""
    o = Order.of(table)
    lt30, gt30 = (table.target == "<30").astype(float), (table.target == ">30").astype(float)
    return ["hist_lt30_lagged", "hist_gt30_lagged"], np.column_stack(
        (
            o.earlier_sum(lt30) - o.previous(lt30, 0.0),
            o.earlier_sum(gt30) - o.previous(gt30, 0.0),
        )
    )


def prior_outcomes_30d_late(table: Table) -> Extra:
    """(a) as the store would hold it when outcomes are uploaded at maturity (30 days after discharge): the
    preceding encounter's <30 is not there yet (the current admission is within its 30 days), its >30 is."""
    o = Order.of(table)
    lt30, gt30 = (table.target == "<30").astype(float), (table.target == ">30").astype(float)
    return ["hist_lt30_30d_late", "hist_gt30"], np.column_stack(
        (o.earlier_sum(lt30) - o.previous(lt30, 0.0), o.earlier_sum(gt30))
    )


def prior_outcomes_as_uploaded(table: Table) -> Extra:
    """(a) what the outcome upload can deliver by the time of the current encounter, trained as served: the upload
    carries a 30-day flag only (``outcomes.Outcome.readmitted_30d``), at maturity (30 days after discharge). So:
    earlier encounters not readmitted within 30 days (all matured: the current admission came later), and earlier
    encounters readmitted within 30 days except the immediately preceding one (its 30 days are not over when the
    current encounter, its readmission, is scored)."""
    o = Order.of(table)
    lt30 = (table.target == "<30").astype(float)
    return ["hist_readmitted_30d", "hist_not_readmitted_30d"], np.column_stack(
        (o.earlier_sum(lt30) - o.previous(lt30, 0.0), o.earlier_sum(1.0 - lt30))
    )


def prior_outcomes_pending(table: Table) -> Extra:
    """(a) ``prior_outcomes_as_uploaded`` plus how many earlier encounters have no outcome uploaded yet: with every
    upload exactly at maturity that is the preceding encounter when it was readmitted within 30 days (the current
    encounter). Measured, not built: a late feed would make outcomes "pending" for other reasons."""
    names, known = prior_outcomes_as_uploaded(table)
    return [*names, "hist_outcome_pending"], np.column_stack(
        (known, Order.of(table).previous((table.target == "<30").astype(float), 0.0))
    )


def _chapter_index(code: str) -> int:
    """0..16 the ICD-9-CM chapters, 17 V codes, 18 E codes, -1 missing."""
    if not code:
        return -1
    if code[0] == "V":
        return 17
    if code[0] == "E":
        return 18
    whole = int(float(code))
    return next((i for i, (lo, hi, _) in enumerate(icd9.CHAPTERS) if lo <= whole <= hi), -1)


def _diag_codes(table: Table) -> np.ndarray:
    return np.array([table.cols[d] for d in DIAGS]).T


def icd_chapters(table: Table) -> Extra:
    """(b) ICD-9-CM chapter (body system) counts over diag_1..3, and diag_1's chapter as a number."""
    codes = _diag_codes(table)
    uniq, inverse = np.unique(codes, return_inverse=True)
    chapters = np.array([_chapter_index(str(u)) for u in uniq])[inverse.reshape(codes.shape)]
    counts = (chapters[:, :, None] == np.arange(19)).sum(axis=1)
    names = [f"chapter_{i}" for i in range(19)]
    return [*names, "diag1_chapter"], np.column_stack((counts, chapters[:, 0]))


def icd_pairs(table: Table) -> Extra:
    """(b') Combinations: Strack group of diag_1 × diag_2 as one categorical number, the number of distinct
    groups over the three, and whether diag_1's group recurs in diag_2/3."""
    codes = _diag_codes(table)
    uniq, inverse = np.unique(codes, return_inverse=True)
    groups = np.array([_diag_info(str(u))[0] for u in uniq])[inverse.reshape(codes.shape)]
    pair = (groups[:, 0] + 1) * 10 + groups[:, 1] + 1
    distinct = np.array([len(set(r) - {-1}) for r in groups.tolist()])
    recurs = (groups[:, 0] >= 0) & ((groups[:, 1] == groups[:, 0]) | (groups[:, 2] == groups[:, 0]))
    return ["diag12_pair", "diag_groups_distinct", "diag1_group_recurs"], np.column_stack((pair, distinct, recurs))


# Conditions named in readmission-risk literature that the Strack groups and Charlson mask do not separate.
CONDITIONS: dict[str, tuple[tuple[float, float], ...]] = {
    "heart_failure": ((428, 429), (402.01, 402.02), (402.11, 402.12), (402.91, 402.92)),
    "renal_chronic": ((585, 586), (403, 405)),
    "renal_acute": ((584, 585),),
    "copd": ((491, 493), (496, 497)),
    "pneumonia": ((480, 487),),
    "sepsis": ((38, 39), (995.91, 995.93)),
    "anemia": ((280, 286),),
    "fluid_electrolyte": ((276, 277),),
    "uti": ((599, 600),),
    "mental": ((290, 320),),
    "cellulitis_ulcer": ((681, 683), (707, 708)),
    "arrhythmia": ((427, 428),),
}


def icd_conditions(table: Table) -> Extra:
    """(b'') How many of diag_1..3 name each condition above."""
    codes = _diag_codes(table)
    uniq, inverse = np.unique(codes, return_inverse=True)
    values = np.array([icd9.numeric(str(u)) if u else np.nan for u in uniq])
    out = []
    for ranges in CONDITIONS.values():
        hit = np.zeros(len(uniq), dtype=bool)
        for lo, hi in ranges:
            hit |= (values >= lo) & (values < hi)
        out.append(hit[inverse.reshape(codes.shape)].sum(axis=1))
    return [f"dx_{n}" for n in CONDITIONS], np.column_stack(out)


def med_patterns(table: Table) -> Extra:
    """(c) Medication-change patterns: oral agents active/changed, insulin-only, oral-only, and dose direction
    combinations (insulin up with oral up, any down)."""
    up, down, no = (category_code("metformin", v) for v in ("Up", "Down", "No"))
    meds = np.array([table.cols[m] for m in MEDICATIONS]).T
    insulin = meds[:, MEDICATIONS.index("insulin")]
    oral = np.delete(meds, MEDICATIONS.index("insulin"), axis=1)
    oral_on = (oral != no).sum(axis=1)
    oral_changed = ((oral == up) | (oral == down)).sum(axis=1)
    insulin_on = insulin != no
    return [
        "oral_active",
        "oral_changed",
        "insulin_only",
        "oral_only",
        "insulin_up_oral_up",
        "steady_all",
        "net_direction",
    ], np.column_stack(
        (
            oral_on,
            oral_changed,
            insulin_on & (oral_on == 0),
            ~insulin_on & (oral_on > 0),
            (insulin == up) & ((oral == up).sum(axis=1) > 0),
            ((meds != no).sum(axis=1) > 0) & (((meds == up) | (meds == down)).sum(axis=1) == 0),
            (meds == up).sum(axis=1) - (meds == down).sum(axis=1),
        )
    )


def history_more(table: Table) -> Extra:
    """(e) More from earlier encounters (no outcomes): the preceding encounter's length of stay, diagnoses count
    and medications, earlier emergency visits (max), whether the primary diagnosis group recurs from the
    preceding encounter, and earlier encounters with a diabetes-drug change."""
    o = Order.of(table)
    c = table.cols
    codes = _diag_codes(table)
    uniq, inverse = np.unique(codes[:, 0], return_inverse=True)
    group1 = np.array([_diag_info(str(u))[0] for u in uniq])[inverse]
    prev_group = o.previous(group1.astype(float))
    return [
        "prev_los",
        "prev_num_medications",
        "prev_number_diagnoses",
        "prev_same_primary_group",
        "hist_med_changes",
        "hist_emergency_visits",
    ], np.column_stack(
        (
            o.previous(c["time_in_hospital"]),
            o.previous(c["num_medications"]),
            o.previous(c["number_diagnoses"]),
            np.where(np.isnan(prev_group), np.nan, prev_group == group1),
            o.earlier_sum(c["change"] == category_code("change", "Ch")),
            o.earlier_sum(c["number_emergency"]),
        )
    )


def age_interactions(table: Table) -> Extra:
    """(d) From the error analysis for ages 80+: products of age with what separates their misses (emergency
    visits, discharge home without services, earlier encounters, medications)."""
    o = Order.of(table)
    c = table.cols
    age = np.array([lo + 5.0 for lo in range(0, 100, 10)] + [np.nan])[c["age"]]
    home = c["discharge_disposition_id"] == 1
    return ["age_x_emergency", "age_x_home", "age_x_hist_encounters", "age_x_medications"], np.column_stack(
        (age * c["number_emergency"], age * home, age * o.rank(), age * c["num_medications"])
    )


CANDIDATES: dict[str, Callable[[Table], Extra]] = {
    "a_prior_outcomes": prior_outcomes,
    "a_prior_outcome_counts": prior_outcomes_counts,
    "a_prior_outcomes_lagged": prior_outcomes_lagged,
    "a_prior_outcomes_as_uploaded": prior_outcomes_as_uploaded,
    "a_prior_outcomes_pending": prior_outcomes_pending,
    "b_icd_chapters": icd_chapters,
    "b_icd_pairs": icd_pairs,
    "b_icd_conditions": icd_conditions,
    "c_med_patterns": med_patterns,
    "e_history_more": history_more,
    "d_age_interactions": age_interactions,
}
# Trained on the first, the held-out fold scored with the second: (a) with the preceding encounter's outcome not
# yet uploaded when the current one is scored (the outcome feed's 30-day maturity, chalicelib/monitoring/outcomes.py).
SERVED_LATE: dict[str, tuple[Callable[[Table], Extra], Callable[[Table], Extra]]] = {
    "a_prior_outcome_counts_served_late": (prior_outcomes_counts, prior_outcomes_lagged),
    "a_prior_outcome_counts_served_30d_late": (prior_outcomes_counts, prior_outcomes_30d_late),
}


# ---- model variants for (d): the current features, other training settings --------------------------------------
@dataclass
class Variant:
    """How a run differs from the pinned model: extra params, per-row weights, extra monotone features."""

    params: dict[str, Any] = field(default_factory=dict)
    weight: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
    monotone: tuple[str, ...] = ()
    seed_offset: int = 0  # another booster seed, same folds: how far randomness alone moves the paired difference


VARIANTS: dict[str, Variant] = {
    # the current features with other booster seeds: the noise floor of a paired difference
    "noise_seed_1": Variant(seed_offset=1000),
    "noise_seed_2": Variant(seed_offset=2000),
    "noise_seed_3": Variant(seed_offset=3000),
    # old patients weighted up (twice / 1.5×), so splits serve them more
    "d_weight_80plus_x2": Variant(weight=lambda g: np.where(np.isin(g["age_band"], OLD_BANDS[1:]), 2.0, 1.0)),
    "d_weight_70plus_x1.5": Variant(weight=lambda g: np.where(np.isin(g["age_band"], OLD_BANDS), 1.5, 1.0)),
    # more clinically monotone utilisation: emergency visits, earlier encounters, earlier emergency admissions
    "d_monotone_more": Variant(monotone=("number_emergency", "hist_encounters", "hist_emergency_admissions")),
}


# ---- scoring --------------------------------------------------------------------------------------------------
@dataclass
class Data:
    X: np.ndarray
    y: np.ndarray
    groups: dict[str, np.ndarray]
    folds: np.ndarray
    names: list[str]
    extras_rows: np.ndarray  # valid-table rows kept (cohort, not holdout), to align extra columns


def load(data: Path, folds: int, seed: int) -> tuple[Table, Data]:
    table = read_table(data, require_target=True)
    prep = prepare(table)
    keep = ~holdout_split(prep.patients, PIPELINE_HOLDOUT, seed)
    X, y, patients, groups = prep.subset(keep)
    rows = np.flatnonzero(prep.cohort)[keep]
    return table, Data(X, y, groups, grouped_folds(y, patients, folds, seed), list(FEATURE_NAMES), rows)


def monotone(names: list[str], extra: tuple[str, ...] = ()) -> str:
    increasing = set(MONOTONE_INCREASING) | set(extra)
    return "(" + ",".join("1" if n in increasing else "0" for n in names) + ")"


def cross_validate(
    d: Data, X: np.ndarray, names: list[str], variant: Variant, seed: int, X_served: np.ndarray | None = None
) -> dict[str, Any]:
    """Out-of-fold scores; ``X_served`` (default ``X``) is what the held-out fold is scored on, to measure a
    feature that serving would see differently from training."""
    X_served = X if X_served is None else X_served
    params = {**DEFAULT_PARAMS, **variant.params, "monotone_constraints": monotone(names, variant.monotone)}
    weight = variant.weight(d.groups) if variant.weight else None
    oof = np.empty(len(d.y))
    for k in np.unique(d.folds):
        test = d.folds == k
        dtrain = xgb.DMatrix(X[~test], label=d.y[~test], weight=_w(weight, ~test), missing=np.nan)
        booster_params = {**params, "seed": seed + variant.seed_offset + int(k), "nthread": 2}
        booster = xgb.train(booster_params, dtrain, num_boost_round=DEFAULT_TREES)
        oof[test] = predict_raw(booster, X_served[test])
    risk = calibration.cross_fit("isotonic", oof, d.y, d.folds)
    ks = np.unique(d.folds)
    aucs = [roc_auc_score(d.y[d.folds == k], oof[d.folds == k]) for k in ks]
    briers = [float(np.mean((risk[d.folds == k] - d.y[d.folds == k]) ** 2)) for k in ks]
    bands = {}
    for band in sorted(set(d.groups["age_band"].tolist())):
        m = d.groups["age_band"] == band
        if m.sum() >= 1000:
            bands[band] = float(roc_auc_score(d.y[m], oof[m]))
    return {"auc": aucs, "brier": briers, "bands": bands, "oof": oof}


def _w(weight: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    return None if weight is None else weight[mask]


def error_analysis(d: Data, seed: int = TrainConfig.seed) -> None:
    """What the pinned model misses for ages 80+: per-band out-of-fold AUC and calibration, a model trained on
    80+ only (do they need their own splits?), features whose univariate AUC is weaker for them, and how missed
    readmissions (below the top-20% threshold) differ from caught ones."""
    old = np.isin(d.groups["age_band"], OLD_BANDS[1:])
    params = {**DEFAULT_PARAMS, "monotone_constraints": monotone(d.names)}
    oof, own = np.empty(len(d.y)), np.full(len(d.y), np.nan)
    for k in np.unique(d.folds):
        test = d.folds == k
        for rows, out in ((~test, oof), (~test & old, own)):
            dtrain = xgb.DMatrix(d.X[rows], label=d.y[rows], missing=np.nan)
            booster = xgb.train({**params, "seed": seed + int(k), "nthread": 2}, dtrain, num_boost_round=DEFAULT_TREES)
            scored = test if out is oof else test & old
            out[scored] = predict_raw(booster, d.X[scored])
    print(f"80+: {old.sum():,} encounters, prevalence {d.y[old].mean():.4f} (others {d.y[~old].mean():.4f})")
    auc_old, auc_own, auc_young = (roc_auc_score(d.y[m], p[m]) for m, p in ((old, oof), (old, own), (~old, oof)))
    print(f"  pinned model AUC on 80+ {auc_old:.4f}; trained on 80+ only {auc_own:.4f}; pinned on <80 {auc_young:.4f}")
    for band in sorted(set(d.groups["age_band"].tolist())):
        m = d.groups["age_band"] == band
        if m.sum() >= 1000:
            print(
                f"  {band:9s} n {m.sum():6,}  observed {d.y[m].mean():.4f}  mean raw risk {oof[m].mean():.4f}  "
                f"AUC {roc_auc_score(d.y[m], oof[m]):.4f}"
            )
    rows = []
    for j, name in enumerate(d.names):
        x = np.nan_to_num(d.X[:, j], nan=-1.0)
        if len(np.unique(x[old])) > 1:
            a_old, a_young = roc_auc_score(d.y[old], x[old]), roc_auc_score(d.y[~old], x[~old])
            rows.append((abs(a_old - 0.5) - abs(a_young - 0.5), name, a_old, a_young))
    rows.sort()
    print("  univariate AUC weaker for 80+: " + ", ".join(f"{n} {a:.3f} vs {b:.3f}" for _, n, a, b in rows[:6]))
    threshold = np.quantile(oof, 0.8)
    missed, caught = old & (d.y == 1) & (oof < threshold), old & (d.y == 1) & (oof >= threshold)
    young_pos = ~old & (d.y == 1)
    print(
        f"  readmissions in the top 20%: 80+ {caught.sum() / (old & (d.y == 1)).sum():.3f}, "
        f"<80 {(young_pos & (oof >= threshold)).sum() / young_pos.sum():.3f}"
    )
    spread = np.nanstd(d.X[old], axis=0) + 1e-9
    z = (np.nanmean(d.X[missed], axis=0) - np.nanmean(d.X[caught], axis=0)) / spread
    order = np.argsort(z)
    print(
        "  missed vs caught 80+ readmissions (sd units): "
        + ", ".join(f"{d.names[j]} {z[j]:+.2f}" for j in order[:6])
        + " … "
        + ", ".join(f"{d.names[j]} {z[j]:+.2f}" for j in order[-4:])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--only", nargs="*", help="candidate or variant names (default: all), or combos a+b")
    parser.add_argument("--json", help="write every run's numbers here")
    parser.add_argument("--errors", action="store_true", help="error analysis of ages 80+ on out-of-fold risk")
    args = parser.parse_args()
    table, d = load(locate(args.data), args.folds, args.seed)
    print(f"{len(d.y):,} training encounters (holdout removed), {args.folds} patient-grouped folds")
    if args.errors:
        error_analysis(d)
        return
    runs = args.only or ["baseline", *CANDIDATES, *SERVED_LATE, *VARIANTS]
    results: dict[str, dict[str, Any]] = {}
    base = None
    for run in ["baseline", *(r for r in runs if r != "baseline")]:
        X, names, variant = d.X, list(d.names), Variant()
        X_served = None
        for part in run.split("+"):
            if part in SERVED_LATE:
                trained, served = (f(table)[1][d.extras_rows].astype(np.float32) for f in SERVED_LATE[part])
                X, X_served = np.column_stack((X, trained)), np.column_stack((X, served))
                names += [f"late_{i}" for i in range(trained.shape[1])]
            elif part in CANDIDATES:
                extra_names, extra = CANDIDATES[part](table)
                X = np.column_stack((X, extra[d.extras_rows].astype(np.float32)))
                names += extra_names
            elif part in VARIANTS:
                variant = VARIANTS[part]
            elif part != "baseline":
                raise SystemExit(f"unknown candidate {part!r}")
        started = time.perf_counter()
        r = cross_validate(d, X, names, variant, args.seed, X_served)
        base = base or r
        delta = np.subtract(r["auc"], base["auc"])
        results[run] = {k: v for k, v in r.items() if k != "oof"} | {"delta": delta.tolist(), "features": len(names)}
        took = time.perf_counter() - started
        bands = "  ".join(f"{b} {r['bands'][b]:.4f}" for b in OLD_BANDS if b in r["bands"])
        print(
            f"{run:32s} AUC {np.mean(r['auc']):.4f} ± {np.std(r['auc']):.4f}  "
            f"Δ {delta.mean():+.4f} ± {delta.std():.4f} ({(delta > 0).sum()}/{len(delta)} folds up)  "
            f"Brier {np.mean(r['brier']):.4f} ± {np.std(r['brier']):.4f}  {bands}  ({took:.0f}s)",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
