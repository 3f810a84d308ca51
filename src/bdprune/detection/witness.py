"""The trigger witness: did a repair take the backdoor's effect away? Answered without the trigger.

A user who does not have the trigger cannot measure ASR. BNP's trigger stage reads a perturbation out of the
suspect's BN running statistics (`bdprune.defenses.synthesis.synthesise_trigger`: the statistics were
estimated on the poisoned training set, so they point towards where the poisoned samples sat); on a
backdoored model it sends most clean samples of other labels to the backdoor's class (its `share`), on a clean
model it does not (7 to 41 % on 21 of 22 clean models of the detection population, 99.2 on one:
`TriggerStage`). The witness reads it once from the suspect, on the defender's clean samples less a held-out
part, then measures what it still does on the held-out part, to the suspect (`before`) and to the repaired
model (`after`).

The held-out part is the one BNP sets aside for its guard (the same split, `bdprune.defenses.harm.set_aside`),
so BNP's unlearning never trained on it. Whatever the defense, the witness only measures: nothing it reads
feeds a decision.

What it showed on the cpu preset (docs/results/repair-cpu.md, "The trigger witness"): after repairs that
brought the real ASR to 0.0 to 2.5 it read 0.0 on the held-out samples; after BNP's pruning alone, which left
Blended, WaNet and Refool of seed 14 at ASR 99.8, 84.3 and 96.8, it read 100, 84.4 and 100; after fine-tuning
that left ASR 14.7 it read 38.7. It is a witness of the trigger the statistics hold, not of every trigger:
where none is confirmed (share under 50 %, e.g. all-to-all, whose samples go to many classes) it says nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..defenses.harm import set_aside
from ..defenses.synthesis import TriggerStage, trigger_share
from ..errors import InvalidInput

HELD_OUT = 100  # BNP's `check_samples`: the witness measures where BNP's guard measures


@dataclass
class TriggerWitness:
    """A trigger read from a suspect's BN statistics, and what it does on held-out clean samples.

    Attributes:
        share: the percentage of the clean samples of other labels (those it was read from) that it sends to
            class `top`: BNP's confirmation statistic.
        confirmed: `share` reached `threshold` (BNP's `confirm_share`, 50).
        samples: the held-out clean samples `before` and `after` are measured on.
        before: the share on the held-out samples, through the suspect.
        after: the same through the repaired model (None until `measure`).
    """

    share: float
    top: int
    confirmed: bool
    threshold: float
    samples: int
    before: float
    after: float | None = None
    delta: torch.Tensor | None = field(default=None, repr=False)  # (1, C, H, W), not part of the record
    held: ImageSet | None = field(default=None, repr=False)

    def measure(self, repaired: nn.Module) -> float:
        """What the trigger still does through `repaired`, on the held-out samples (also kept as `after`)."""
        self.after = trigger_share(repaired, self.held, self.delta, self.top)
        return self.after

    def to_dict(self) -> dict[str, Any]:
        keys = ("share", "top", "confirmed", "threshold", "samples", "before", "after")
        return {k: getattr(self, k) for k in keys}


def witness_line(record: dict[str, Any]) -> str:
    """The witness's record (`TriggerWitness.to_dict`, or {"skipped": why}) in one line for the console."""
    if "skipped" in record:
        return f"not read: {record['skipped']}"
    read = (
        f"a trigger read from the suspect's BN statistics sends {record['share']:.1f} % of the clean samples of "
        f"other labels to class {record['top']}"
    )
    if not record["confirmed"]:
        return f"{read}: under {record['threshold']:g} %, no trigger confirmed (the witness says nothing)"
    after = "" if record.get("after") is None else f", after the repair {record['after']:.1f} %"
    return f"{read}; on {record['samples']} held-out clean samples: before {record['before']:.1f} %{after}"


def read_witness(
    suspect: nn.Module,
    clean: ImageSet,
    *,
    held_out: int = HELD_OUT,
    stage: TriggerStage | None = None,
    read: dict[str, Any] | None = None,
) -> TriggerWitness:
    """Read the trigger from `suspect`'s BN statistics on `clean` less `held_out` samples (at most a fifth,
    the split BNP's guard uses), with BNP's trigger stage's search (`stage`, default `TriggerStage()`: its
    radius, steps, restarts and confirmation share), and measure it through the suspect on the held-out part.
    `read`: what a defense already read from the same suspect (`DefenseReport.read`: {"trigger": (best, tries),
    "clean": the samples it was read from}); its trigger is used when it was read from exactly the samples this
    split leaves (BNP's default, whose guard holds out the same samples), else the trigger is read again.

    Raises `InvalidInput` when there is nothing to read (no BN layer with running statistics, no forward pass
    through one, non-finite pre-activations) or no held-out sample."""
    stage = stage or TriggerStage()
    rest, check = set_aside(clean, held_out, "the witness's held-out clean samples")
    if len(check.samples) == 0:
        raise InvalidInput(
            f"the trigger witness measures on held-out clean samples and {len(clean)} clean samples leave none "
            "(it holds out a fifth, at most 100): give at least 5"
        )
    reuse = read is not None and same_samples(read["clean"], rest)
    found = read["trigger"] if reuse else stage.found(suspect, rest)  # what BNP kept passed the same checks
    if isinstance(found, str):
        raise InvalidInput(f"no trigger to read: {found}")
    trigger, _ = found
    return TriggerWitness(
        share=trigger.share,
        top=trigger.top,
        confirmed=trigger.share >= stage.confirm_share,
        threshold=stage.confirm_share,
        samples=len(check.samples),
        before=trigger_share(suspect, check.samples, trigger.delta, trigger.top),
        delta=trigger.delta,
        held=check.samples,
    )


def same_samples(a: ImageSet | None, b: ImageSet) -> bool:
    """Whether two sets hold the same images with the same labels, in the same order."""
    return (
        a is not None
        and a.images.shape == b.images.shape
        and a.images.dtype == b.images.dtype
        and torch.equal(a.images.cpu(), b.images.cpu())
        and torch.equal(a.labels.cpu(), b.labels.cpu())
    )
