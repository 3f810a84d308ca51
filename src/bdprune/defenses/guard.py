"""Clean-sample guards on a pruning defense's suspects.

1. `veto`: a suspect whose pruning, on its own, changes the prediction of more than `max_change` percent of
   the defender's clean samples is a neuron the task needs, and is left in place.
2. `within_budget`: the suspects left are pruned in order, most suspicious first, and pruning stops before the
   first one that would take the clean samples' accuracy more than `max_drop` points below the given model's.

Why it is needed: the robust (MAD) rule that reaches the dozens of backdoor neurons of a small model also
catches, on some models and some clean draws, one or two neurons the whole task runs through. On a BadNets
model of the CPU preset (seed 1), BNP's MAD rule (u 6) pruned 89 neurons for one draw of 500 clean samples
and the accuracy fell from 91.2 to 69.8; the veto left two of them and the model kept 89.7 (ASR 2.1).

Why single neurons and changed predictions: pruning a backdoor neuron leaves clean predictions as they were,
and the damage seen was concentrated in single neurons, which one forward pass per suspect finds. The share
of changed predictions counts every flip, where accuracy on a few hundred samples hides flips that cancel.
With n clean samples the share moves in steps of 100 / n percent, so with few samples the veto is strict.

The budget catches what single neurons do not show: many neurons that each change little. On a BadNets model of
the CPU preset (seed 4) the vetted MAD suspects were 108 neurons and cost 3.8 ACC points together; with a
budget of 2 points on 500 clean samples pruning stopped at 72 (ACC -1.2, ASR 2.4). Both were chosen on
development seeds (see the README's "Does it remove the backdoor?").

Both read only the clean samples, never the test set or anything of the attack.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..metrics import clean_accuracy, predict_logits
from ..neurons.layers import NeuronLayer
from ..neurons.mask import ChannelMask, masked, silence_

Neuron = tuple[str, int]


def changed_share(model: nn.Module, clean: ImageSet, reference: torch.Tensor, batch_size: int) -> float:
    """Percent of `clean` whose predicted class differs from `reference`."""
    return 100.0 * float((predict_logits(model, clean, batch_size).argmax(1) != reference).float().mean())


def veto(
    model: nn.Module,
    layers: list[NeuronLayer],
    suspects: list[Neuron],
    clean: ImageSet,
    *,
    max_change: float,
    silence: str,
    batch_size: int,
) -> tuple[list[Neuron], list[dict]]:
    """The suspects that pass the veto, in their order, and one entry per suspect: layer, channel, the percent
    of clean predictions its pruning alone changes, and whether it is kept for pruning. `model` is restored."""
    by_name = {l.name: l for l in layers}
    reference = predict_logits(model, clean, batch_size).argmax(1)
    passed: list[Neuron] = []
    trace: list[dict] = []
    for name, channel in suspects:
        with masked(model, by_name, ChannelMask({name: [channel]}), silence):
            change = changed_share(model, clean, reference, batch_size)
        trace.append({"layer": name, "channel": channel, "changed": change, "pruned": change <= max_change})
        if change <= max_change:
            passed.append((name, channel))
    return passed, trace


def within_budget(
    model: nn.Module,
    layers: list[NeuronLayer],
    order: list[Neuron],
    clean: ImageSet,
    *,
    max_drop: float,
    silence: str,
    batch_size: int,
) -> tuple[int, list[float]]:
    """How many neurons of `order` to prune: the prefix before the first neuron whose pruning (with those
    before it) takes the accuracy on `clean` more than `max_drop` points below `model`'s; and the accuracy
    after each neuron tried. `model` is not modified."""
    by_name = {l.name: l for l in layers}
    start = 100.0 * clean_accuracy(model, clean, batch_size)
    work = copy.deepcopy(model)
    curve: list[float] = []
    for name, channel in order:
        silence_(work, by_name, ChannelMask({name: [channel]}), silence)
        curve.append(100.0 * clean_accuracy(work, clean, batch_size))
        if start - curve[-1] > max_drop:
            return len(curve) - 1, curve
    return len(order), curve
