"""BNP's rule "guarded": the MAD rule's neurons are the suspects, and clean-sample guards decide which go.

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

from dataclasses import dataclass

from torch import nn

from ...data.imageset import ImageSet
from ...neurons.layers import NeuronLayer
from ...neurons.mask import ChannelMask
from ...neurons.replay import Replay, prefix_logits
from ...neurons.threshold import select_neurons
from ...params import param
from ..scores import Scores
from .base import Neuron, Rule, RuleContext, Selection, register_rule


@register_rule
@dataclass(eq=False, kw_only=True)
class Guarded(Rule):
    """BNP's default rule: the neurons beyond median + u * 1.4826 MAD of their layer are the suspects; a
    suspect whose pruning alone changes more than `max_change` percent of the clean predictions is left in
    place (`veto`), and the rest are pruned from the most outlying until the next would take the clean
    samples' accuracy more than `max_drop` points below the model's (`within_budget`).

    Args:
        u: robust standard deviations above the layer's median that make a neuron a suspect.
        max_change: the percent of the clean samples whose prediction one pruned neuron may change.
        max_drop: the clean samples' accuracy, in points, that the pruned neurons together may cost.
    """

    name = "guarded"
    needs = frozenset({"clean"})

    u: float = param(6.0, ge=0.0)
    max_change: float = param(1.0, ge=0.0, le=100.0)
    max_drop: float = param(2.0, ge=0.0, le=100.0)

    def select(self, scored: Scores, context: RuleContext) -> Selection:
        clean = context.data.require("clean", "the guarded rule")
        model, layers = context.model, scored.layers
        decisions = select_neurons(scored.scores, u=self.u, side=context.side, rule="mad")
        sign = -1.0 if context.side == "low" else 1.0
        suspects = [(name, c) for _, name, c in sorted(
            (-sign * float(d.z[c]), name, c) for name, d in decisions.items() for c in d.selected
        )]  # fmt: skip
        replay = Replay(model, clean, layers, batch_size=context.batch_size)  # predictions re-run from the block
        replay.prepare([name for name, _ in suspects])
        vetted, trace = veto(model, layers, suspects, clean, max_change=self.max_change, silence=context.silence,
                             batch_size=context.batch_size, replay=replay)  # fmt: skip
        k, accuracy = within_budget(model, layers, vetted, clean, max_drop=self.max_drop, silence=context.silence,
                                    batch_size=context.batch_size, replay=replay)  # fmt: skip
        passed = [t for t in trace if t["pruned"]]  # the vetted suspects' entries, in order
        for i, entry in enumerate(passed):
            if i < len(accuracy):
                entry["clean_accuracy"] = accuracy[i]  # with this neuron and the vetted ones before it pruned
            entry["pruned"] = i < k
        warnings = []
        if len(vetted) < len(suspects):
            spared = [f"{t['layer']}:{t['channel']} ({t['changed']:.1f}%)" for t in trace
                      if t["changed"] > self.max_change]  # fmt: skip
            warnings.append(
                f"guard: {len(spared)} of {len(suspects)} suspects left in place, each changing more than "
                f"{self.max_change:g}% of the clean predictions when pruned alone: {', '.join(spared[:10])}"
            )
        if k < len(vetted):
            warnings.append(
                f"guard: pruning stopped after {k} of {len(vetted)} vetted suspects: the next would take the "
                f"clean accuracy more than {self.max_drop:g} points below the model's"
            )
        info = {"max_change": self.max_change, "max_drop": self.max_drop, "suspects": len(suspects),
                "vetted": len(vetted), "pruned": k, "trace": trace}  # fmt: skip
        return Selection(decisions, vetted[:k], warnings, {"guard": info})


def veto(
    model: nn.Module,
    layers: list[NeuronLayer],
    suspects: list[Neuron],
    clean: ImageSet,
    *,
    max_change: float,
    silence: str,
    batch_size: int,
    replay: Replay | None = None,
) -> tuple[list[Neuron], list[dict]]:
    """The suspects that pass the veto, in their order, and one entry per suspect: layer, channel, the percent
    of clean predictions its pruning alone changes, and whether it is kept for pruning. `model` is restored."""
    replay = replay or Replay(model, clean, layers, batch_size=batch_size)
    reference = replay.reference.argmax(1)
    passed: list[Neuron] = []
    trace: list[dict] = []
    for name, channel in suspects:
        changed = replay.predictions(ChannelMask({name: [channel]}), silence) != reference
        change = 100.0 * float(changed.float().mean())
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
    replay: Replay | None = None,
) -> tuple[int, list[float]]:
    """How many neurons of `order` to prune: the prefix before the first neuron whose pruning (with those
    before it) takes the accuracy on `clean` more than `max_drop` points below `model`'s; and the accuracy
    after each neuron tried. `model` is left as it was."""
    labels = clean.labels.cpu()
    reference = (
        replay.reference if replay is not None else Replay(model, clean, layers, batch_size=batch_size).reference
    )
    start = 100.0 * float((reference.argmax(1) == labels).float().mean())
    curve: list[float] = []
    for logits in prefix_logits(model, clean, layers, order, silence=silence, batch_size=batch_size, replay=replay):
        curve.append(100.0 * float((logits.argmax(1) == labels).float().mean()))
        if start - curve[-1] > max_drop:
            return len(curve) - 1, curve
    return len(order), curve
