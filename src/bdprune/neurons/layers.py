"""The neuron layers a defense looks at, and forward hooks that read their pre-activations.

A neuron layer is a BatchNorm2d reached by the forward pass; its input is the paper's pre-activation
(section 3.4), whether a conv output or a residual sum (pre-activation networks). For a network without
BatchNorm, each Conv2d output is read instead, so entropy-based pruning still applies; BN-statistics pruning
then has nothing to compare against. `unscored_layers` names every normalisation layer a defense leaves out,
with the reason, so that reports never drop a layer silently.

Hooks live only inside `reading_preactivations`, which removes them in `finally`, and the network runs in
eval mode under `torch.inference_mode()`: a defense never changes BN running statistics, even on a model
handed over in train mode, and never rewrites the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .pairs import BN_TYPES, find_conv_bn_pairs


@dataclass(frozen=True)
class NeuronLayer:
    """Where a layer's neurons are read and silenced.

    Attributes:
        name: the BN's dotted name (the conv's for a BN-free model); reports and masks use it.
        conv: dotted name of the conv producing the pre-activations (None when the BN reads something else,
            e.g. a residual sum; its neurons are then silenced at the BN).
        bn: dotted name of the BatchNorm (None for a BN-free model).
        channels: number of neurons.
    """

    name: str
    conv: str | None
    bn: str | None
    channels: int


def find_neuron_layers(model: nn.Module, example: torch.Tensor, *, require_bn: bool = False) -> list[NeuronLayer]:
    """The model's neuron layers in forward order: every BatchNorm2d the forward pass reaches.

    Args:
        model: any CNN taking `example`.
        example: one input batch on the model's device, e.g. `torch.zeros(1, C, H, W)`.
        require_bn: only BN layers; an empty list if there are none (else a BN-free model's conv outputs).
    """
    pairs = find_conv_bn_pairs(model, example, paired_only=False)
    if pairs or require_bn:
        return [NeuronLayer(p.bn, p.conv, p.bn, p.channels) for p in pairs]
    if any(isinstance(m, BN_TYPES) for m in model.modules()):
        return []  # BN present but never reached by the forward pass
    return [
        NeuronLayer(name, name, None, m.out_channels) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)
    ]


def unscored_layers(model: nn.Module, layers: list[NeuronLayer]) -> dict[str, str]:
    """Every normalisation layer of `model` that is not among `layers`, with the reason (for reports)."""
    names = {layer.bn for layer in layers} | {layer.name for layer in layers}
    out = {}
    for name, m in model.named_modules():
        if name in names or not isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        if not isinstance(m, BN_TYPES):
            out[name] = f"a {type(m).__name__}: EP and BNP read the 2-D feature maps of BatchNorm2d layers"
        else:
            out[name] = "not reached by a forward pass on the defender's images"
    return out


def silenceable(model: nn.Module, layers: list[NeuronLayer]) -> tuple[list[NeuronLayer], dict[str, str]]:
    """The layers whose neurons can be silenced (an affine BN, or a conv feeding it), and the others with
    the reason."""
    modules = dict(model.named_modules())
    kept, left = [], {}
    for layer in layers:
        if layer.bn is not None and layer.conv is None and modules[layer.bn].weight is None:
            left[layer.name] = "a BN without affine weights that no conv feeds directly: it cannot be silenced"
        else:
            kept.append(layer)
    return kept, left


@contextmanager
def reading_preactivations(
    model: nn.Module,
    layers: list[NeuronLayer],
    callback: Callable[[str, torch.Tensor], None],
    *,
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
                handles.append(
                    modules[layer.bn].register_forward_pre_hook(
                        lambda _m, inputs, name=layer.name: callback(name, inputs[0])
                    )
                )
            else:
                handles.append(
                    modules[layer.conv].register_forward_hook(
                        lambda _m, _inputs, output, name=layer.name: callback(name, output)
                    )
                )
        if not keep_mode:
            model.eval()
        yield
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def module(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]
