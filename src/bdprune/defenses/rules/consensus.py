"""EP's rule "consensus": from low-entropy neurons to the poisoned samples, from the samples to the neurons
that carry them, and how many of those to prune.

1. `nominate`: the `candidates` neurons with the lowest entropy z-scores (the paper's statistic).
2. `bdprune.neurons.groups`: the samples that are upper outliers in many candidates at once form the group
   (backdoor neurons share their poisoned samples; benign second modes do not).
3. `looks_like_a_class`: a group that is simply all the samples of one class (class-selective neurons share
   samples too) is not a poisoned group: then nothing is pruned. A dirty-label poisoned group is only part of
   the samples carrying its label (the target class's own samples are outside it).
4. `separation_order`: every neuron ranked by how well its maxima separate the group from the other samples
   (AUC); those above `min_auc` may be pruned, most separating first.
5. `stopping_point`: the smallest number of them after which the model predicts the group's labels for at most
   `max_hold` percent of the group, with 95% confidence (the one-sided upper bound of the measured share, on up
   to `EVAL_SAMPLES` samples of the group). The group's labels are the poisoned labels the backdoor was trained
   to produce, so this is the attack success on the training set's own poisoned samples: the defender's data,
   never the test set. Pruning stops as soon as the backdoor is gone (more neurons cost clean accuracy).
6. When even every separating neuron leaves the group its labels, the group is probably the poisoned samples
   mixed with a benign cluster that some candidates also single out (seen on a BadNets model: 10,246 samples
   of which 5,700 poisoned). The poisoned samples are outliers of more candidates, so the group is split again
   above its threshold and steps 3-5 are retried (`resplits`, 2 by default). A group that works the first
   time is never split again.

It reads the training set beyond EP's scores: every sample's maxima of the candidates and, per group, every
neuron's histogram. EP's pass keeps the maxima when they fit in memory (`EP(memory_mb=...)`), and then
neither costs another pass over the training set (`bdprune.neurons.groups.SampleMaxima`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...data.imageset import ImageSet
from ...neurons.groups import SampleMaxima, consensus_split, upper_outliers
from ...neurons.layers import NeuronLayer
from ...neurons.mask import ChannelMask
from ...neurons.replay import Replay
from ...neurons.separation import auc, shift
from ...neurons.sketch import StreamingHistogram
from ...neurons.threshold import LayerDecision, select_neurons
from ...params import param
from ..scores import Scores
from .base import Neuron, Rule, RuleContext, Selection, register_rule

EVAL_SAMPLES = 2000  # group samples on which the hold is measured
CLASS_SHARE = 0.9  # a group this pure in one label, holding this share of that label's samples, is a class
# Pruning counts tried before bisecting: dense where backdoors usually sit, sparse beyond.
GRID = (0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NUM_BINS = 2048  # bins of the group histograms (EP's default resolution)


@register_rule
@dataclass(eq=False, kw_only=True)
class Consensus(Rule):
    """EP's default rule: the samples many low-entropy neurons single out at once are the suspected poisoned
    group; the neurons separating that group are pruned, most separating first, until the model no longer
    gives the group its (poisoned) labels.

    Args:
        candidates: how many low-entropy neurons nominate the poisoned group.
        outlier: robust standard deviations above a neuron's median that make a sample an upper outlier of it.
        min_auc: only neurons whose maxima separate the group from the rest with at least this AUC may be pruned
            (1: every group sample above every other sample).
        max_hold: stop pruning once at most this percent of the group is still predicted as its labels.
        resplits: when every separating neuron leaves more than `max_hold` percent of the group its labels, split
            the group again at Otsu's threshold of its own counts and retry, at most this many times.
    """

    name = "consensus"
    needs = frozenset({"train"})
    sides = ("low",)

    candidates: int = param(32, ge=2)
    outlier: float = param(4.0, gt=0.0)
    min_auc: float = param(0.95, gt=0.5, le=1.0)
    max_hold: float = param(5.0, ge=0.0, le=100.0)
    resplits: int = param(2, ge=0)

    def select(self, scored: Scores, context: RuleContext) -> Selection:
        train = context.data.require("train", "the consensus rule")
        model, layers = context.model, scored.layers
        maxima = scored.maxima or SampleMaxima(model, train, layers, context.batch_size)
        decisions = select_neurons(scored.scores, u=0.0, side="low", rule="zscore")  # z does not depend on u
        values, columns = maxima.columns(nominate(decisions, self.candidates))
        outliers = upper_outliers(values, self.outlier)
        split = consensus_split(outliers)
        warnings: list[str] = []
        info = {
            "candidates": [[name, c] for name, c in columns],
            "count_histogram": torch.bincount(split.counts, minlength=values.shape[1] + 1).tolist(),
            "attempts": [],
        }
        order: list[Neuron] = []
        aucs: dict[str, torch.Tensor] = {}
        chosen = None
        for attempt in range(self.resplits + 1):
            group = split.members
            why_not = (
                "no consensus group: no set of samples stands out in the candidate neurons"
                if not 0 < int(group.sum()) < len(train)
                else looks_like_a_class(train.labels, group)
            )
            if why_not is not None:  # on a re-split: keep what the last group pruned
                if attempt == 0:
                    warnings.append(f"{why_not}; nothing pruned")
                break
            info.update(group_size=int(group.sum()), split_threshold=split.threshold, eta=split.eta)
            sketches = maxima.histograms(group.long(), num_bins=NUM_BINS, progress=context.progress)
            separating, aucs = separation_order(sketches, self.min_auc)
            inside = group_sample(train, group)
            k, info["trace"] = stopping_point(
                model, layers, separating, inside, max_hold=self.max_hold, silence=context.silence,
                batch_size=context.batch_size,
            )  # fmt: skip
            order, hold, chosen = separating[:k], info["trace"][-1]["hold"], group
            removed = upper_bound(hold, len(inside)) <= self.max_hold
            info["attempts"].append(
                {
                    "split_threshold": split.threshold,
                    "group_size": int(group.sum()),
                    "separating": len(separating),
                    "pruned": k,
                    "hold": hold,
                    "removed": removed,
                }
            )
            if removed:
                break
            # Pruning every neuron that separates the group leaves its own (poisoned) labels on it: it is
            # probably poisoned samples mixed with a benign cluster that some candidates share. The poisoned
            # samples are outliers of more candidates: split the group again and retry on its upper part.
            split = consensus_split(outliers, above=int(split.threshold))
        attempts = info["attempts"]
        if attempts and not attempts[-1]["removed"]:
            last = attempts[-1]
            warnings.append(
                f"{len(attempts)} group(s) tried: the last one's {last['separating']} separating neurons "
                f"(AUC > {self.min_auc:g}) leave {last['hold']:.1f}% of it with its labels; all are pruned"
            )
        for d in decisions.values():  # the z-scores only ranked the candidates: no threshold, no caveat of it
            d.threshold, d.note = None, None
        layer_extra = {l.name: {"auc": aucs[l.name].tolist() if l.name in aucs else None} for l in layers}
        return Selection(decisions, order, warnings, {"consensus": info}, layer_extra, group=chosen)


def nominate(decisions: dict[str, LayerDecision], count: int) -> dict[str, list[int]]:
    """The `count` neurons with the lowest per-layer z-scores, by layer."""
    ranked = sorted(
        (float(d.z[c]), name, c) for name, d in decisions.items() for c in range(len(d.z)) if torch.isfinite(d.z[c])
    )[:count]
    wanted: dict[str, list[int]] = {}
    for _, name, c in ranked:
        wanted.setdefault(name, []).append(c)
    return wanted


def looks_like_a_class(labels: torch.Tensor, group: torch.Tensor) -> str | None:
    """Why `group` is one class's samples rather than a poisoned group, or None."""
    group_labels = labels[group]
    if len(group_labels) == 0:
        return None
    dominant = int(torch.bincount(group_labels).argmax())
    purity = float((group_labels == dominant).float().mean())
    share = float((group & (labels == dominant)).sum() / (labels == dominant).sum().clamp(min=1))
    if purity >= CLASS_SHARE and share >= CLASS_SHARE:
        return (
            f"the group is {share:.0%} of the samples labelled {dominant} and {purity:.0%} of it carries that "
            "label: a class, not a poisoned subset"
        )
    return None


def separation_order(sketches: dict[str, StreamingHistogram], min_auc: float) -> tuple[list[Neuron], dict]:
    """Neurons whose maxima separate the group (histogram group 1) from the rest with AUC above `min_auc`,
    most separating first (AUC, then shift), and every neuron's AUC by layer."""
    aucs = {name: auc(s).cpu() for name, s in sketches.items()}
    ranked = []
    for name, s in sketches.items():
        shifts = shift(s).cpu()
        for c in (aucs[name] > min_auc).nonzero().flatten().tolist():
            ranked.append((float(aucs[name][c]), float(shifts[c]), name, c))
    ranked.sort(reverse=True)
    return [(name, c) for _, _, name, c in ranked], aucs


def upper_bound(percent: float, n: int, z: float = 1.645) -> float:
    """One-sided 95% upper confidence bound of a share measured as `percent` on `n` samples (Wilson score)."""
    if n == 0:
        return 100.0
    p = percent / 100.0
    centre = p + z * z / (2 * n)
    spread = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return 100.0 * (centre + spread) / (1 + z * z / n)


def stopping_point(
    model: nn.Module,
    layers: list[NeuronLayer],
    order: list[Neuron],
    group: ImageSet,
    *,
    max_hold: float,
    silence: str,
    batch_size: int,
) -> tuple[int, list[dict[str, float]]]:
    """The smallest k such that, with the first k neurons of `order` silenced, at most `max_hold` percent of
    `group` is still predicted as its labels (the 95% upper bound of the measured share); len(order) if no k
    reaches it. Also the trace of every k measured: {"k", "hold" (percent of the group predicted as its
    labels)}."""
    measured: dict[int, dict[str, float]] = {}
    replay, labels = Replay(model, group, layers, batch_size=batch_size), group.labels.cpu()
    replay.prepare([name for name, _ in order])

    def removed(k: int) -> bool:
        if k not in measured:
            pruned: dict[str, list[int]] = {}
            for name, c in order[:k]:
                pruned.setdefault(name, []).append(c)
            hold = 100.0 * float((replay.predictions(ChannelMask(pruned), silence) == labels).float().mean())
            measured[k] = {"k": k, "hold": hold}  # percent of the group still predicted as its own labels
        return upper_bound(measured[k]["hold"], len(group)) <= max_hold

    below, previous = None, 0
    for k in sorted({min(k, len(order)) for k in GRID} | {len(order)}):
        if removed(k):
            below = k
            break
        previous = k
    if below is None:
        return len(order), [measured[k] for k in sorted(measured)]
    lo, hi = previous, below
    while hi - lo > 1:  # the hold falls with k, roughly monotonically: bisect the last step
        mid = (lo + hi) // 2
        if removed(mid):
            hi = mid
        else:
            lo = mid
    return hi, [measured[k] for k in sorted(measured)]


def group_sample(train: ImageSet, group: torch.Tensor, size: int = EVAL_SAMPLES) -> ImageSet:
    """Up to `size` samples of the group, drawn with a fixed local generator (repeatable)."""
    draw = torch.Generator().manual_seed(0)
    inside = group.nonzero().flatten()
    inside = inside[torch.randperm(len(inside), generator=draw)[:size]]
    return train.subset(inside.sort().values)
