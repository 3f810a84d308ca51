"""The figures of the report (PNG), drawn from the cells' records alone (plain data): Figure 2 (pre-activation
distributions), Figure 7 (sensitivity against entropy and KL), Figure 9 (ACC / ASR against u) and section
5.3's BNP with few clean samples."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from ...plots import draw_gaussians, draw_histograms, pyplot, save_figure

Records = list[dict[str, Any]]


def figure2(record: dict[str, Any], path: Path) -> Path:
    """(a, b) per-sample maxima of a benign and a backdoor neuron on clean and triggered inputs; (c, d) their
    clean pre-activations against the Gaussian of their BN statistics (the paper's Figure 2)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9.0, 6.0))
    draw_histograms(record["histograms"], [axes[0][0], axes[0][1]])
    draw_gaussians(record["gaussians"], [axes[1][0], axes[1][1]])
    for ax, entry, letter in zip([a for row in axes for a in row], record["histograms"] + record["gaussians"], "abcd"):
        ax.set_title(f"({letter}) {entry['role']} neuron: {entry['layer']} #{entry['channel']}", fontsize=9)
    fig.suptitle(
        "A benign and a backdoor neuron: (a, b) maxima, clean vs. triggered; (c, d) clean values vs. BN's Gaussian",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, path)


def figure7(by_attack: dict[str, dict[str, Any]], path: Path) -> Path:
    """One row per attack: sensitivity (rise of the backdoor loss when pruned) against EP's entropy and
    against BNP's KL, every neuron coloured by its layer's depth (the colour bar)."""
    plt = pyplot()
    fig, axes = plt.subplots(
        len(by_attack), 2, figsize=(9.0, 3.4 * len(by_attack) + 0.6), squeeze=False, layout="constrained"
    )
    for (attack, record), (left, right) in zip(by_attack.items(), axes):
        depth = len(record["layers"])
        for i, layer in enumerate(record["layers"]):
            colour = plt.cm.viridis(i / max(depth - 1, 1))
            for ax, key in ((left, "entropy"), (right, "kl")):
                pairs = [(s, g) for s, g in zip(layer[key], layer["gain"]) if s is not None and g is not None]
                ax.scatter([p[0] for p in pairs], [p[1] for p in pairs], s=6, color=colour, alpha=0.7, linewidths=0)
        rho = record.get("metrics", {})
        left.set_xlabel("standardised entropy (EP)")
        right.set_xlabel("KL divergence (BNP)")
        right.set_xscale("symlog", linthresh=1e-3)
        for ax, key in ((left, "spearman_gain_vs_entropy"), (right, "spearman_gain_vs_kl")):
            value = rho.get(key)
            ax.set_ylabel("sensitivity: rise of L_bd (nats)")
            ax.set_title(f"{attack}: Spearman {value:+.2f}" if value is not None else attack, fontsize=9)
            ax.grid(alpha=0.3)
    scale = plt.cm.ScalarMappable(cmap=plt.cm.viridis, norm=plt.Normalize(0.0, 1.0))
    fig.colorbar(scale, ax=axes, label="depth of the neuron's layer (0: first, 1: last)", shrink=0.8)
    fig.suptitle("Backdoor sensitivity of every neuron against EP's and BNP's scores")
    return save_figure(fig, path)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def figure9(curves: dict[tuple[str, str], Records], path: Path) -> Path:
    """ACC and ASR against u, one line per attack (mean over seeds), one row per method."""
    plt = pyplot()
    methods = list(dict.fromkeys(m for _, m in curves))
    attacks = list(dict.fromkeys(a for a, _ in curves))  # one colour per attack in every panel
    fig, axes = plt.subplots(len(methods), 2, figsize=(10.0, 3.4 * len(methods)), squeeze=False)
    for (attack, method), records in curves.items():
        row = axes[methods.index(method)]
        us = [p["value"] for p in records[0]["points"]]
        for ax, metric in zip(row, ("acc", "asr")):
            ax.plot(
                us,
                [_mean([r["points"][i][metric] for r in records]) for i in range(len(us))],
                marker=".",
                color=f"C{attacks.index(attack) % 10}",
                label=attack,
            )
            ax.set_title(f"{method}: {metric.upper()} after pruning", fontsize=9)
            ax.set_xlabel(f"u ({method})")
            ax.set_ylabel(f"{metric.upper()} % (test)")
            ax.grid(alpha=0.3)
    for ax in axes.flat:  # a method's row may lack an attack that another has
        ax.legend(fontsize=7)
    fig.suptitle("ACC and ASR against u, one line per attack (mean over seeds)")
    fig.tight_layout()
    return save_figure(fig, path)


def figure_samples(points: dict[str, dict[int, list[dict[str, float]]]], path: Path) -> Path:
    """BNP's ACC and ASR against the number of clean samples, one line per attack (mean +- std over seeds)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.6))
    for attack, by_n in points.items():
        ns = sorted(by_n)
        for ax, metric in zip(axes, ("acc", "asr")):
            values = [[m[metric] for m in by_n[n]] for n in ns]
            means = [_mean(v) for v in values]
            stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            ax.errorbar(ns, means, yerr=stds, marker="o", capsize=3, label=attack)
            ax.set_xscale("log")
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.minorticks_off()
            ax.set_title(f"{metric.upper()} after BNP", fontsize=9)
            ax.set_xlabel("clean samples")
            ax.set_ylabel(f"{metric.upper()} % after BNP")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("BNP with few clean samples, one line per attack (mean ± std over seeds)")
    fig.tight_layout()
    return save_figure(fig, path)
