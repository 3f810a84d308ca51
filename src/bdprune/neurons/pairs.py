"""Find the BatchNorm layers of any model and the convolution feeding each, if one does.

A "neuron" in the paper is one channel of a BN layer, and its pre-activation is that channel's value at the
BN input (section 3.4). In a post-activation ResNet every BN reads a conv output; in a pre-activation
network (PreAct-ResNet, WRN) most BNs read a residual sum, which is still the pre-activation of the ReLU
after the BN, and the authors' code reads every BN. Which BN reads which conv is a property of the forward
pass, not of module names, so we watch one forward pass: a forward hook remembers every conv output
tensor, a forward pre-hook on every BN checks whether its input is one of them. This works unchanged on
our models and on torchvision or timm ResNets, and it never rewrites the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BN_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class ConvBNPair:
    """One BN layer and the conv whose output it normalises (conv None: the BN reads something else).

    Attributes:
        bn: dotted name of the BatchNorm module.
        conv: dotted name of the Conv2d feeding it, or None when its input is e.g. a residual sum.
        channels: number of channels (neurons) of the BN.
    """

    bn: str
    conv: str | None
    channels: int


def find_conv_bn_pairs(model: nn.Module, example: torch.Tensor, *, paired_only: bool = True) -> list[ConvBNPair]:
    """List the model's BatchNorm2d layers in forward order with the conv feeding each.

    Args:
        model: any network; it is run once in eval mode on `example` (its mode is restored, its BN
            running statistics are not touched).
        example: one batch the model accepts, e.g. `torch.zeros(1, *image_shape)`, on the model's device.
        paired_only: drop BN layers whose input is not a conv output (e.g. PreAct-ResNet's residual sums).

    Returns:
        One entry per BN layer, in the order the forward pass reaches them.
    """
    names = {module: name for name, module in model.named_modules()}
    conv_outputs: dict[int, tuple[str, torch.Tensor]] = {}
    order: list[ConvBNPair] = []
    seen: set[str] = set()

    def on_conv(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        # Keep a reference to the tensor so its id cannot be reused while we look it up.
        conv_outputs[id(output)] = (names[module], output)

    def on_bn(module: nn.Module, inputs) -> None:
        name = names[module]
        if name in seen:  # a BN applied twice (weight sharing) is listed once
            return
        seen.add(name)
        source = conv_outputs.get(id(inputs[0]))
        conv = source[0] if source is not None and source[1] is inputs[0] else None
        order.append(ConvBNPair(bn=name, conv=conv, channels=module.num_features))

    handles = []
    was_training = model.training
    try:
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                handles.append(module.register_forward_hook(on_conv))
            elif isinstance(module, BN_TYPES):
                handles.append(module.register_forward_pre_hook(on_bn))
        model.eval()
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [p for p in order if p.conv is not None] if paired_only else order
