"""Channel masks: which neurons are pruned, and how a pruned neuron is silenced (section 3.1).

The paper writes pruning as a mask M on the conv weights (W * M), which zeroes a channel's conv output.
But a BN follows, and it maps a zero input to the constant beta - gamma * mu / sigma: the neuron still
emits a (possibly large) constant. The official code zeroes only the BN weight gamma, which leaves the
constant beta. Three ways are offered:

* "bn" (default): gamma = beta = 0, so the channel's output after BN is exactly 0 and after ReLU too.
  The neuron is gone, not replaced by a bias.
* "bn-weight": gamma = 0 only (the official code): output beta.
* "conv": the conv filter (and bias) = 0 (the paper's M): output beta - gamma * mu_running / sigma_running.
  A BN that no conv feeds directly (a residual sum in a pre-activation network) is silenced at the BN.

Measured on BadNets Fashion-MNIST models, see `benchmarks/silencing.py` and the project notes.

Masks are plain data (layer name -> channel indices), so they serialise into reports. `pruned_copy`
returns a repaired copy and leaves the input model untouched; `masked` silences in place for the duration
of a block and restores the exact original values afterwards (cheap for sweeps over u).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import InvalidInput
from .layers import NeuronLayer

SILENCE_MODES = ("bn", "bn-weight", "conv")


@dataclass
class ChannelMask:
    """Pruned neurons: neuron-layer name -> sorted channel indices."""

    pruned: dict[str, list[int]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.pruned.values())

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self.pruned.items() if v}


def _targets(model: nn.Module, layer: NeuronLayer, mode: str) -> list[torch.Tensor]:
    """The parameter tensors whose channel rows are zeroed to silence a neuron of `layer`.

    Where the mode's place is missing, the other one serves: mode "conv" on a BN that no conv feeds (a
    pre-activation network's residual sum) silences at the BN (gamma = beta = 0), and the BN modes on a BN
    without affine weights silence its conv.
    """
    modules = dict(model.named_modules())
    bn = modules[layer.bn] if layer.bn is not None else None
    if bn is not None and bn.weight is not None and (mode != "conv" or layer.conv is None):
        return [bn.weight] if mode == "bn-weight" or bn.bias is None else [bn.weight, bn.bias]
    if layer.conv is None:
        raise InvalidInput(f"{layer.name}: a BN without affine weights that no conv feeds cannot be silenced")
    conv = modules[layer.conv]
    return [conv.weight] + ([conv.bias] if conv.bias is not None else [])


Layers = Iterable[NeuronLayer] | Mapping[str, NeuronLayer]  # a defense's list of layers (or a name -> layer map)


def by_name(layers: Layers) -> dict[str, NeuronLayer]:
    """Layer name -> layer, from the list a defense found (or a map given as is)."""
    return dict(layers) if isinstance(layers, Mapping) else {l.name: l for l in layers}


def _check(layers: dict[str, NeuronLayer], mask: ChannelMask, mode: str) -> None:
    if mode not in SILENCE_MODES:
        raise InvalidInput(f"unknown silencing mode {mode!r}; choose one of {SILENCE_MODES}")
    for name, channels in mask.pruned.items():
        if name not in layers:
            raise KeyError(f"the mask names layer {name!r}, which is not a neuron layer of this model")
        bad = [c for c in channels if not 0 <= c < layers[name].channels]
        if bad:
            raise IndexError(f"{name} has {layers[name].channels} channels; mask asks for {bad}")


@torch.no_grad()
def silence_(model: nn.Module, layers: Layers, mask: ChannelMask, mode: str = "bn") -> nn.Module:
    """Silence the masked neurons of `model` in place and return it."""
    layers = by_name(layers)
    _check(layers, mask, mode)
    for name, channels in mask.pruned.items():
        if channels:
            index = torch.tensor(channels, dtype=torch.long)
            for tensor in _targets(model, layers[name], mode):
                tensor[index.to(tensor.device)] = 0
    return model


def pruned_copy(model: nn.Module, layers: Layers, mask: ChannelMask, mode: str = "bn") -> nn.Module:
    """A copy of `model` with the masked neurons silenced; `model` itself is not modified."""
    layers = by_name(layers)
    _check(layers, mask, mode)
    return silence_(copy.deepcopy(model), layers, mask, mode)


@contextmanager
def masked(model: nn.Module, layers: Layers, mask: ChannelMask, mode: str = "bn") -> Iterator[nn.Module]:
    """Silence the masked neurons in place for the block, then restore the original values exactly."""
    layers = by_name(layers)
    _check(layers, mask, mode)
    saved = []
    with torch.no_grad():
        for name, channels in mask.pruned.items():
            if channels:
                index = torch.tensor(channels, dtype=torch.long)
                for tensor in _targets(model, layers[name], mode):
                    saved.append((tensor, index.to(tensor.device), tensor[index.to(tensor.device)].clone()))
    try:
        silence_(model, layers, mask, mode)
        yield model
    finally:
        with torch.no_grad():
            for tensor, index, values in saved:
                tensor[index] = values
