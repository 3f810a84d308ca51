"""NC: Neural Cleanse's repair by unlearning (Wang et al., IEEE S&P 2019, section VI-C), the baseline of issue 25.

Neural Cleanse reverses a minimal trigger for every label (`bdprune.defenses.trigger_reversal`); a label whose
trigger is abnormally small (anomaly index above 2) is taken for a backdoor target. The repair fine-tunes the
model on the defender's clean samples of which a fraction (20 % in the paper) carry the reversed trigger
while keeping their true labels, so the network unlearns the trigger-to-target shortcut. A model with no
flagged label is returned unchanged (Neural Cleanse found nothing to unlearn).

The optimisation lives in `bdprune.defenses.trigger_reversal` (the scan's `--method nc` uses it too); this
module only decides and fine-tunes.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..params import param
from .base import Defense, DefenseData, DefenseReport, register_defense
from .trigger_reversal import FLAG_INDEX, anomaly_indices, reverse_all
from .tuning import FineTuneConfig, fine_tune


@register_defense
@dataclass(eq=False, kw_only=True)
class NC(Defense):
    """Neural Cleanse: reverse a trigger per label, unlearn those of the flagged labels.

    Args:
        iterations: optimisation steps of each label's trigger reversal (CPU-sized; the paper runs epochs).
        reverse_batch_size: clean samples per reversal step.
        reverse_lr: Adam's learning rate for the mask and pattern (the paper's 0.1).
        init_cost: the starting weight lambda of the mask's L1 norm (the paper's 1e-3), adjusted on the way.
        index: a label whose anomaly index exceeds this is flagged (the paper's 2).
        fraction: share of the clean samples stamped with a reversed trigger while unlearning (the paper's 0.2).
        epochs: passes of the unlearning fine-tuning over the clean samples.
        lr: initial learning rate of the unlearning (SGD, cosine schedule).
        train_batch_size: samples per unlearning step.
        augment: random crop and flip while unlearning, as in training.
        seed: seeds the reversal's batches and initial patterns, and the unlearning.
        batch_size: samples per forward pass outside training (kept for a uniform interface).
        progress: show a progress bar.

    Example:
        >>> repaired, report = NC().run(model, DefenseData(clean=clean_500))
        >>> report.extra["flagged"], report.extra["anomaly_index"]
    """

    name = "nc"

    iterations: int = param(150, ge=1)
    reverse_batch_size: int = param(32, ge=1)
    reverse_lr: float = param(0.1, gt=0.0)
    init_cost: float = param(1e-3, ge=0.0)
    index: float = param(FLAG_INDEX, ge=0.0)
    fraction: float = param(0.2, ge=0.0, le=1.0)
    epochs: int = param(10, ge=0)
    lr: float = param(0.01, gt=0.0)
    train_batch_size: int = param(64, ge=1)
    augment: bool = True
    seed: int = 0

    def run(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        start = time.perf_counter()
        clean = data.require("clean", "Neural Cleanse")
        triggers = reverse_all(
            model,
            clean,
            seed=self.seed,
            steps=self.iterations,
            batch_size=self.reverse_batch_size,
            lr=self.reverse_lr,
            init_cost=self.init_cost,
        )
        indices = anomaly_indices([t.norm for t in triggers])
        flagged = [t for t, i in zip(triggers, indices) if i == i and i > self.index]
        repaired = copy.deepcopy(model)
        history: list[dict[str, float]] = []
        warnings = []
        if flagged:
            g = torch.Generator().manual_seed(self.seed)
            stamped = torch.rand(len(clean), generator=g) < self.fraction  # by position in the clean set
            which = torch.randint(len(flagged), (len(clean),), generator=g)  # whose trigger a stamped sample gets

            def unlearn(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor):
                pos = positions.cpu()
                x = images
                for k, trigger in enumerate(flagged):
                    rows = (stamped[pos] & (which[pos] == k)).to(images.device)
                    if bool(rows.any()):
                        x = torch.where(rows[:, None, None, None], trigger.apply(x), x)
                return F.cross_entropy(net(x), labels)  # true labels: the trigger must stop mattering

            config = FineTuneConfig(
                epochs=self.epochs, lr=self.lr, batch_size=self.train_batch_size, augment=self.augment
            )
            history = fine_tune(repaired, clean, config, seed=self.seed, loss_fn=unlearn, progress=self.progress)
        else:
            warnings.append(
                f"no label's anomaly index exceeds {self.index:g}: Neural Cleanse finds no backdoor, the model is "
                "returned unchanged"
            )
        repaired.eval()
        report = DefenseReport(
            method=self.name,
            config=self.params(),
            layers=[],
            samples=len(clean),
            seconds=time.perf_counter() - start,
            warnings=warnings,
            extra={
                "norms": [t.norm for t in triggers],
                "success": [t.success for t in triggers],
                "anomaly_index": [i if i == i else None for i in indices],
                "flagged": [t.target for t in flagged],
                "history": history,
            },
        )
        return repaired, report
