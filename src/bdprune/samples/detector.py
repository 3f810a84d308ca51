"""Which training samples are poisoned: per-label clustering of the penultimate features (issue 23).

EP's premise (section 3.4) is that a backdoor neuron sees a two-component mixture, benign samples and the
poisoned ones. At the penultimate layer the same holds per label: the samples that carry the target label
because of a trigger form a component of their own inside that label, apart from the samples that carry it
because of their content. So, per label c:

1. the penultimate features of the samples labelled c, square-rooted (they are averages of ReLU outputs;
   the root evens out their scale), reduced to their top principal components; 2-means splits them in two;
2. each side's isolation: the distance from its centre to the nearest other group, the other side of its
   label or the centre of another label, over the median distance between label centres. A benign
   subgroup of a label (long sleeves among shirts) lies next to the rest of its label or next to a similar
   label; the trigger's samples form a group as far from the rest of their label as labels are from each
   other, and far from every other label too (they are samples of every class, pulled together by one
   feature);
3. the suspected side is the more isolated one; the verdict: the label holds a poisoned component when its
   isolation is at least `isolation_min` (chosen on development seeds, see docs/results/repair-dev.md);
4. the suspected samples of a flagged label: 2-means' side, and the samples of the other side beyond its
   upper tail on the line between the two centres (its median + `tail` robust standard deviations): a
   trigger the model learned unevenly (WaNet) leaves a tail of poisoned samples reaching towards the benign
   ones.

Scores: each sample's position along the line between the two centres of its label, standardised, towards
the suspected side (every sample is scored, flagged label or not). The runner-up entropy of each side (how
spread the highest logits besides the carried label are: samples relabelled from many classes keep a trace
of their true class) is reported as a diagnostic.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..data.imageset import ImageSet
from .clustering import principal_components, two_means
from .features import SampleFeatures, sample_features
from .result import SuspectedSamples


def runner_up_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Entropy (nats) of the distribution of the highest logit other than the carried label."""
    masked = logits.clone()
    masked[torch.arange(len(labels)), labels] = -float("inf")
    counts = torch.bincount(masked.argmax(1), minlength=logits.shape[1]).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def detect_in_features(
    features: SampleFeatures,
    *,
    dims: int = 10,
    isolation_min: float = 0.58,
    tail: float = 2.0,
    min_samples: int = 20,
    seed: int = 0,
) -> SuspectedSamples:
    """`detect_poisoned` on precomputed features (see the module's docstring)."""
    start = time.perf_counter()
    x_all = features.features.double().clamp_min(0).sqrt()
    finite = torch.isfinite(x_all).all(1) & torch.isfinite(features.logits).all(1)
    labels = torch.where(finite, features.labels, -1)  # a sample whose features are not finite is not scored
    present = [c for c in labels.unique().tolist() if c >= 0 and int((labels == c).sum()) >= min_samples]
    centres = {c: x_all[labels == c].mean(0) for c in present}
    between = torch.pdist(torch.stack(list(centres.values()))) if len(centres) > 1 else torch.ones(1)
    scale = float(between.median()) if len(between) else 1.0
    scores = torch.full((len(labels),), float("nan"))
    chosen, classes = [], []
    for c in [c for c in labels.unique().tolist() if c >= 0]:
        where = (labels == c).nonzero().flatten()
        record = {"class": c, "samples": len(where), "poisoned": False}
        if c not in centres:
            classes.append({**record, "note": f"fewer than {min_samples} samples"})
            continue
        x = x_all[where]
        directions, _ = principal_components(x, dims)
        second = two_means((x - x.mean(0)) @ directions.T, seed=seed)
        if second.all() or not second.any():
            classes.append({**record, "note": "one cluster"})
            continue
        others = [centres[k] for k in centres if k != c]
        isolation, spread = [], []
        for side in (second, ~second):
            centre, rest = x[side].mean(0), x[~side].mean(0)
            nearest = min([float((centre - rest).norm())] + [float((centre - o).norm()) for o in others])
            isolation.append(nearest / scale)
            spread.append(runner_up_entropy(features.logits[where][side], labels[where][side]))
        pick = 0 if isolation[0] >= isolation[1] else 1
        side = second if pick == 0 else ~second
        axis = x[side].mean(0) - x[~side].mean(0)
        projection = (x - x[~side].mean(0)) @ (axis / axis.norm())
        scores[where] = ((projection - projection.median()) / projection.std().clamp_min(1e-12)).float()
        k = max(features.logits.shape[1] - 1, 2)
        record.update(
            isolation=isolation[pick],
            share=float(side.double().mean()),
            runner_up_spread=spread[pick] / math.log(k),
            other_side={"isolation": isolation[1 - pick], "runner_up_spread": spread[1 - pick] / math.log(k)},
        )
        if isolation[pick] >= isolation_min:
            # members: beyond the benign side's upper tail along the axis (median + tail robust SDs), which
            # also takes the poisoned samples 2-means left with the benign side (a trigger learned unevenly)
            benign = projection[~side]
            mad = (benign - benign.median()).abs().median() * 1.4826
            members = side | (projection > benign.median() + tail * mad)
            record.update(poisoned=True, suspected=int(members.sum()), two_means_side=int(side.sum()))
            chosen.append(where[members])
        classes.append(record)
    indices = torch.cat(chosen).sort().values if chosen else torch.empty(0, dtype=torch.long)
    if not bool(finite.all()):
        classes.append({"class": None, "samples": int((~finite).sum()), "note": "features not finite: not scored"})
    return SuspectedSamples("label-clusters", indices, scores, classes, time.perf_counter() - start)


def detect_poisoned(model: nn.Module, train: ImageSet, *, batch_size: int = 512, **options) -> SuspectedSamples:
    """The suspected poisoned samples of the training set `train` the model was trained on, their scores
    and the per-label verdicts; nothing else is read (no poisoning flags, no test data).

    Args:
        model: the suspect (its mode and weights are kept).
        train: the possibly poisoned training set, with the labels it was trained on.
        batch_size: samples per forward pass.
        **options: `detect_in_features`'s (dims, isolation_min, tail, min_samples, seed).
    """
    start = time.perf_counter()
    found = detect_in_features(sample_features(model, train, batch_size=batch_size), **options)
    found.seconds = time.perf_counter() - start
    return found
