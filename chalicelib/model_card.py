"""The model card: Markdown a clinician and an ML reviewer can both read, plus PNG plots."""

from __future__ import annotations

from typing import Any

import numpy as np

from .capacity import card_rows

PLOTS = ("roc.png", "pr.png", "calibration.png", "importance.png")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _metrics_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| model | ROC-AUC | PR-AUC | Brier | ECE | precision | recall | F1 | flagged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {_fmt(m['roc_auc'])} | {_fmt(m['pr_auc'])} | {_fmt(m['brier'], 4)} | {_fmt(m['ece'], 4)} "
            f"| {_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['f1'])} | {m['flagged_share']:.1%} |"
        )
    return lines


def _subgroup_table(subgroups: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines = [
        "| group | value | encounters | readmitted <30 | ROC-AUC | Brier | ECE | precision | recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for group, table in subgroups.items():
        for value, m in table.items():
            lines.append(
                f"| {group} | {value} | {m['n']:,} | {m['prevalence']:.1%} | {_fmt(m['roc_auc'])} "
                f"| {_fmt(m['brier'], 4)} | {_fmt(m['ece'], 4)} | {_fmt(m['precision'])} | {_fmt(m['recall'])} |"
            )
    return lines


def render(meta: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Markdown card from the bundle metadata and the metrics written beside it."""
    primary_name = "holdout" if "holdout" in metrics else "cv"
    primary = metrics[primary_name]
    prod = primary["models"]["production"]
    t = meta["thresholds"]
    data = meta["data"]
    lines = [
        f"# Model card: readmit {meta['version']}",
        "",
        "Predicts whether a diabetic patient's hospital encounter is followed by a readmission within 30 days",
        '(`readmitted == "<30"`), from what is known at discharge. It supports, and does not replace, a',
        "clinician's judgement: use it to prioritise follow-up (calls, medication review, early clinic visits),",
        "never to deny care.",
        "",
        "## Data",
        f"- UCI *Diabetes 130-US hospitals for years 1999-2008* (Strack et al. 2014, CC BY 4.0); file sha256 "
        f"(content, CR removed) `{data['sha256']}`.",
        f"- {data['rows']:,} rows read; {data['invalid_rows']:,} rejected by schema validation; "
        f"{data['excluded_rows']:,} excluded (discharged to hospice or expired: discharge_disposition_id "
        "11, 13, 14, 19, 20, 21); "
        f"{data['cohort_rows']:,} encounters of {data['cohort_patients']:,} patients in the cohort; "
        f"prevalence {data['prevalence']:.2%}.",
        "",
        "## Evaluation protocol",
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
    lines += [
        f"- Risk tiers: **high** = risk ≥ {t['high']:.3f} (top {t['high_share']:.0%} of training risk; the operating "
        f"threshold), **medium** ≥ {t['medium']:.3f} (next {t['medium_share']:.0%}), else **low**.",
        "",
        f"## Performance ({'patient-grouped holdout' if primary_name == 'holdout' else 'grouped cross-validation'})",
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
    lines += card_rows(meta.get("capacity"))
    lines += [
        "## Subgroups (production model, same evaluation set)",
        "",
        f"AUC is omitted for groups with fewer than 100 encounters or 10 readmissions. Worst subgroup AUC: "
        f"{_fmt(metrics.get('worst_subgroup_auc'))}.",
        "",
        *_subgroup_table(prod["subgroups"]),
        "",
        "## Plots",
        "",
        "![ROC](plots/roc.png) ![Precision-recall](plots/pr.png)",
        "![Calibration](plots/calibration.png) ![Factor importance (mean |SHAP| per concept)](plots/importance.png)",
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
        "- Encounter order is taken from `encounter_id`; history features count only earlier encounters present"
        " in the same input (batch) or the history store (online).",
        "- Labels arrive 30 days after discharge; realized performance can only be measured after that.",
        "- Race is used only for the fairness audit above, not as a lever: check subgroup gaps before deployment.",
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


def plots(curves: dict[str, dict[str, Any]], reliability: list[dict[str, float]], importance: dict[str, float]) -> dict:
    """PNG bytes of the card's plots, keyed by file name under ``plots/``."""
    from .plotting import png, pyplot

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
    return out


def shap_importance(contribs: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """Mean |SHAP| per clinical concept (each concept's features summed per row first), keyed by the concept's
    label: the same grouping the API's factors use, so the card and a patient's factors name the same things."""
    from .explain import importance
    from .features import FEATURE_NAMES

    if tuple(names) != FEATURE_NAMES:
        raise ValueError("SHAP columns must be the model's features, in FEATURE_NAMES order, to group them")
    return importance(contribs)
