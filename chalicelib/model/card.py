"""The model card: Markdown a clinician and an ML reviewer can both read, plus PNG plots.

Its sections follow the TRIPOD+AI reporting checklist for clinical prediction models (Collins et al., BMJ
2024;385:e078378, https://doi.org/10.1136/bmj-2023-078378): data source and dates, eligibility, outcome,
predictors, sample size and missing data, validation design, discrimination and calibration with intervals,
calibration plot, decision curve analysis, subgroups with intervals, intended use and limitations. Cards of bundles
trained before the intervals existed still render, saying what was not computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from chalicelib.model.capacity import card_rows

PLOTS = ("roc.png", "pr.png", "calibration.png", "importance.png", "dca.png")
NO_INTERVALS = "Intervals not computed for this bundle (it predates the patient-clustered bootstrap)."
MEASURE_LABELS = {
    "roc_auc": "ROC-AUC",
    "recall": "recall (TPR) at the threshold",
    "fpr": "false-positive rate at the threshold",
    "calibration_in_the_large": "calibration-in-the-large (mean risk − observed rate)",
    "brier": "Brier score",
    "ece": "ECE (10 equal-width bins)",
}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _with_ci(v: Any, interval: list[float] | None, digits: int = 3) -> str:
    """'0.684 (0.671–0.697)', or the point alone when there is no interval."""
    if v is None or not interval:
        return _fmt(v, digits)
    return f"{v:.{digits}f} ({interval[0]:.{digits}f}–{interval[1]:.{digits}f})"


def _metrics_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| model | ROC-AUC | PR-AUC | Brier | ECE | precision | recall | F1 | flagged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        ci = m.get("intervals") or {}
        lines.append(
            f"| {name} | {_with_ci(m['roc_auc'], ci.get('roc_auc'))} | {_fmt(m['pr_auc'])} "
            f"| {_with_ci(m['brier'], ci.get('brier'), 4)} | {_with_ci(m['ece'], ci.get('ece'), 4)} "
            f"| {_fmt(m['precision'])} | {_with_ci(m['recall'], ci.get('recall'))} | {_fmt(m['f1'])} "
            f"| {m['flagged_share']:.1%} |"
        )
    return lines


def _headline(prod: dict[str, Any]) -> list[str]:
    """Discrimination and calibration of the production model, each with its 95% interval."""
    ci = prod.get("intervals")
    lines = ["| measure | estimate | 95% interval |", "|---|---|---|"]
    for key in ("roc_auc", "brier", "ece", "calibration_in_the_large", "recall", "fpr"):
        value, interval = prod.get(key), (ci or {}).get(key)
        digits = 4 if key in ("brier", "ece", "calibration_in_the_large") else 3
        bounds = f"{interval[0]:.{digits}f} – {interval[1]:.{digits}f}" if interval else "not computed"
        lines.append(f"| {MEASURE_LABELS[key]} | {_fmt(value, digits)} | {bounds} |")
    return lines


def _subgroup_table(subgroups: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines = [
        "| group | value | encounters | readmitted <30 | ROC-AUC | recall | FPR | calibration-in-the-large |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group, table in subgroups.items():
        for value, m in table.items():
            head = f"| {group} | {value} | {m['n']:,} | {m['positives']:,} ({m['prevalence']:.1%})"
            if m.get("judgeable") is False or (m.get("judgeable") is None and m.get("note")):
                lines.append(f"{head} | too few to judge | – | – | – |")
                continue
            ci = m.get("intervals") or {}
            lines.append(
                f"{head} | {_with_ci(m['roc_auc'], ci.get('roc_auc'))} | {_with_ci(m['recall'], ci.get('recall'))} "
                f"| {_with_ci(m.get('fpr'), ci.get('fpr'))} "
                f"| {_with_ci(m.get('calibration_in_the_large'), ci.get('calibration_in_the_large'), 4)} |"
            )
    return lines


def _fairness_table(fairness: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| group | measure | largest gap (95% interval) | highest | lowest |", "|---|---|---|---|---|"]
    for group, measures in fairness.items():
        for key, gap in measures.items():
            if gap is None:
                lines.append(f"| {group} | {MEASURE_LABELS[key]} | fewer than two groups to compare | – | – |")
                continue
            digits = 4 if key == "calibration_in_the_large" else 3
            lines.append(
                f"| {group} | {MEASURE_LABELS[key]} | {_with_ci(gap['gap'], gap['interval'], digits)} "
                f"| {gap['highest']} | {gap['lowest']} |"
            )
    return lines


def _dca_table(rows: list[dict[str, float]]) -> list[str]:
    lines = ["| threshold | model | treat all | treat none |", "|---|---|---|---|"]
    for r in rows:
        if round(r["threshold"] * 100) % 5:  # the table shows every 0.05; the plot every stored point
            continue
        lines.append(f"| {r['threshold']:.2f} | {r['model']:.4f} | {r['treat_all']:.4f} | {r['treat_none']:.4f} |")
    return lines


def _predictor_rows(missing: dict[str, int] | None, cohort_rows: int) -> list[str]:
    from chalicelib.data.schema import FEATURE_INPUTS, MEDICATIONS
    from chalicelib.features.table import FEATURES

    def missing_cell(name: str) -> str:
        if missing is None:
            return "not recorded"
        n = missing.get(name, 0)
        return f"{n:,} ({n / cohort_rows:.1%})" if cohort_rows else f"{n:,}"

    lines = ["| input | what it is | model features from it | missing or unknown |", "|---|---|---|---|"]
    for col in FEATURE_INPUTS:
        if col.name in MEDICATIONS:
            continue
        used = sum(col.name in f.sources for f in FEATURES)
        lines.append(f"| `{col.name}` | {col.description} | {used} | {missing_cell(col.name)} |")
    meds = sum(any(m in f.sources for m in MEDICATIONS) for f in FEATURES)
    lines.append(
        f"| {len(MEDICATIONS)} diabetes medications | prescribed and dose change (No, Steady, Up, Down); never "
        f"missing | {meds} | 0 |"
    )
    return lines


def render(meta: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Markdown card from the bundle metadata and the metrics written beside it."""
    from chalicelib.data.schema import COLUMN_BY_NAME, EXCLUDED_DISPOSITIONS

    primary_name = "holdout" if "holdout" in metrics else "cv"
    primary = metrics[primary_name]
    prod = primary["models"]["production"]
    t = meta["thresholds"]
    data = meta["data"]
    quality = metrics.get("data_quality") or {}
    boot = prod.get("bootstrap")
    min_size = (boot or {}).get("min_size") or {"encounters": 100, "readmissions": 10}
    where = "patient-grouped holdout" if primary_name == "holdout" else "grouped cross-validation (out-of-fold)"
    dispositions = COLUMN_BY_NAME["discharge_disposition_id"].codes or {}
    excluded = ", ".join(f"{c} {dispositions.get(c, '')}".strip() for c in sorted(EXCLUDED_DISPOSITIONS))
    lines = [
        f"# Model card: readmit {meta['version']}",
        "",
        "Development and internal validation of a prognostic model (gradient-boosted trees, XGBoost, with a"
        " probability calibrator) that predicts whether a diabetic patient's hospital encounter is followed by a"
        ' readmission within 30 days (`readmitted == "<30"`), from what is known at discharge. Sections follow the'
        " TRIPOD+AI checklist (Collins et al., BMJ 2024;385:e078378).",
        "",
        "## Intended use",
        "- Target population: adults with diabetes discharged from an inpatient stay, in hospitals like those of the"
        " training data. Intended users: care-transition teams, discharge planners and clinicians.",
        "- Use: to prioritise follow-up (calls, medication review, early clinic visits) for the patients at highest"
        " risk. It supports, and does not replace, a clinician's judgement: never use it to deny or ration care.",
        "- Not for: patients discharged to hospice or who died (excluded below), children, other conditions, or"
        " settings whose coding or population differ without local validation.",
        "",
        "## Data source and dates",
        "- UCI *Diabetes 130-US hospitals for years 1999-2008* (Strack et al., BioMed Res Int 2014;781670; CC BY"
        " 4.0): encounters from 130 US hospitals and integrated delivery networks (Health Facts database, Cerner),"
        " 1999 to 2008. The file has no encounter dates, so a temporal split is not possible; encounter order is"
        " taken from `encounter_id`.",
        f"- File sha256 (content, CR removed) `{data['sha256']}`.",
        "",
        "## Eligibility",
        "- Included by the data set's curators: inpatient encounters of 1 to 14 days of patients with diabetes"
        " among their diagnoses, with laboratory tests performed and medications administered.",
        f"- Excluded here: encounters ending in death or discharge to hospice (discharge_disposition_id {excluded}),"
        " for whom a readmission is not a meaningful outcome;"
        " rows failing schema validation are rejected.",
        f"- {data['rows']:,} rows read; {data['invalid_rows']:,} rejected by schema validation; "
        f"{data['excluded_rows']:,} excluded (discharged to hospice or expired); "
        f"{data['cohort_rows']:,} encounters of {data['cohort_patients']:,} patients in the cohort.",
        "",
        "## Outcome",
        '- Readmission to hospital within 30 days of discharge: the data set\'s `readmitted` column equals `"<30"`'
        ' (`">30"` and `"NO"` are negatives). Time horizon 30 days from discharge; recorded by the hospitals, not'
        " assessed blind to the predictors.",
        f"- Prevalence in the cohort: {data['prevalence']:.2%}.",
        "",
        "## Predictors",
        f"- {len(meta['feature_names'])} model features built from the discharge-summary inputs below by one code"
        " path (`features.encode`, the same for training, batch and API; `docs/features.md` defines each), plus"
        " counts of the patient's earlier encounters in the same input. The outcome never enters a feature.",
        '- Missing values are not imputed: categorical inputs get a "missing" indicator and XGBoost routes'
        " missing numbers down a learned default branch.",
        "",
        *_predictor_rows(quality.get("missing"), data["cohort_rows"]),
        "",
        "## Sample size and missing data",
    ]
    positives = quality.get("positives", round(data["prevalence"] * data["cohort_rows"]))
    lines += [
        f"- Sample size was fixed by the available data, not by a calculation: {data['cohort_rows']:,} encounters,"
        f" {data['cohort_patients']:,} patients, {positives:,} readmissions within 30 days"
        f" ({positives / max(len(meta['feature_names']), 1):.0f} events per model feature).",
        f"- Development (training) set: {data.get('train_rows', data['cohort_rows']):,} encounters"
        + (f", {quality['train_positives']:,} readmissions." if "train_positives" in quality else "."),
    ]
    if "holdout" in metrics:
        h = metrics["holdout"]["models"]["production"]
        lines.append(f"- Holdout: {h['n']:,} encounters, {h['positives']:,} readmissions.")
    if quality.get("not_measured"):
        nm = quality["not_measured"]
        lines.append(
            f'- Lab tests not performed (recorded as "None", not missing): max_glu_serum {nm["max_glu_serum"]:,},'
            f" A1Cresult {nm['A1Cresult']:,} encounters."
        )
    if quality.get("missing") is None:
        lines.append("- Missing-data counts were not recorded for this bundle.")
    else:
        lines.append("- Missing or unknown values per input are in the Predictors table; complete-case analysis is"
                     " not used: every cohort encounter is kept.")  # fmt: skip
    lines += [
        "",
        "## Evaluation protocol (validation design)",
        f"- Every split is grouped by `patient_nbr`: no patient is on both sides. {meta['cv']['folds']}-fold "
        "stratified grouped cross-validation on the training patients gives out-of-fold predictions.",
        "- Hyper-parameters were chosen by grouped CV on training data only (`readmit tune`); the calibrator "
        f"(**{meta['calibration']['method']}**, chosen over the alternatives by cross-fitted Brier score) is "
        "fitted on out-of-fold predictions. The CV metrics below are cross-fitted: each fold is calibrated by a "
        "calibrator fitted on the other folds only.",
    ]
    if "holdout" in metrics:
        h = metrics["holdout"]["models"]["production"]
        lines.append(
            f"- A patient-grouped holdout of {h['n']:,} encounters ({meta['holdout_frac']:.0%} of patients) was set "
            "aside before any fitting; it is the primary evaluation below."
        )
    if boot:
        lines.append(
            f"- Intervals: 95% percentile intervals from {boot['resamples']:,} bootstrap resamples of"
            f" {boot.get('patients', 0):,} patients (whole patients with all their encounters, seed {boot['seed']})."
        )
    else:
        lines.append(f"- {NO_INTERVALS}")
    lines += [
        f"- Risk tiers: **high** = risk ≥ {t['high']:.3f} (top {t['high_share']:.0%} of training risk; the operating "
        f"threshold), **medium** ≥ {t['medium']:.3f} (next {t['medium_share']:.0%}), else **low**.",
        "",
        f"## Performance: discrimination and calibration ({where})",
        "",
        *_headline(prod),
        "",
        *_metrics_table(primary["models"]),
        "",
        "- *production*: the served model (tuned XGBoost + calibration).",
        "- *original config*: the original system's XGBoost (scale_pos_weight 8, max_depth 3, learning_rate 0.1,"
        " 200 trees) on the same features, uncalibrated as it was served: note its Brier and ECE.",
        "- *LACE*: the clinical LACE index (length of stay, acuity, Charlson comorbidity, ED visits), mapped to a"
        " probability by isotonic regression fitted on training data.",
        f"- Prevalence-only baseline Brier: {primary['prevalence_brier']:.4f}.",
        "",
    ]
    if primary_name == "holdout":
        lines += ["### Grouped cross-validation (training patients)", "", *_metrics_table(metrics["cv"]["models"]), ""]
    lines += [
        "## Calibration plot",
        "",
        "![Calibration](plots/calibration.png)",
        "",
        "Mean predicted risk against the observed readmission rate in ten equal-size groups of predicted risk:",
        "",
        "| decile | mean predicted | observed | encounters |",
        "|---|---|---|---|",
        *(
            f"| {i} | {r['predicted']:.3f} | {r['observed']:.3f} | {r['n']:,} |"
            for i, r in enumerate(metrics.get("reliability") or [], 1)
        ),
        "",
        "## Decision curve analysis",
        "",
    ]
    if metrics.get("dca"):
        lines += [
            "Net benefit = TP/n − FP/n × pt/(1 − pt) at threshold probability pt (Vickers & Elkin 2006), for"
            " following up everyone with risk ≥ pt (the model), everyone (treat all) or no one (treat none). The"
            " model is worth using at thresholds where its net benefit exceeds both.",
            "",
            "![Decision curve](plots/dca.png)",
            "",
            *_dca_table(metrics["dca"]),
            "",
        ]
    else:
        lines += ["Decision curve not computed for this bundle.", ""]
    lines += card_rows(meta.get("capacity"))
    lines += [
        "## Subgroups and fairness (production model, same evaluation set)",
        "",
        f"A group with fewer than {min_size['encounters']} encounters or {min_size['readmissions']} readmissions is"
        " too few to judge: it is listed by size only. Recall and false-positive rate are at the operating threshold"
        " (equal opportunity compares recall). "
        + ("Each value has its 95% interval in brackets." if boot else NO_INTERVALS)
        + f" Worst subgroup AUC: {_fmt(metrics.get('worst_subgroup_auc'))}.",
        "",
        *_subgroup_table(prod["subgroups"]),
        "",
    ]
    if prod.get("fairness"):
        lines += [
            "Largest gap between judgeable groups (highest minus lowest), with the interval of that gap taken"
            " within each resample. A gap is never negative and noise only widens it, so its interval sits above"
            " zero even between alike groups: judge a difference by the groups' own intervals above.",
            "",
            *_fairness_table(prod["fairness"]),
            "",
        ]
    lines += [
        "## Plots",
        "",
        "![ROC](plots/roc.png) ![Precision-recall](plots/pr.png)",
        "![Factor importance (mean |SHAP| per concept)](plots/importance.png)",
        "",
        "## Top factors (mean |SHAP| of each concept's features summed, log-odds)",
        "",
        "| factor | mean abs SHAP |",
        "|---|---|",
        *(f"| {name} | {value:.4f} |" for name, value in list(metrics["importance"].items())[:15]),
        "",
        "## Limitations",
        "- Data from 1999–2008 US hospitals; practice, coding (ICD-9, not ICD-10) and populations have changed."
        " Monitor drift and realized performance before relying on it elsewhere.",
        "- Internal validation only (patient-grouped holdout of the same hospitals and years): no external or"
        " temporal validation.",
        "- Encounter order is taken from `encounter_id`; history features count only earlier encounters present"
        " in the same input (batch) or the history store (online).",
        "- Labels arrive 30 days after discharge; realized performance can only be measured after that.",
        "- Readmissions to other hospitals are not in the data, so some positives are recorded as negatives.",
        "- Race as recorded is among the inputs; discrimination falls with age and recall differs between groups:"
        " check the subgroup intervals and gaps above before deployment.",
        "",
        "## Provenance",
        f"- Trained {meta['created_at']} in {meta['timings']['before_write_s']:.0f} s;"
        f" code `{meta['code_version']}`;"
        f" XGBoost {meta['xgboost_version']}.",
        f"- Parameters: `{meta['params']}`, {meta['n_estimators']} trees.",
        f"- {len(meta['feature_names'])} features: see `docs/features.md`.",
        "",
    ]
    return "\n".join(lines)


def plots(
    curves: dict[str, dict[str, Any]],
    reliability: list[dict[str, float]],
    importance: dict[str, float],
    dca: list[dict[str, float]] | None = None,
) -> dict:
    """PNG bytes of the card's plots, keyed by file name under ``plots/`` (dca.png only with ``dca``)."""
    from chalicelib.core.plotting import png, pyplot

    plt = pyplot()
    out: dict[str, bytes] = {}

    def save(fig: Any, name: str) -> None:
        out[f"plots/{name}"] = png(fig, dpi=90)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], label=f"{name} (AUC {c['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC")
    ax.legend(loc="lower right", fontsize=8)
    save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, c in curves.items():
        ax.plot(c["recall"], c["precision"], label=name)
    ax.set(xlabel="Recall", ylabel="Precision", title="Precision-recall")
    ax.legend(loc="upper right", fontsize=8)
    save(fig, "pr.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    pred = [r["predicted"] for r in reliability]
    obs = [r["observed"] for r in reliability]
    hi = max(max(pred), max(obs)) * 1.1
    ax.plot([0, hi], [0, hi], ls=":", c="grey", label="perfect")
    ax.plot(pred, obs, marker="o", label="production")
    ax.set(xlabel="Mean predicted risk", ylabel="Observed readmission rate", title="Calibration (deciles)")
    ax.legend(fontsize=8)
    save(fig, "calibration.png")

    top = list(importance.items())[:15][::-1]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.barh([k for k, _ in top], [v for _, v in top])
    ax.set(xlabel="mean |SHAP| per concept (log-odds)", title="Factor importance")
    ax.tick_params(axis="y", labelsize=8)
    save(fig, "importance.png")
    if dca:
        out["plots/dca.png"] = dca_plot(dca)
    return out


def dca_plot(rows: list[dict[str, float]]) -> bytes:
    """Decision curve: net benefit of the model, treat-all and treat-none against the threshold probability."""
    from chalicelib.core.plotting import png, pyplot

    fig, ax = pyplot().subplots(figsize=(5, 4))
    pts = [r["threshold"] for r in rows]
    model = [r["model"] for r in rows]
    ax.plot(pts, model, label="model")
    ax.plot(pts, [r["treat_all"] for r in rows], ls="--", label="treat all")
    ax.plot(pts, [r["treat_none"] for r in rows], ls=":", c="grey", label="treat none")
    top = max(max(model), max(r["treat_all"] for r in rows), 0.0)
    ax.set_ylim(-0.25 * max(top, 0.01), 1.15 * max(top, 0.01))  # treat-all plunges below 0: keep the model visible
    ax.set(xlabel="Threshold probability", ylabel="Net benefit", title="Decision curve")
    ax.legend(fontsize=8)
    return png(fig, dpi=90)


def shap_importance(contribs: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """Mean |SHAP| per clinical concept (each concept's features summed per row first), keyed by the concept's
    label: the same grouping the API's factors use, so the card and a patient's factors name the same things."""
    from chalicelib.features.table import FEATURE_NAMES
    from chalicelib.model.explain import importance

    if tuple(names) != FEATURE_NAMES:
        raise ValueError("SHAP columns must be the model's features, in FEATURE_NAMES order, to group them")
    return importance(contribs)
