"""Which training samples drive many suspicious neurons at once: the poisoned group, found without labels.
(EP's rule "consensus", `bdprune.defenses.rules.consensus`, is built on these statistics.)

EP's premise (section 3.4) is that a backdoor neuron's per-sample maxima form two populations: benign
samples, and poisoned samples far above them. A single neuron cannot tell that apart from a benign neuron
with a second mode of its own (a point mass from a plain background, a class it prefers): both have low
entropy. But the poisoned samples are the *same* samples in every backdoor neuron, while benign second
modes belong to different samples in different neurons. So:

1. `collect_maxima`: the per-sample maxima of a few candidate neurons (EP's lowest entropies), one pass;
2. `upper_outliers`: per neuron, which samples lie more than `k` robust standard deviations (1.4826 MAD)
   above its median;
3. `consensus_split`: per sample, in how many candidates it is such an outlier; the counts are split in two
   by Otsu's criterion (the threshold that maximises the between-group variance), and the upper group is
   the consensus group, with eta = between-group / total variance telling how clean the split is.

Memory: N x (candidates) floats, e.g. 57,000 x 32 x 4 B = 7 MB. `SampleMaxima` serves those columns (and
the group's histograms) from the maxima EP's own pass kept when they fit in memory, instead of reading the
training set twice more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.batches import iterate_batches
from ..data.imageset import ImageSet
from ..models.device import model_device
from .collect import collect_max_histograms
from .layers import NeuronLayer, reading_preactivations
from .sketch import StreamingHistogram

MAD_TO_STD = 1.4826
REPLAY_ROWS = 65536  # kept maxima are replayed into histograms this many samples at a time


def collect_maxima(
    model: nn.Module,
    data: ImageSet,
    layers: list[NeuronLayer],
    wanted: dict[str, list[int]],
    *,
    batch_size: int = 256,
) -> tuple[torch.Tensor, list[tuple[str, int]]]:
    """Per-sample spatial maxima of the `wanted` channels of each layer.

    Returns:
        (N, M) float32 on the CPU, one column per wanted neuron, and the (layer, channel) of each column.
    """
    readers = [l for l in layers if wanted.get(l.name)]
    columns: dict[str, list[torch.Tensor]] = {l.name: [] for l in readers}

    def on_preactivation(name: str, x: torch.Tensor) -> None:
        picked = x[:, wanted[name]]  # (B, k, H, W) or (B, k)
        columns[name].append((picked.amax(dim=(2, 3)) if picked.ndim == 4 else picked).float().cpu())

    with reading_preactivations(model, readers, on_preactivation), torch.inference_mode():
        for images, _, _ in iterate_batches(data, batch_size, device=model_device(model)):
            model(images)
    order = [(l.name, c) for l in readers for c in wanted[l.name]]
    if not order:
        return torch.empty(len(data), 0), order
    return torch.cat([torch.cat(columns[l.name]) for l in readers], dim=1), order


@dataclass
class SampleMaxima:
    """Every sample's spatial maximum of every neuron of `layers` over `data`, for the statistics a rule needs
    after the scores: kept in memory by the scoring pass when they fit (`kept`: layer -> (N, C) float32 on the
    CPU, in the order of `data`), otherwise read again with one forward pass per request. Both give the same
    numbers: the kept values are the ones the pass computed, and a histogram depends only on the values seen.
    """

    model: nn.Module
    data: ImageSet
    layers: list[NeuronLayer]
    batch_size: int = 256
    kept: dict[str, torch.Tensor] | None = None

    def columns(self, wanted: dict[str, list[int]]) -> tuple[torch.Tensor, list[tuple[str, int]]]:
        """(N, M) maxima of the `wanted` channels, one column per neuron, and the (layer, channel) of each."""
        if self.kept is None:
            return collect_maxima(self.model, self.data, self.layers, wanted, batch_size=self.batch_size)
        order = [(l.name, c) for l in self.layers if wanted.get(l.name) for c in wanted[l.name]]
        if not order:
            return torch.empty(len(self.data), 0), order
        parts = [self.kept[l.name][:, wanted[l.name]] for l in self.layers if wanted.get(l.name)]
        return torch.cat(parts, dim=1), order

    def histograms(
        self, groups: torch.Tensor, *, num_bins: int, progress: bool = False
    ) -> dict[str, StreamingHistogram]:
        """Histograms of every neuron's maxima, counted separately for each group (`groups`: (N,) int64)."""
        if self.kept is None:
            return collect_max_histograms(
                self.model,
                self.data,
                self.layers,
                batch_size=self.batch_size,
                num_bins=num_bins,
                groups=groups,
                progress=progress,
            )
        device = model_device(self.model)
        n_groups = int(groups.max()) + 1 if len(groups) else 1
        out = {}
        for layer in self.layers:
            sketch = StreamingHistogram(layer.channels, num_bins, n_groups, device)
            for start in range(0, len(self.data), REPLAY_ROWS):  # bounded temporary memory on the device
                rows = slice(start, start + REPLAY_ROWS)
                sketch.update(self.kept[layer.name][rows].to(device), groups[rows].to(device))
            out[layer.name] = sketch
        return out


def upper_outliers(values: torch.Tensor, k: float) -> torch.Tensor:
    """(N, M) bool: value more than `k` robust standard deviations above its column's median.

    A column whose MAD is 0 (more than half its values tied, e.g. a background response) is measured in
    the spread of its values above the median instead, so a tie does not make every other value an outlier.
    """
    median = values.median(dim=0).values
    mad = (values - median).abs().median(dim=0).values * MAD_TO_STD
    upper = torch.where(values > median, values - median, torch.zeros_like(values))
    above = upper.sum(0) / (values > median).sum(0).clamp(min=1)  # mean excess of the values above the median
    scale = torch.where(mad > 0, mad, above)
    return (values - median) > k * scale.clamp(min=torch.finfo(values.dtype).tiny)


@dataclass
class ConsensusSplit:
    """The consensus group of samples.

    Attributes:
        counts: (N,) in how many candidates each sample is an upper outlier.
        members: (N,) bool, the upper group of the split.
        threshold: members have counts above this.
        eta: between-group / total variance of the counts at the split (1: two clean groups, 0: none).
    """

    counts: torch.Tensor
    members: torch.Tensor
    threshold: float
    eta: float


def consensus_split(outliers: torch.Tensor, above: int = -1) -> ConsensusSplit:
    """Split samples by how many candidates they are outliers of, at Otsu's threshold; with `above`, split
    only the samples whose count exceeds it (the group of an earlier split, split again)."""
    counts = outliers.sum(1)
    m = outliers.shape[1]
    hist = torch.bincount(counts, minlength=m + 1).double()
    hist[: max(above, -1) + 1] = 0
    n = hist.sum()
    levels = torch.arange(m + 1, dtype=torch.float64)
    total_mean = (hist * levels).sum() / n.clamp(min=1)
    total_var = (hist * (levels - total_mean) ** 2).sum() / n.clamp(min=1)
    if not total_var > 0:  # nothing (left) to split
        return ConsensusSplit(counts, torch.zeros_like(counts, dtype=torch.bool), float(m), 0.0)
    w0 = hist.cumsum(0)  # samples with count <= t
    s0 = (hist * levels).cumsum(0)
    w1 = n - w0
    mean0 = s0 / w0.clamp(min=1)
    mean1 = (s0[-1] - s0) / w1.clamp(min=1)
    between = w0 * w1 * (mean0 - mean1) ** 2 / n**2
    between = torch.where((w0 > 0) & (w1 > 0), between, torch.zeros_like(between))
    t = int(between.argmax())
    return ConsensusSplit(counts, counts > t, float(t), float(between[t] / total_var))
