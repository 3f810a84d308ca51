"""First, do no harm: a pruning defense checks its result on data its choice did not use, and backs off.

A rule chooses with the defender's data, so a cost measured on the same data is biased: BNP's guarded rule
kept its clean-sample budget of 2 points on the samples it chose with and cost a clean model 3.6 points on
the test set, and EP's consensus rule handed back models 10 to 56 points worse without a word. The check:

* where its samples come from: BNP's setting sets `check_samples` of the clean samples aside before scoring,
  so neither the scores nor the rule sees them; EP's setting has only the training set, so it reads training
  samples outside the group the rule suspects of being poisoned (their labels are the true ones; the group's
  are the attacker's, which a working repair is meant to change). A rule that names no group (the per-layer
  rules) leaves EP without a fair check: the record says so and nothing is backed off.
* what it measures: the accuracy of the repaired model against the given one, in points, on those samples, and
  the standard error of that paired difference (from the samples whose correctness changed).
* what it does: when the cost exceeds `max_harm` and two standard errors (more than the noise of a few hundred
  samples, where one flip is a point), it keeps the longest prefix of the rule's order (most suspicious first)
  that does not (a bisection, assuming cost grows with the prefix), possibly none, and says so in one line.
  It is a net for gross harm (the 10 to 56 points above); a cost of 2 to 4 points on 100 samples is within
  noise, which is why a model with no backdoor needs a verdict before any repair (`bdprune scan`).

It reads labels of the defender's own samples only, never the test set or anything of the attack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..neurons.layers import NeuronLayer
from ..neurons.mask import ChannelMask
from ..neurons.replay import Replay
from .rules.base import Selection

FEW = 50  # fewer check samples than this: each one weighs more than 2 points, and the record says so


@dataclass
class HarmCheck:
    """Where the check's samples come from: fixed `samples` set aside, or a `pool` (the training set) from which
    `count` samples outside the rule's suspected group are drawn."""

    source: str
    samples: ImageSet | None = None
    pool: ImageSet | None = None
    count: int = 0

    def draw(self, selection: Selection) -> tuple[ImageSet | None, str]:
        """The samples to check on, or None and why there are none."""
        if self.samples is not None:
            return self.samples, self.source
        if selection.group is None:
            return None, ("no check on held-out data: the rule names no suspected samples, and the training "
                          "samples' labels include the poisoned ones a working repair changes")  # fmt: skip
        outside = (~selection.group).nonzero().flatten()
        chosen = outside[torch.randperm(len(outside), generator=torch.Generator().manual_seed(1))[: self.count]]
        return self.pool.subset(chosen.sort().values), f"{self.source} outside the suspected group"


def paired_cost(right_before: torch.Tensor, right_after: torch.Tensor) -> tuple[float, float]:
    """(the accuracy points lost, the standard error of that paired difference) from each sample's correctness
    before and after a repair: only the samples whose correctness changed carry information."""
    lost, gained = int((right_before & ~right_after).sum()), int((~right_before & right_after).sum())
    m = len(right_before)
    return 100.0 * (lost - gained) / m, 100.0 * max(lost + gained - (lost - gained) ** 2 / m, 0.0) ** 0.5 / m


def beyond_noise(cost: float, se: float, budget: float) -> bool:
    """Whether a measured cost is harm: more than `budget` points, and more than noise. With 100 samples one
    flip is a point, and a repair the test set prices at 0.7 points measured 3 (BNP on BadNets seed 0), so two
    standard errors are required."""
    return cost > budget and cost > 2 * se


def set_aside(samples: ImageSet, count: int, source: str) -> tuple[ImageSet, HarmCheck]:
    """Split `count` samples (at most a fifth) off `samples` for the check: (the rest, the check)."""
    count = min(count, len(samples) // 5)
    rest, held = samples.split([len(samples) - count, count], torch.Generator().manual_seed(0))
    return rest, HarmCheck(source, samples=held)


def back_off(
    model: nn.Module,
    layers: list[NeuronLayer],
    selection: Selection,
    check: HarmCheck,
    *,
    max_harm: float,
    silence: str,
    batch_size: int,
) -> dict[str, Any]:
    """Measure the selection's cost on the check's samples and shorten it to at most `max_harm` points.

    Returns {"record": the report's `harm_check` entry, "warnings": a line when it backed off}. `selection` is
    shortened in place; `model` is left as it was.
    """
    samples, source = check.draw(selection)
    if samples is None or len(samples) == 0 or not selection.order:
        why = source if samples is None else "nothing to check" if selection.order else "nothing pruned"
        return {"record": {"checked": False, "why": why}, "warnings": []}
    replay, labels = Replay(model, samples, layers, batch_size=batch_size), samples.labels.cpu()
    replay.prepare([name for name, _ in selection.order])
    right = replay.reference.argmax(1) == labels  # the given model, per sample

    def harm(k: int) -> tuple[float, float]:
        """(cost in points, its standard error) of pruning the first k: a paired comparison per sample."""
        pruned: dict[str, list[int]] = {}
        for name, c in selection.order[:k]:
            pruned.setdefault(name, []).append(c)
        return paired_cost(right, replay.predictions(ChannelMask(pruned), silence) == labels)

    def harmful(cost: float, se: float) -> bool:
        return beyond_noise(cost, se, max_harm)

    n, before = len(selection.order), 100.0 * float(right.float().mean())
    measured = {n: harm(n)}
    record: dict[str, Any] = {"checked": True, "source": source, "samples": len(samples), "max_harm": max_harm,
                              "accuracy_before": before, "cost": measured[n][0], "standard_error": measured[n][1],
                              "pruned_by_rule": n}  # fmt: skip
    if len(samples) < FEW:
        record["note"] = f"only {len(samples)} samples: each weighs {100 / len(samples):.1f} points"
    if not harmful(*measured[n]):
        record["kept"] = n
        return {"record": record, "warnings": []}
    lo, hi = 0, n  # harmless(lo) (nothing pruned), harmful(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        measured[mid] = harm(mid)
        lo, hi = (lo, mid) if harmful(*measured[mid]) else (mid, hi)
    selection.keep(lo)
    kept_cost = measured[lo][0] if lo in measured else 0.0
    record.update(kept=lo, kept_cost=kept_cost, tried={str(k): c for k, (c, _) in sorted(measured.items())})
    outcome = f"kept the first {lo} (cost {kept_cost:.1f})" if lo else "returned the model unchanged"
    line = (f"harm check: pruning the {n} neurons the rule chose cost {measured[n][0]:.1f} +- {measured[n][1]:.1f} "
            f"points of accuracy on {len(samples)} {source} (more than {max_harm:g}): {outcome}")  # fmt: skip
    return {"record": record, "warnings": [line]}
