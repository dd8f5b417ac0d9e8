"""`readmit drift`: score a file (or read the prediction log), compare with the bundle's reference, and write
a Markdown + HTML report with PNG plots."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from chalicelib.features.drift import DriftReport


def table(report: DriftReport, top: int = 15) -> str:
    rows = sorted(report.features, key=lambda f: -f.psi)[:top]
    lines = [
        f"{'feature':32s} {'kind':11s} {'PSI':>7s} {'test':>5s} {'stat':>9s} {'p':>9s}  drifted",
        *(
            f"{f.feature:32s} {f.kind:11s} {f.psi:7.3f} {f.test:>5s} {f.statistic:9.3f} {f.p_value:9.2g}  "
            f"{'YES' if f.drifted else ''}"
            for f in rows
        ),
        "",
        f"risk PSI {report.risk_psi:.3f}; high-risk rate {report.high_risk_rate:.1%} "
        f"(training {report.reference_high_risk_rate:.1%}); mean risk {report.mean_risk:.3f} "
        f"(training {report.reference_mean_risk:.3f}); rows {report.n:,}",
        "DRIFT: " + " | ".join(report.alerts) if report.alerts else "no drift over thresholds",
    ]
    return "\n".join(lines)


def _plot(report: DriftReport, profile: dict[str, Any], X: np.ndarray, risk: np.ndarray) -> dict[str, bytes]:
    from chalicelib.core.plotting import png, pyplot
    from chalicelib.features.drift import bin_fractions, category_fractions
    from chalicelib.features.table import FEATURE_NAMES

    plt = pyplot()
    out: dict[str, bytes] = {}

    def save(fig: Any, name: str) -> None:
        out[name] = png(fig, dpi=80)

    top = sorted(report.features, key=lambda f: -f.psi)[:4]
    fig, axes = plt.subplots(1, len(top) + 1, figsize=(4 * (len(top) + 1), 3.2))
    ref_risk = np.array(profile["risk"]["fractions"])
    cur_risk = bin_fractions(risk, profile["risk"]["edges"])
    x = np.arange(len(ref_risk))
    axes[0].bar(x - 0.2, ref_risk, 0.4, label="training")
    axes[0].bar(x + 0.2, cur_risk, 0.4, label="current")
    axes[0].set(title=f"risk (PSI {report.risk_psi:.2f})", xlabel="decile bin of training risk")
    axes[0].legend(fontsize=7)
    for ax, f in zip(axes[1:], top, strict=True):
        ref = profile["features"][f.feature]
        col = X[:, FEATURE_NAMES.index(f.feature)].astype(np.float64)
        cur = (
            bin_fractions(col, ref["edges"]) if ref["kind"] == "numeric" else category_fractions(col, ref["categories"])
        )
        x = np.arange(len(cur))
        ax.bar(x - 0.2, ref["fractions"], 0.4, label="training")
        ax.bar(x + 0.2, cur, 0.4, label="current")
        ax.set(title=f"{f.feature} (PSI {f.psi:.2f})", xlabel="bin" if ref["kind"] == "numeric" else "category")
    save(fig, "drift.png")
    return out


def write(report: DriftReport, profile: dict[str, Any], X: np.ndarray, risk: np.ndarray, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in _plot(report, profile, X, risk).items():
        (out_dir / name).write_bytes(data)
    text = table(report, top=25)
    md = "\n".join(
        [
            "# Drift report",
            "",
            f"**{'DRIFT' if report.drifted else 'No drift'}** over thresholds "
            f"(feature PSI > {report.thresholds['max_feature_psi']}, risk PSI > {report.thresholds['max_risk_psi']}, "
            f"high-risk rate change > {report.thresholds['max_high_risk_rate_change']:.0%}).",
            "",
            *(f"- {a}" for a in report.alerts),
            "",
            "```",
            text,
            "```",
            "",
            "![training vs current](drift.png)",
            "",
        ]
    )
    (out_dir / "drift_report.md").write_text(md)
    (out_dir / "drift_report.html").write_text(
        "<!doctype html><meta charset=utf-8><title>readmit drift report</title>"
        f"<h1>Drift report</h1><p><b>{'DRIFT' if report.drifted else 'No drift'}</b></p>"
        + "".join(f"<p>{html.escape(a)}</p>" for a in report.alerts)
        + f"<pre>{html.escape(text)}</pre><img src=drift.png alt='training vs current distributions'>"
    )
    return out_dir / "drift_report.md"
