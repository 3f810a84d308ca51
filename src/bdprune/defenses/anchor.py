"""The anchor of a repair's fine-tuning: the clean samples' BN inputs held to the suspect's (issue 23).

A fine-tuning that unlearns a trigger also moves what the network does on clean inputs, and that is its
accuracy cost. The anchor adds to the loss the squared difference between the BN inputs (the pre-activations)
of the clean samples in the training pass and those of a frozen copy of the suspect on the same samples,
relative to the suspect's mean square, averaged over the BN layers. Chosen for BNP's unlearning on the
development models (`bdprune.defenses.synthesis.TriggerStage`); why it helps is measured, not understood.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def running_bns(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The BN layers with running statistics, in registration order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    ]


@contextmanager
def bn_inputs(model: nn.Module, active: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """The inputs of every BN layer (with running statistics) of `model` in its last forward pass, by name, as
    they were computed (gradients flow; the model's mode is not touched); nothing is hooked when not `active`.
    The hooks are removed on exit."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, layer in running_bns(model) if active else []:

        def keep(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor, name: str = name) -> None:
            seen[name] = inputs[0]

        hooks.append(layer.register_forward_hook(keep))
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def anchor_loss(learnt: dict[str, torch.Tensor], taught: dict[str, torch.Tensor], count: int) -> torch.Tensor:
    """The mean over BN layers of the first `count` samples' squared BN-input difference from the teacher's
    (`taught`, the same samples), relative to the teacher's mean square; 0 for a model without BN layers."""
    change = [((learnt[k][:count] - t) ** 2).mean() / t.pow(2).mean().clamp_min(1e-8) for k, t in taught.items()]
    return torch.stack(change).mean() if change else torch.zeros(())
