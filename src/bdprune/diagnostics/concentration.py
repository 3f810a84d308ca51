"""How many backdoor neurons does a model have? Prune in order of separation and watch the ASR fall.

EP and BNP assume a backdoor lives in a few neurons (the paper's Assumption 1 and section 4.4: a handful
of outliers per layer). Whether a given model satisfies that is a property of the model, measurable when
the poisoned samples are known (a run made by `bdprune train` records them):

1. rank every neuron by how well its per-sample pre-activation maxima separate poisoned from benign
   training samples (AUC, see `bdprune.neurons.separation`), most separating first;
2. silence neurons in that order and measure ACC and ASR after the top k, for a grid of k;
3. k* = the smallest k with ASR below the target (5%): the backdoor's size in neurons.

The same curve drawn in the order of a defense's own scores (EP's entropy z-scores, BNP's KL z-scores)
shows whether a defense that fails ranks the wrong neurons (its k* is far above the separation order's) or
ranks the right ones and only stops too early (its k* is close, its rule prunes fewer).

This is a diagnostic: it reads which samples are poisoned and the test set, so nothing here may choose a
defense's parameters.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks.base import Attack
from ..attacks.poison import poison_test_set
from ..data.imageset import ImageSet
from ..defenses.base import DefenseReport
from ..defenses.pruning import most_suspicious
from ..defenses.scores import neuron_layers
from ..files import atomic_write_json, jsonable
from ..neurons.collect import collect_max_histograms
from ..neurons.layers import NeuronLayer
from ..neurons.mask import ChannelMask
from ..neurons.replay import Replay
from ..neurons.separation import auc, shift

TARGET_ASR = 5.0  # percent: "the backdoor is removed" (the paper's EP/BNP reach 0.6 to 3.4 on CIFAR-10)
# Pruning counts tried: dense where backdoors usually sit (a few to a few dozen neurons), sparse beyond.
DEFAULT_KS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)

Neuron = tuple[str, int]  # (layer name, channel)


@dataclass
class PruningCurve:
    """ACC / ASR (percent) after silencing the first k neurons of `order`, for several k.

    Attributes:
        label: what ordered the neurons ("separation", "ep", "bnp", ...).
        order: the neurons, first pruned first (only as many as the largest k tried).
        points: [{"k", "acc", "asr"}] in increasing k.
        k_star: the smallest k tried (refined by bisection) with ASR < target; None if never reached.
        rule_k: how many neurons the defense's own rule pruned (None for the separation order).
    """

    label: str
    order: list[Neuron]
    points: list[dict[str, float]]
    k_star: int | None
    rule_k: int | None = None

    def at(self, k: int) -> dict[str, float] | None:
        return next((p for p in self.points if p["k"] == k), None)


@dataclass
class ConcentrationReport:
    """Separation scores of every neuron and the pruning curves."""

    target_asr: float
    layers: list[dict[str, Any]]  # [{"name", "channels", "auc": [...], "shift": [...]}]
    curves: dict[str, PruningCurve]
    samples: dict[str, int]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def k_star(self) -> int | None:
        """k* of the separation order: the yardstick."""
        return self.curves["separation"].k_star if "separation" in self.curves else None

    def top(self, k: int) -> list[dict[str, Any]]:
        """The k most separating neurons with their scores, most separating first."""
        index = {layer["name"]: layer for layer in self.layers}
        return [
            {"layer": name, "channel": c, "auc": index[name]["auc"][c], "shift": index[name]["shift"][c]}
            for name, c in self.curves["separation"].order[:k]
        ]

    def layer_counts(self, k: int | None = None) -> dict[str, int]:
        """How many of the first k (default k*) separation-ordered neurons each layer holds."""
        k = self.k_star if k is None else k
        counts: dict[str, int] = {}
        for name, _ in self.curves["separation"].order[: k or 0]:
            counts[name] = counts.get(name, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["k_star"] = self.k_star
        out["k_star_layers"] = self.layer_counts()
        return jsonable(out)

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())


def neuron_separation(
    model: nn.Module,
    data: ImageSet,
    poisoned: torch.Tensor,
    layers: list[NeuronLayer],
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: (AUC, shift) of every neuron between the poisoned and benign samples of `data`.

    Args:
        model: the suspicious model (not modified).
        data: samples of both kinds, e.g. a run's mixed training set.
        poisoned: (len(data),) bool, which samples carry the trigger.
        layers: the neuron layers to score.
    """
    if poisoned.shape != (len(data),) or poisoned.dtype != torch.bool:
        raise ValueError(f"poisoned must be a ({len(data)},) bool tensor, got {poisoned.dtype} {tuple(poisoned.shape)}")
    if not bool(poisoned.any()) or bool(poisoned.all()):
        raise ValueError("the separation of backdoor neurons needs both poisoned and benign samples")
    sketches = collect_max_histograms(
        model, data, layers, batch_size=batch_size, groups=poisoned.long(), progress=progress
    )
    return {name: (auc(s).cpu(), shift(s).cpu()) for name, s in sketches.items()}


def separation_order(scores: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[Neuron]:
    """Neurons by AUC, highest first; ties (AUC saturates at 1 for strong triggers) broken by shift."""
    ranked = []
    for name, (a, s) in scores.items():
        for c in range(len(a)):
            if torch.isfinite(a[c]):
                ranked.append((float(a[c]), float(s[c]) if torch.isfinite(s[c]) else 0.0, name, c))
    ranked.sort(key=lambda r: (r[0], r[1]), reverse=True)
    return [(name, c) for _, _, name, c in ranked]


def report_order(report: DefenseReport, side: str) -> list[Neuron]:
    """A pruning defense's neurons ranked by its own per-layer z-scores, most suspicious first; for EP's rule
    "consensus", by the AUC against its group (the order it prunes in).

    side: "low" (EP: low entropy is suspicious) or "high" (BNP: high KL).
    """
    if "consensus" in report.extra and any(l.extra.get("auc") for l in report.layers):
        ranked_auc = [
            (a, l.name, c)
            for l in report.layers
            for c, a in enumerate(l.extra.get("auc") or [])
            if a is not None and a == a
        ]
        ranked_auc.sort(key=lambda r: r[0], reverse=True)
        return [(name, c) for _, name, c in ranked_auc]
    return [(name, c) for name, c, _ in most_suspicious(report, sum(l.channels for l in report.layers), side)]


def pruning_curve(
    model: nn.Module,
    order: Sequence[Neuron],
    test: ImageSet,
    attack: Attack,
    layers: list[NeuronLayer],
    *,
    label: str,
    ks: Iterable[int] = DEFAULT_KS,
    target_asr: float = TARGET_ASR,
    past_target: int = 2,
    silence: str = "bn",
    batch_size: int = 512,
    refine: bool = True,
    rule_k: int | None = None,
) -> PruningCurve:
    """ACC / ASR after silencing the first k neurons of `order` (the model is restored afterwards).

    Args:
        model: the suspicious model; neurons are silenced in place for each measurement and restored.
        order: neurons, first pruned first.
        test, attack: where ACC and ASR are measured.
        layers: the model's neuron layers (as found by `neuron_layers`).
        label: the curve's name.
        ks: pruning counts to try, increasing (clipped to len(order)).
        target_asr: percent; k* is the first k with ASR below it.
        past_target: keep measuring this many grid points after the target is first met (for the plot).
        silence: how a pruned neuron is silenced (see `bdprune.neurons.mask`).
        refine: bisect between the last grid point above the target and the first below, for an exact k*.
        rule_k: the defense rule's own pruning count, measured too and recorded.
    """
    order = list(order)
    cache: dict[int, dict[str, float]] = {}
    triggered = poison_test_set(test, attack)  # what `evaluate` measures the ASR on
    replays = [(Replay(model, s, layers, batch_size=batch_size), s.labels.cpu()) for s in (test, triggered)]
    for replay, _ in replays:
        replay.prepare([name for name, _ in order])

    def measure(k: int) -> dict[str, float]:
        if k not in cache:
            pruned: dict[str, list[int]] = {}
            for name, c in order[:k]:
                pruned.setdefault(name, []).append(c)
            mask = ChannelMask({n: sorted(cs) for n, cs in pruned.items()})
            acc, asr = (100.0 * float((r.predictions(mask, silence) == y).float().mean()) for r, y in replays)
            cache[k] = {"acc": acc, "asr": asr}
        return cache[k]

    grid = sorted({min(int(k), len(order)) for k in ks})
    k_star, below, after = None, None, 0
    previous = None
    for k in grid:
        point = measure(k)
        if point["asr"] < target_asr:
            if below is None:
                below = (previous, k)
            after += 1
            if after > past_target:
                break
        previous = k
    if below is not None:
        lo, hi = below
        if refine and lo is not None:
            while hi - lo > 1:  # first crossing, assuming ASR falls with k between two grid points
                mid = (lo + hi) // 2
                if measure(mid)["asr"] < target_asr:
                    hi = mid
                else:
                    lo = mid
        k_star = hi
    if rule_k is not None and rule_k <= len(order):
        measure(rule_k)
    points = [{"k": k, **cache[k]} for k in sorted(cache)]
    last = max(cache) if cache else 0
    return PruningCurve(label=label, order=order[:last], points=points, k_star=k_star, rule_k=rule_k)


def concentration(
    model: nn.Module,
    data: ImageSet,
    poisoned: torch.Tensor,
    test: ImageSet,
    attack: Attack,
    *,
    reports: dict[str, tuple[DefenseReport, str]] | None = None,
    ks: Iterable[int] = DEFAULT_KS,
    target_asr: float = TARGET_ASR,
    silence: str = "bn",
    batch_size: int = 256,
    progress: bool = False,
) -> ConcentrationReport:
    """The concentration diagnostic of a backdoored model.

    Args:
        model: the suspicious model (restored after every measurement).
        data, poisoned: samples with known poisoned flags, e.g. a run's mixed training set and its record.
        test, attack: the clean test samples (a subset is fine) and the attack, for ACC and ASR.
        reports: optional defense reports to draw in their own order: label -> (report, side), side "low"
            for EP, "high" for BNP.
        ks, target_asr, silence: see `pruning_curve`.
    """
    start = time.perf_counter()
    layers = neuron_layers(model, data, require_bn=False)
    scores = neuron_separation(model, data, poisoned, layers, batch_size=batch_size, progress=progress)
    ks = tuple(ks)
    curves = {
        "separation": pruning_curve(
            model,
            separation_order(scores),
            test,
            attack,
            layers,
            label="separation",
            ks=ks,
            target_asr=target_asr,
            silence=silence,
        )
    }
    for label, (report, side) in (reports or {}).items():
        curves[label] = pruning_curve(
            model,
            report_order(report, side),
            test,
            attack,
            layers,
            label=label,
            ks=ks,
            target_asr=target_asr,
            silence=silence,
            rule_k=report.num_pruned,
        )
    layer_scores = [
        {"name": l.name, "channels": l.channels, "auc": scores[l.name][0].tolist(), "shift": scores[l.name][1].tolist()}
        for l in layers
    ]
    return ConcentrationReport(
        target_asr=target_asr,
        layers=layer_scores,
        curves=curves,
        samples={"data": len(data), "poisoned": int(poisoned.sum()), "test": len(test)},
        seconds=time.perf_counter() - start,
    )


def plot_concentration(report: ConcentrationReport, path: str | Path, title: str = "") -> Path:
    """ASR and ACC against the number of pruned neurons, one line per order; k* and each rule's count marked."""
    from ..plots import _pyplot, _save

    plt = _pyplot()
    fig, (ax_asr, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"separation": "black", "ep": "tab:blue", "bnp": "tab:red"}
    for label, curve in report.curves.items():
        ks = [max(p["k"], 0.7) for p in curve.points]  # k = 0 drawn at the left edge of the log axis
        color = colors.get(label.split()[0], None)
        name = (
            f"{label} (k* {curve.k_star if curve.k_star is not None else '>' + str(max(p['k'] for p in curve.points))})"
        )
        ax_asr.plot(ks, [p["asr"] for p in curve.points], marker=".", color=color, label=name)
        ax_acc.plot(ks, [p["acc"] for p in curve.points], marker=".", color=color, label=name)
        if curve.rule_k is not None and curve.at(curve.rule_k):
            point = curve.at(curve.rule_k)
            ax_asr.plot([max(curve.rule_k, 0.7)], [point["asr"]], marker="o", ms=9, mfc="none", color=color)
            ax_acc.plot([max(curve.rule_k, 0.7)], [point["acc"]], marker="o", ms=9, mfc="none", color=color)
    ax_asr.axhline(report.target_asr, color="grey", ls="--", lw=0.8)
    for ax, what in ((ax_asr, "ASR %"), (ax_acc, "ACC %")):
        ax.set_xscale("log")
        ax.set_xlabel("neurons pruned (k), in each order; circle: the rule's own count")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    ax_asr.legend(fontsize=8)
    fig.suptitle(title or f"backdoor concentration: k* = {report.k_star} (ASR < {report.target_asr:g}%)")
    return _save(fig, path)
