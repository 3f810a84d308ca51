"""Unlearn: remove a backdoor given the possibly poisoned training set (EP's setting), beyond pruning (issue 23).

1. Name the poisoned samples (`bdprune.detection.samples.detect_poisoned`: per-class verdicts on the
   penultimate features; "none found" leaves the model unchanged).
2. Hold out a random share of the other training samples (never used to repair).
3. Fine-tune briefly on the other training samples while unlearning the suspected group's labels
   (`unlearning.unlearn_fine_tune`: CE on the rest + the bounded forgetting term on the group).
4. Guard (`holdout.first_within_budget`): the repaired model may lose at most `budget` ACC points on the
   held-out samples; otherwise a gentler attempt (a third of the learning rate) is tried, then none.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..detection.samples import detect_poisoned
from ..params import param
from .base import Defense, DefenseData, DefenseReport, register_defense
from .holdout import DEFAULT_BUDGET, first_within_budget, split_holdout
from .unlearning import unlearn_fine_tune


@register_defense
@dataclass(eq=False, kw_only=True)
class Unlearn(Defense):
    """Detect the poisoned training samples, unlearn them while fine-tuning on the rest, guard the result.

    Args:
        steps: SGD steps of the unlearning fine-tune (150 x 192 samples: half an epoch of the cpu preset).
        lr: its initial learning rate (cosine-annealed to 0); 0.003 chosen on BadNets seed 0 (0.01 and crops
            cost 2.2-2.4 held-out points and were refused by the guard; 0.003 with flips only: -0.8).
        keep_batch, forget_batch: samples per step from the rest and from the suspected group.
        weight: weight of the forgetting term.
        holdout: share of the non-suspected training samples held out for the guard.
        budget: ACC points the repair may lose on them before it backs off.
        seed: seed of the hold-out split, shuffling and augmentation.
        batch_size: samples per forward pass when reading features.
        progress: unused (a uniform interface).

    Example:
        >>> repaired, report = Unlearn().run(model, DefenseData(train=training_set))
        >>> report.extra["detection"]["suspected"], report.extra["guard"]["message"]
    """

    name = "unlearn"
    needs = frozenset({"train"})

    steps: int = param(150, ge=0)
    lr: float = param(0.003, gt=0.0)
    keep_batch: int = param(128, ge=1)
    forget_batch: int = param(64, ge=1)
    weight: float = param(1.0, ge=0.0)
    holdout: float = param(0.05, gt=0.0, lt=1.0)
    budget: float = param(DEFAULT_BUDGET, ge=0.0)
    seed: int = 0
    batch_size: int = param(512, ge=1)

    def run(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        start = time.perf_counter()
        train = data.require("train", "unlearn")
        suspects = detect_poisoned(model, train, batch_size=self.batch_size)
        extra = {"detection": suspects.to_dict(), "suspected_indices": suspects.indices.tolist()}
        warnings = []
        if not suspects.found:
            repaired = copy.deepcopy(model).eval()
            extra["guard"] = {"message": "no poisoned group found: the model is unchanged"}
        else:
            rest = torch.ones(len(train), dtype=torch.bool)
            rest[suspects.indices] = False
            keep, held_out = split_holdout(train.subset(rest.nonzero().flatten()), self.holdout, seed=self.seed)
            forget = train.subset(suspects.indices)

            def attempt(lr: float):
                def repair() -> nn.Module:
                    copy_ = copy.deepcopy(model)
                    extra.setdefault("history", []).append(
                        unlearn_fine_tune(
                            copy_,
                            keep,
                            forget,
                            steps=self.steps,
                            lr=lr,
                            keep_batch=self.keep_batch,
                            forget_batch=self.forget_batch,
                            weight=self.weight,
                            seed=self.seed,
                        )
                    )
                    return copy_

                return repair

            repaired, outcome = first_within_budget(
                model,
                [(f"unlearn lr {self.lr:g}", attempt(self.lr)), (f"unlearn lr {self.lr / 3:g}", attempt(self.lr / 3))],
                held_out,
                budget=self.budget,
            )
            if repaired is model:
                repaired = copy.deepcopy(model).eval()
                warnings.append(outcome.message)
            extra["guard"] = vars(outcome)
        return repaired, DefenseReport(
            method=self.name,
            config=self.params(),
            layers=[],
            samples=len(train),
            seconds=time.perf_counter() - start,
            warnings=warnings,
            extra=extra,
        )
