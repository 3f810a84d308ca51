"""Which training samples are poisoned: per-class clustering of the penultimate features (issue 23).

EP's premise (section 3.4) is that a backdoor neuron sees a two-component mixture, benign samples and the
poisoned ones. At the penultimate layer the same holds per label: the samples that carry the target label
because of a trigger form a component of their own inside that label, apart from the samples that carry it
because of their content. So, per label c:

1. the penultimate features of the samples labelled c, square-rooted (they are averages of ReLU outputs;
   the root evens out their scale), reduced to their top principal components;
2. 2-means; the projection on the line through the two centres; Otsu's split of that projection and eta,
   its between-group share of the variance (2 / pi for one Gaussian cut in two, 1 for two point masses);
3. the verdict: the label holds a poisoned component when eta >= `eta_min` (a clearly bimodal label);
   the suspected side is the one whose members' runner-up classes are the more spread out (`pick`).

Scores are the standardised projection towards the suspected side (every sample of every label is scored).
A clean model's labels are single blobs (eta near 2 / pi) and nothing is flagged.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..data.imageset import ImageSet
from .clustering import otsu, principal_components, two_means
from .features import SampleFeatures, sample_features
from .result import SuspectedSamples


def runner_up_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Entropy (nats) of the distribution of the highest logit other than the carried label."""
    masked = logits.clone()
    masked[torch.arange(len(labels)), labels] = -float("inf")
    counts = torch.bincount(masked.argmax(1), minlength=logits.shape[1]).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def split_label(features: SampleFeatures, where: torch.Tensor, *, dims: int, seed: int) -> dict:
    """The 2-means split of one label's samples (positions `where`) and its statistics."""
    x = features.features[where].double().clamp_min(0).sqrt()
    directions, _ = principal_components(x, dims)
    reduced = (x - x.mean(0)) @ directions.T
    second = two_means(reduced, seed=seed)
    if second.all() or not second.any():
        return {"eta": 0.0}
    axis = reduced[second].mean(0) - reduced[~second].mean(0)
    projection = reduced @ (axis / axis.norm())  # grows towards the second cluster
    cut, eta = otsu(projection)
    upper = projection > cut
    spread = [
        runner_up_entropy(features.logits[where][side], features.labels[where][side]) if side.any() else 0.0
        for side in (upper, ~upper)
    ]
    return {"eta": eta, "projection": projection, "upper": upper, "spread": spread}


def detect_in_features(
    features: SampleFeatures,
    *,
    dims: int = 10,
    eta_min: float = 0.8,
    min_samples: int = 20,
    seed: int = 0,
) -> SuspectedSamples:
    """`detect_poisoned` on precomputed features (see the module's docstring)."""
    start = time.perf_counter()
    scores = torch.full((len(features.labels),), float("nan"))
    chosen, classes = [], []
    for c in features.labels.unique().tolist():
        where = (features.labels == c).nonzero().flatten()
        record = {"class": c, "samples": len(where), "poisoned": False}
        if len(where) < min_samples:
            classes.append({**record, "note": f"fewer than {min_samples} samples"})
            continue
        split = split_label(features, where, dims=dims, seed=seed)
        record["eta"] = split["eta"]
        if "projection" not in split:
            classes.append(record)
            continue
        towards_upper = split["spread"][0] >= split["spread"][1]
        side = split["upper"] if towards_upper else ~split["upper"]
        projection = split["projection"] if towards_upper else -split["projection"]
        scores[where] = ((projection - projection.median()) / projection.std().clamp_min(1e-12)).float()
        record.update(share=float(side.double().mean()), runner_up_entropy=split["spread"])
        if split["eta"] >= eta_min:
            record["poisoned"] = True
            chosen.append(where[side])
        classes.append(record)
    indices = torch.cat(chosen).sort().values if chosen else torch.empty(0, dtype=torch.long)
    return SuspectedSamples("label-clusters", indices, scores, classes, time.perf_counter() - start)


def detect_poisoned(model: nn.Module, train: ImageSet, *, batch_size: int = 512, **options) -> SuspectedSamples:
    """The suspected poisoned samples of the training set `train` the model was trained on, their scores
    and the per-label verdicts; nothing else is read (no poisoning flags, no test data).

    Args:
        model: the suspect (its mode and weights are kept).
        train: the possibly poisoned training set, with the labels it was trained on.
        batch_size: samples per forward pass.
        **options: `detect_in_features`'s (dims, eta_min, min_samples, seed).
    """
    start = time.perf_counter()
    found = detect_in_features(sample_features(model, train, batch_size=batch_size), **options)
    found.seconds = time.perf_counter() - start
    return found
