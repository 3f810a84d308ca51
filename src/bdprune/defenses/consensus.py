"""EP's "consensus" rule, step by step: from low-entropy neurons to the poisoned group, from the group to
the neurons that carry it, and how many of those to prune.

1. `nominate`: the neurons with the lowest entropy z-scores (the paper's statistic) are the candidates.
2. `bdprune.neurons.consensus`: the samples that are upper outliers in many candidates at once form the
   group (backdoor neurons share their poisoned samples; benign second modes do not).
3. `looks_like_a_class`: a group that is simply all the samples of one class (class-selective neurons
   share samples too) is not a poisoned group: then nothing is pruned. A dirty-label poisoned group is only
   part of the samples carrying its label (the target class's own samples are outside it).
4. `separation_order`: every neuron ranked by how well its maxima separate the group from the other
   samples (AUC); those above `min_auc` may be pruned, most separating first.
5. `stopping_point`: the smallest number of them after which the model predicts the group's labels for at
   most `max_hold` percent of the group, with 95% confidence (the one-sided upper bound of the measured
   share, on up to `EVAL_SAMPLES` samples of the group). The group's labels are the poisoned labels the
   backdoor was trained to produce, so this is the attack success on the training set's own poisoned
   samples: the defender's data, never the test set. Pruning stops as soon as the backdoor is gone, rather
   than taking every separating neuron (more neurons cost clean accuracy).
6. When even every separating neuron leaves the group its labels, the group is probably the poisoned samples
   mixed with a benign cluster that some candidates also single out (seen on a BadNets model: 10,246
   samples of which 5,700 poisoned). The poisoned samples are outliers of more candidates, so the group is
   split again above its threshold (`consensus_split(..., above=...)`) and steps 3-5 are retried
   (`EP(resplits=...)`, 2 by default). A group that works the first time is never split again.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..metrics import clean_accuracy
from ..neurons.layers import NeuronLayer
from ..neurons.mask import ChannelMask, masked
from ..neurons.separation import auc, shift
from ..neurons.sketch import StreamingHistogram
from ..neurons.threshold import LayerDecision

EVAL_SAMPLES = 2000  # group / other samples on which the hold and the benign accuracy are measured
CLASS_SHARE = 0.9  # a group this pure in one label, holding this share of that label's samples, is a class
# Pruning counts tried before bisecting: dense where backdoors usually sit, sparse beyond.
GRID = (0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)

Neuron = tuple[str, int]


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
    rest: ImageSet,
    *,
    max_hold: float,
    silence: str,
    batch_size: int,
) -> tuple[int, list[dict[str, float]]]:
    """The smallest k such that, with the first k neurons of `order` silenced, at most `max_hold` percent of
    `group` is still predicted as its labels (the 95% upper bound of the measured share); len(order) if no k
    reaches it. Also the trace of every k measured: {"k", "hold" (percent of the group predicted as its
    labels), "benign" (percent of `rest`)}."""
    by_name = {l.name: l for l in layers}
    measured: dict[int, dict[str, float]] = {}

    def removed(k: int) -> bool:
        if k not in measured:
            pruned: dict[str, list[int]] = {}
            for name, c in order[:k]:
                pruned.setdefault(name, []).append(c)
            with masked(model, by_name, ChannelMask(pruned), silence):
                measured[k] = {
                    "k": k,
                    "hold": 100.0 * clean_accuracy(model, group, batch_size),  # own labels
                    "benign": 100.0 * clean_accuracy(model, rest, batch_size),
                }
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


def evaluation_sets(train: ImageSet, group: torch.Tensor, size: int = EVAL_SAMPLES) -> tuple[ImageSet, ImageSet]:
    """Up to `size` samples of the group and of the rest, drawn with a fixed local generator (repeatable)."""
    draw = torch.Generator().manual_seed(0)
    inside, outside = group.nonzero().flatten(), (~group).nonzero().flatten()
    inside = inside[torch.randperm(len(inside), generator=draw)[:size]]
    outside = outside[torch.randperm(len(outside), generator=draw)[:size]]
    return train.subset(inside.sort().values), train.subset(outside.sort().values)
