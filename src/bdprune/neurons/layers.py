"""The neuron layers a defense looks at, and forward hooks that read their pre-activations.

A neuron layer is a BatchNorm fed by a convolution (its input is the conv output, the paper's
pre-activation, section 3.4). For a network without BatchNorm, each Conv2d output is read instead, so
entropy-based pruning still applies; BN-statistics pruning then has nothing to compare against.

Hooks live only inside `reading_preactivations`, which removes them in `finally`, and the network runs in
eval mode under `torch.inference_mode()`: a defense never changes BN running statistics, even on a model
handed over in train mode, and never rewrites the model.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .pairs import BN_TYPES, find_conv_bn_pairs


@dataclass(frozen=True)
class NeuronLayer:
    """Where a layer's neurons are read and silenced.

    Attributes:
        name: the BN's dotted name (the conv's for a BN-free model); reports and masks use it.
        conv: dotted name of the conv producing the pre-activations (None if not a conv output).
        bn: dotted name of the BatchNorm (None for a BN-free model).
        channels: number of neurons.
    """

    name: str
    conv: str | None
    bn: str | None
    channels: int


def find_neuron_layers(model: nn.Module, example: torch.Tensor, *, require_bn: bool = False) -> list[NeuronLayer]:
    """The model's neuron layers in forward order.

    Args:
        model: any CNN taking `example`.
        example: one input batch on the model's device, e.g. `torch.zeros(1, C, H, W)`.
        require_bn: only (conv, BN) pairs; an empty list if there are none.
    """
    pairs = find_conv_bn_pairs(model, example)
    if pairs or require_bn:
        return [NeuronLayer(p.bn, p.conv, p.bn, p.channels) for p in pairs]
    if any(isinstance(m, BN_TYPES) for m in model.modules()):
        return []  # BN present but never fed by a conv: there are no pre-activations in the paper's sense
    return [NeuronLayer(name, name, None, m.out_channels) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@contextmanager
def reading_preactivations(
    model: nn.Module, layers: list[NeuronLayer], callback: Callable[[str, torch.Tensor], None], *,
    keep_mode: bool = False,
) -> Iterator[None]:
    """Call `callback(layer_name, x)` with each layer's pre-activations (N, C, H, W) during forward passes.

    The model is put in eval mode for the duration (so BN uses, and does not update, its running
    statistics) and its mode is restored afterwards; all hooks are removed even if the block raises.
    `keep_mode=True` leaves the mode alone (training objectives that read the training forward pass).
    """
    modules = dict(model.named_modules())
    handles = []
    was_training = model.training
    try:
        for layer in layers:
            if layer.bn is not None:
                handles.append(modules[layer.bn].register_forward_pre_hook(
                    lambda _m, inputs, name=layer.name: callback(name, inputs[0])))
            else:
                handles.append(modules[layer.conv].register_forward_hook(
                    lambda _m, _inputs, output, name=layer.name: callback(name, output)))
        if not keep_mode:
            model.eval()
        yield
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def module(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]
