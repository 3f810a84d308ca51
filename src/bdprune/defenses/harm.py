"""First, do no harm: a pruning defense checks its result on data its choice did not use, and backs off.

A rule chooses with the defender's data, so a cost measured on the same data is biased: BNP's guarded rule
kept its clean-sample budget of 2 points on the samples it chose with and cost a clean model 3.6 points on
the test set, and EP's consensus rule handed back models 10 to 56 points worse without a word. The check:

* where its samples come from: BNP's setting sets `check_samples` of the clean samples aside before scoring,
  so neither the scores nor the rule sees them; EP's setting has only the training set, so it reads training
  samples outside the group the rule suspects of being poisoned (their labels are the true ones; the group's
  are the attacker's, which a working repair is meant to change). A rule that names no group (the per-layer
  rules) leaves EP without a fair check: the record says so and nothing is backed off.
* what it measures: the accuracy of the repaired model against the given one, in points, on those samples.
* what it does: when the cost exceeds `max_harm`, it keeps the longest prefix of the rule's order (most
  suspicious first) whose cost does not (a bisection, assuming cost grows with the prefix), possibly none, and
  says so in one line.

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

    def accuracy(k: int) -> float:
        pruned: dict[str, list[int]] = {}
        for name, c in selection.order[:k]:
            pruned.setdefault(name, []).append(c)
        return 100.0 * float((replay.predictions(ChannelMask(pruned), silence) == labels).float().mean())

    n, before = len(selection.order), accuracy(0)
    costs = {n: before - accuracy(n)}
    record: dict[str, Any] = {"checked": True, "source": source, "samples": len(samples), "max_harm": max_harm,
                              "accuracy_before": before, "cost": costs[n], "pruned_by_rule": n}  # fmt: skip
    if len(samples) < FEW:
        record["note"] = f"only {len(samples)} samples: each weighs {100 / len(samples):.1f} points"
    if costs[n] <= max_harm:
        record["kept"] = n
        return {"record": record, "warnings": []}
    lo, hi = 0, n  # cost(lo) = 0 <= max_harm < cost(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        costs[mid] = before - accuracy(mid)
        lo, hi = (mid, hi) if costs[mid] <= max_harm else (lo, mid)
    selection.keep(lo)
    record.update(kept=lo, kept_cost=costs.get(lo, 0.0), tried={str(k): c for k, c in sorted(costs.items())})
    outcome = f"kept the first {lo} (cost {costs.get(lo, 0.0):.1f})" if lo else "returned the model unchanged"
    line = (f"harm check: pruning the {n} neurons the rule chose cost {costs[n]:.1f} points of accuracy on "
            f"{len(samples)} {source} (more than {max_harm:g}): {outcome}")  # fmt: skip
    return {"record": record, "warnings": [line]}
