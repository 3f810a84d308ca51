"""The clean-sample repairs beyond pruning as defenses (BNP's setting, issue 23):

* `recover`: `bdprune.defenses.recover.recover` on the suspect as it is;
* `bnp-recover`: BNP's default pruning first, then the recovery on the pruned model.

Both hold out a share of the clean samples before anything is chosen (pruning and recovery see only the
rest) and guard the result on it (`holdout.first_within_budget`): the full recovery, then a gentler one (a
third of the learning rate, half the radius), then none (the suspect, or BNP's pruned model, unchanged).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..params import param
from .base import Defense, DefenseData, DefenseReport, register_defense
from .bnp import BNP
from .holdout import DEFAULT_BUDGET, first_within_budget, split_holdout
from .recover import recover


@dataclass(eq=False, kw_only=True)
class _Recovering(Defense):
    """What `recover` and `bnp-recover` share: hyperparameters, the hold-out split, the guarded attempts."""

    needs = frozenset({"clean"})
    prune_first: ClassVar[bool] = False

    epochs: int = param(30, ge=0)
    lr: float = param(0.01, gt=0.0)
    radius: float = param(0.1, ge=0.0)
    adv_steps: int = param(3, ge=0)
    adv_weight: float = param(1.0, ge=0.0)
    train_batch_size: int = param(64, ge=1)
    holdout: float = param(0.2, gt=0.0, lt=1.0)
    budget: float = param(DEFAULT_BUDGET, ge=0.0)
    seed: int = 0

    def run(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        start = time.perf_counter()
        clean = data.require("clean", self.name)
        used, held_out = split_holdout(clean, self.holdout, seed=self.seed)
        extra: dict[str, Any] = {"held_out": len(held_out)}
        layers, base = [], model
        if self.prune_first:
            base, pruning = BNP(batch_size=self.batch_size).run(
                model, DefenseData(clean=used, image_shape=data.image_shape)
            )
            layers, extra["bnp"] = pruning.layers, {"pruned": pruning.num_pruned, "warnings": pruning.warnings}

        def attempt(lr: float, radius: float):
            def repair() -> nn.Module:
                repaired = copy.deepcopy(base)
                extra.setdefault("history", []).append(
                    recover(
                        repaired,
                        used,
                        epochs=self.epochs,
                        lr=lr,
                        radius=radius,
                        adv_steps=self.adv_steps,
                        adv_weight=self.adv_weight,
                        batch_size=self.train_batch_size,
                        seed=self.seed,
                    )
                )
                return repaired

            return repair

        repaired, outcome = first_within_budget(
            model,
            [
                (f"recover lr {self.lr:g} radius {self.radius:g}", attempt(self.lr, self.radius)),
                (f"recover lr {self.lr / 3:g} radius {self.radius / 2:g}", attempt(self.lr / 3, self.radius / 2)),
                *([("bnp only", lambda: base)] if self.prune_first else []),
            ],
            held_out,
            budget=self.budget,
        )
        warnings = [] if outcome.chosen == 0 else [outcome.message]
        if repaired is model:
            repaired = copy.deepcopy(model).eval()
        extra["guard"] = vars(outcome)
        return repaired, DefenseReport(
            method=self.name,
            config=self.params(),
            layers=layers,
            samples=len(clean),
            seconds=time.perf_counter() - start,
            warnings=warnings,
            extra=extra,
        )


@register_defense
@dataclass(eq=False, kw_only=True)
class Recover(_Recovering):
    """Adversarial unlearning of batch-universal perturbations on the clean samples, guarded on a held-out share.

    Args:
        epochs: passes over the clean samples used.
        lr: initial learning rate (cosine-annealed to 0).
        radius: L2 radius of the perturbations, as a root-mean-square per pixel.
        adv_steps: gradient steps of each perturbation search.
        adv_weight: weight of the perturbed batch's loss.
        train_batch_size: samples per step.
        holdout: share of the clean samples held out for the guard.
        budget: ACC points the repair may lose on them before it backs off.
        seed: seed of the split, shuffling and augmentation.
        batch_size: samples per forward pass (BNP's statistics).
        progress: unused (a uniform interface).

    Example:
        >>> repaired, report = Recover().run(model, DefenseData(clean=clean_500))
        >>> report.extra["guard"]["message"]
    """

    name = "recover"


@register_defense
@dataclass(eq=False, kw_only=True)
class BNPRecover(_Recovering):
    """BNP's default pruning, then `recover` on the pruned model (pruned neurons stay silent); the same
    arguments as `recover`."""

    name = "bnp-recover"
    prune_first: ClassVar[bool] = True
