"""Two classic poisoned-sample detectors on a model's penultimate features, as baselines for
`bdprune.samples`:

* spectral signatures (Tran, Li and Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018): per
  label, the squared projection of each centred feature vector on the top singular direction; the
  1.5 * eps * n highest of each label are removed, eps an upper bound on the poisoned fraction the defender
  assumes (every label is cut, whether poisoned or not: the method has no verdict).
* activation clustering (Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks by Activation
  Clustering", SafeAI 2019): per label, the features reduced to 10 dimensions (their ICA; principal
  components here), 2-means, and the smaller cluster is poisoned when it holds less than `max_size` (0.35)
  of the label: the relative-size verdict of the paper.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from .clustering import principal_components, two_means
from .features import SampleFeatures
from .result import SuspectedSamples


def by_label(features: SampleFeatures) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per label present: the label, its samples' positions and their features in float64."""
    for c in features.labels.unique().tolist():
        where = (features.labels == c).nonzero().flatten()
        yield c, where, features.features[where].double()


def spectral_signatures(features: SampleFeatures, *, eps: float = 0.1) -> SuspectedSamples:
    """Tran et al. 2018 on precomputed features; `eps`: the assumed upper bound on the poisoned fraction."""
    start = time.perf_counter()
    scores = torch.full((len(features.labels),), float("nan"))
    chosen, classes = [], []
    for c, where, x in by_label(features):
        direction, _ = principal_components(x, 1)
        s = ((x - x.mean(0)) @ direction[0]) ** 2
        scores[where] = s.float()
        k = min(len(where), round(1.5 * eps * len(where)))
        chosen.append(where[s.argsort(descending=True)[:k]])
        classes.append({"class": c, "samples": len(where), "removed": k, "poisoned": k > 0})
    indices = torch.cat(chosen).sort().values if chosen else torch.empty(0, dtype=torch.long)
    return SuspectedSamples("spectral", indices, scores, classes, time.perf_counter() - start)


def activation_clustering(
    features: SampleFeatures, *, dims: int = 10, max_size: float = 0.35, seed: int = 0
) -> SuspectedSamples:
    """Chen et al. 2019 on precomputed features: 2-means on `dims` principal components per label; the
    smaller cluster is flagged when its share of the label is below `max_size`."""
    start = time.perf_counter()
    scores = torch.full((len(features.labels),), float("nan"))
    chosen, classes = [], []
    for c, where, x in by_label(features):
        directions, _ = principal_components(x, dims)
        reduced = (x - x.mean(0)) @ directions.T
        second = two_means(reduced, seed=seed)
        small = second if second.sum() <= (~second).sum() else ~second
        share = float(small.float().mean())
        # score: distance to the larger cluster's centre, so the smaller cluster's members rank first
        big_centre = reduced[~small].mean(0) if (~small).any() else reduced.mean(0)
        scores[where] = (reduced - big_centre).norm(dim=1).float()
        flagged = 0 < share < max_size
        if flagged:
            chosen.append(where[small])
        classes.append({"class": c, "samples": len(where), "smaller_share": share, "poisoned": flagged})
    indices = torch.cat(chosen).sort().values if chosen else torch.empty(0, dtype=torch.long)
    return SuspectedSamples("activation-clustering", indices, scores, classes, time.perf_counter() - start)
