"""What EP and BNP share: finding the neuron layers, turning per-layer scores into a mask, and the report."""

from __future__ import annotations

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..metrics import model_device
from ..neurons.layers import NeuronLayer, find_neuron_layers
from ..neurons.mask import ChannelMask, pruned_copy
from ..neurons.threshold import LayerDecision, select_neurons
from .base import DefenseReport, LayerReport


def neuron_layers(model: nn.Module, data: ImageSet, *, require_bn: bool) -> list[NeuronLayer]:
    """The model's neuron layers, found with one sample of `data` (which must fit the model)."""
    example = data.float_images()[:1].to(model_device(model))
    try:
        return find_neuron_layers(model, example, require_bn=require_bn)
    except RuntimeError as exc:
        raise ValueError(
            f"the model cannot process images of shape {data.image_shape} from {data.name!r} "
            f"({str(exc).splitlines()[0]}); check the dataset and the model's input channels and size"
        ) from None


def decide_and_prune(
    model: nn.Module,
    layers: list[NeuronLayer],
    scores: dict[str, torch.Tensor],
    *,
    u: float,
    side: str,
    rule: str,
    count: int | None,
    silence: str,
) -> tuple[nn.Module, dict[str, LayerDecision]]:
    """Apply the threshold rule and return the pruned copy of `model` and each layer's decision."""
    decisions = select_neurons(scores, u=u, side=side, rule=rule, count=count)
    mask = ChannelMask({name: d.selected for name, d in decisions.items()})
    repaired = pruned_copy(model, {l.name: l for l in layers}, mask, silence)
    return repaired, decisions


def layer_reports(
    layers: list[NeuronLayer],
    scores: dict[str, torch.Tensor],
    decisions: dict[str, LayerDecision],
    extra: dict[str, dict] | None = None,
) -> list[LayerReport]:
    return [
        LayerReport(
            name=l.name, conv=l.conv, channels=l.channels,
            scores=scores[l.name].tolist(), z=decisions[l.name].z.tolist(),
            center=decisions[l.name].center, scale=decisions[l.name].scale,
            threshold=decisions[l.name].threshold, pruned=decisions[l.name].selected,
            note=decisions[l.name].note, extra=(extra or {}).get(l.name, {}),
        )
        for l in layers
    ]


def most_suspicious(report: DefenseReport, k: int, side: str) -> list[tuple[str, int, float]]:
    """The k neurons with the most extreme z-scores: (layer, channel, z), most suspicious first."""
    sign = -1.0 if side == "low" else 1.0
    ranked = [
        (sign * z, layer.name, c)
        for layer in report.layers
        for c, z in enumerate(layer.z)
        if z is not None and z == z
    ]
    ranked.sort(reverse=True)
    return [(name, c, sign * s) for s, name, c in ranked[:k]]
