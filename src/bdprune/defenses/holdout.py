"""The guard of the repairs beyond pruning (issue 23): a repair is checked on data the defender has and the
repair did not use, and backs off when it costs too much there.

The defender holds out part of its data before repairing (`split_holdout`): a share of the clean samples
(BNP's setting) or of the training samples outside the suspected group (EP's setting). A repair is a list of
attempts, strongest first; `first_within_budget` runs them in turn and keeps the first whose accuracy on the
held-out samples is at most `budget` points below the suspect's; if none is, the model is returned unchanged.
Every attempt's held-out accuracy goes into the report, so the back-off is visible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..metrics import per_class_accuracy

DEFAULT_BUDGET = 2.0  # ACC points on the held-out samples (issue 23)


def split_holdout(data: ImageSet, fraction: float, *, seed: int) -> tuple[ImageSet, ImageSet]:
    """(used, held_out): a random `fraction` of `data` (at least one sample each side) kept out of the repair."""
    if not 0 < fraction < 1 or len(data) < 2:
        raise InvalidInput(
            f"a held-out fraction in (0, 1) of at least 2 samples is needed, got {fraction} of {len(data)}"
        )
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    k = min(max(1, round(fraction * len(data))), len(data) - 1)
    return data.subset(order[k:].sort().values), data.subset(order[:k].sort().values)


def balanced_accuracy(model: nn.Module, data: ImageSet) -> float:
    """The mean over the labels present of each label's accuracy, in percent. Held-out samples drawn from
    outside a suspected group are not balanced: a group that takes most of one label leaves that label a few
    held-out samples, and a plain accuracy would hardly see the label destroyed (BadNets all-to-all seed 1: the
    unlearning lost 20 test points while the plain held-out accuracy fell 1.7)."""
    present = [a for a in per_class_accuracy(model, data) if not math.isnan(a)]  # NaN: a label with no sample
    return 100 * sum(present) / len(present)


@dataclass
class GuardOutcome:
    """What the guard saw: the suspect's held-out accuracy, each attempt's (in percent), which was kept
    (None: none, the model is unchanged) and a sentence for the report."""

    before: float
    attempts: list[dict[str, Any]] = field(default_factory=list)
    chosen: int | None = None
    message: str = ""


def first_within_budget(
    model: nn.Module,
    attempts: Sequence[tuple[str, Callable[[], nn.Module]]],
    held_out: ImageSet,
    *,
    budget: float = DEFAULT_BUDGET,
) -> tuple[nn.Module, GuardOutcome]:
    """Run the named `attempts` (each returns a repaired copy) in order; keep the first whose held-out
    accuracy is no more than `budget` points below `model`'s, else return `model` itself. An attempt whose
    training diverged (`FloatingPointError`) counts as one that failed (held-out accuracy NaN)."""
    outcome = GuardOutcome(before=balanced_accuracy(model, held_out))
    for i, (name, attempt) in enumerate(attempts):
        try:
            repaired = attempt()
        except FloatingPointError as exc:
            outcome.attempts.append({"attempt": name, "held_out_acc": float("nan"), "diverged": str(exc)})
            continue
        acc = balanced_accuracy(repaired, held_out)
        outcome.attempts.append({"attempt": name, "held_out_acc": acc})
        if acc >= outcome.before - budget:
            outcome.chosen = i
            outcome.message = (
                f"{name}: held-out balanced ACC {acc:.2f} vs {outcome.before:.2f} before ({len(held_out)} samples)"
                + (f"; backed off from {', '.join(a['attempt'] for a in outcome.attempts[:-1])}" if i else "")
            )
            return repaired, outcome
    tried = ", ".join(f"{a['attempt']} {'diverged' if 'diverged' in a else format(a['held_out_acc'], '.2f')}"
                      for a in outcome.attempts)  # fmt: skip
    outcome.message = (
        f"every attempt diverged or lost more than {budget} points of balanced accuracy on {len(held_out)} "
        "held-out samples "
        f"({tried} vs {outcome.before:.2f}): the model is returned unchanged"
    )
    return model, outcome
