"""One pass over a dataset that gathers per-neuron pre-activation statistics.

Two kinds, both streaming and both needing exactly one forward pass:

* `collect_max_histograms` (EP): each sample's spatial maximum of each channel's pre-activation
  (section 3.4), accumulated in a `StreamingHistogram` per layer.
* `collect_moments` (BNP): mean and variance of each channel's pre-activation over samples and spatial
  positions, the same statistics BN's running estimates track, accumulated in float64.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from ..data.batches import iterate_batches
from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..models import model_device
from .layers import NeuronLayer, reading_preactivations
from .moments import ChannelMoments
from .sketch import StreamingHistogram


def _check_input(data: ImageSet) -> None:
    if len(data) == 0:
        raise InvalidInput("the data set is empty")


def _run(
    model: nn.Module,
    data: ImageSet,
    layers: list[NeuronLayer],
    callback,
    batch_size: int,
    progress: bool,
    desc: str,
    positions_callback=None,
) -> None:
    device = model_device(model)
    with reading_preactivations(model, layers, callback), torch.inference_mode():
        with tqdm(total=len(data), desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for images, _, pos in iterate_batches(data, batch_size, device=device):
                if positions_callback is not None:
                    positions_callback(pos)
                try:
                    model(images)
                except RuntimeError as exc:
                    raise InvalidInput(
                        f"the model cannot process images of shape {tuple(images.shape[1:])} from {data.name!r} "
                        f"({str(exc).splitlines()[0]}); check the dataset and the model's input channels and size"
                    ) from None
                bar.update(len(images))


def collect_max_histograms(
    model: nn.Module,
    data: ImageSet,
    layers: list[NeuronLayer],
    *,
    batch_size: int = 256,
    num_bins: int = 2048,
    groups: torch.Tensor | None = None,
    progress: bool = False,
    keep: dict[str, torch.Tensor] | None = None,
) -> dict[str, StreamingHistogram]:
    """Histograms of the per-sample spatial maxima of every neuron's pre-activation.

    Args:
        model: the network (run in eval mode; its state is not changed).
        data: the samples, e.g. the whole possibly poisoned training set.
        layers: the neuron layers to read.
        batch_size: samples per forward pass.
        num_bins: bins per neuron (see `StreamingHistogram`).
        groups: optional (len(data),) int64 group of each sample (e.g. 1 = known poisoned), counted
            separately for plots; the statistics that decide anything use all groups together.
        progress: show a progress bar.
        keep: if given (an empty dict), it receives every sample's maxima as well: layer -> (N, C) float32 on
            the CPU, in the order of `data` (N x neurons x 4 bytes: the caller decides whether that fits).
    """
    _check_input(data)
    device = model_device(model)
    kept: dict[str, list[torch.Tensor]] = {l.name: [] for l in layers}
    n_groups = int(groups.max().item()) + 1 if groups is not None and len(groups) else 1
    sketches = {l.name: StreamingHistogram(l.channels, num_bins, n_groups, device) for l in layers}
    current: dict[str, torch.Tensor | None] = {"group": None}

    def on_positions(pos: torch.Tensor) -> None:
        current["group"] = groups[pos].to(device) if groups is not None else None

    def on_preactivation(name: str, x: torch.Tensor) -> None:
        maxima = x.amax(dim=(2, 3)) if x.ndim == 4 else x  # (B, C, H, W) -> (B, C)
        sketches[name].update(maxima, current["group"])
        if keep is not None:
            kept[name].append(maxima.float().cpu())

    _run(model, data, layers, on_preactivation, batch_size, progress, "EP statistics", on_positions)
    if keep is not None:
        keep.update({name: torch.cat(parts) for name, parts in kept.items()})
    return sketches


def collect_moments(
    model: nn.Module, data: ImageSet, layers: list[NeuronLayer], *, batch_size: int = 256, progress: bool = False
) -> dict[str, ChannelMoments]:
    """Per-channel mean and variance of the pre-activations over samples and positions (BN's statistics)."""
    _check_input(data)
    device = model_device(model)
    moments = {l.name: ChannelMoments(l.channels, device) for l in layers}

    def on_preactivation(name: str, x: torch.Tensor) -> None:
        moments[name].update(x, channel_dim=1)

    _run(model, data, layers, on_preactivation, batch_size, progress, "BNP statistics")
    return moments
