"""Figures of a defense report: neuron scores per layer, and the pre-activations of the most suspicious
neurons (benign vs. poisoned for EP, clean vs. BN-induced Gaussian for BNP), like the paper's Figure 2.

Plots read only the report (plain data), so a saved JSON report can be re-plotted without the model.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from .defenses.base import DefenseReport
from .files import atomic_write_bytes


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a screen
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


_pyplot, _save = pyplot, save_figure  # their former names (bdprune.diagnostics uses them)


def plot_scores(report: DefenseReport, path: str | Path) -> Path:
    """One strip per layer of every neuron's standardised score; pruned neurons in red, the threshold dashed."""
    plt = pyplot()
    layers = report.layers
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(layers) + 2), 4.2))
    for i, layer in enumerate(layers):
        z = [v if v is not None else math.nan for v in layer.z]
        pruned = set(layer.pruned)
        xs = [i + 0.25 * (((c * 0.618) % 1.0) - 0.5) for c in range(len(z))]  # deterministic jitter
        ax.scatter(
            [x for c, x in enumerate(xs) if c not in pruned],
            [v for c, v in enumerate(z) if c not in pruned],
            s=6,
            color="tab:blue",
            alpha=0.6,
            linewidths=0,
        )
        ax.scatter([xs[c] for c in sorted(pruned)], [z[c] for c in sorted(pruned)], s=14, color="tab:red", linewidths=0)
    u = report.config.get("u")
    side = -1.0 if report.method == "ep" else 1.0
    if u is not None and report.config.get("rule") in ("zscore", "mad"):
        ax.axhline(side * u, color="tab:red", linestyle="--", linewidth=1, label=f"threshold (u = {u:g})")
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([l.name for l in layers], rotation=75, fontsize=7)
    what = {"ep": "standardised entropy", "bnp": "KL divergence"}.get(report.method, "score")
    ax.set_ylabel(f"z-score of {what} ({report.config.get('rule', 'zscore')})")
    ax.set_title(
        f"{report.method.upper()}: {report.num_pruned} neurons pruned, {report.samples} samples, "
        f"{report.seconds:.1f} s",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def _grid(n: int):
    plt = pyplot()
    cols = min(3, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.8 * rows), squeeze=False)
    return fig, [ax for row in axes for ax in row]


def draw_histograms(entries: list[dict[str, Any]], axes) -> None:
    """Per-sample maxima of neurons (benign / poisoned groups), one entry per axis."""
    colours = {"benign": "tab:blue", "poisoned": "tab:red", "all": "tab:gray"}
    for ax, e in zip(axes, entries):
        edges = e["edges"]
        for name, counts in zip(e["groups"], e["counts"]):
            ax.stairs(counts, edges, fill=True, alpha=0.5, color=colours.get(name, "tab:gray"), label=name)
        ax.set_title(f"{e['layer']} #{e['channel']}  z = {e['z']:.2f}", fontsize=9)
        ax.set_xlabel("spatial max of pre-activation", fontsize=8)
        ax.set_ylabel("samples", fontsize=8)
        ax.legend(fontsize=7)


def draw_gaussians(entries: list[dict[str, Any]], axes) -> None:
    """Clean pre-activations of neurons against the Gaussian of their BN statistics, one entry per axis."""
    for ax, e in zip(axes, entries):
        m1, s1 = e["clean_mean"], math.sqrt(e["clean_var"])
        m2, s2 = e["running_mean"], math.sqrt(e["running_var"])
        lo, hi = min(m1 - 4 * s1, m2 - 4 * s2), max(m1 + 4 * s1, m2 + 4 * s2)
        xs = [lo + (hi - lo) * i / 300 for i in range(301)]

        def pdf(x, m, s):
            return math.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))

        if "values" in e:
            ax.stairs(
                e["values"]["counts"],
                e["values"]["edges"],
                fill=True,
                alpha=0.35,
                color="tab:blue",
                label="clean samples",
            )
        ax.plot(xs, [pdf(x, m1, s1) for x in xs], color="tab:blue", label="clean Gaussian")
        ax.plot(xs, [pdf(x, m2, s2) for x in xs], color="tab:green", label="BN statistics")
        ax.set_title(f"{e['layer']} #{e['channel']}  z = {e['z']:.2f}", fontsize=9)
        ax.set_xlabel("pre-activation (BN input)", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.legend(fontsize=7)


def plot_neurons(report: DefenseReport, path: str | Path) -> Path | None:
    """Pre-activation distributions of the report's most suspicious neurons; None if it holds none."""
    entries = report.extra.get("histograms") or report.extra.get("gaussians")
    if not entries:
        return None
    fig, axes = _grid(len(entries))
    (draw_histograms if "histograms" in report.extra else draw_gaussians)(entries, axes)
    for ax in axes[len(entries) :]:
        ax.axis("off")
    fig.suptitle(f"{report.method.upper()}: the most suspicious neurons", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
