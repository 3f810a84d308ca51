"""FT: fine-tuning the suspicious model on the defender's clean samples (a baseline of section 5.1).

The simplest repair: continued training on clean data lets the network forget the trigger, at a cost in
clean accuracy when the clean set is small. Nothing is pruned. The recipe follows BackdoorBench's FT
(SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine schedule) except the number of epochs: 20 instead
of 100 by default, so that the CPU preset finishes in seconds; `epochs=100` restores theirs. No choice
looks at test data: the epoch count is fixed in advance and the last model is returned.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from torch import nn

from .base import DefenseData, DefenseReport, register_defense
from .tuning import FineTuned, fine_tune


@register_defense
@dataclass(eq=False, kw_only=True)
class FT(FineTuned):
    """Fine-tuning on clean samples.

    Args:
        epochs, lr, train_batch_size, weight_decay, augment, seed: the recipe (see `FineTuned`).
        batch_size: samples per forward pass outside training (unused by FT; kept for a uniform interface).
        progress: show a progress bar.

    Example:
        >>> repaired, report = FT(epochs=20).run(model, DefenseData(clean=clean_500))
        >>> report.extra["history"][-1]["loss"]
    """

    name = "ft"

    def run(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        start = time.perf_counter()
        clean = data.require("clean", "FT")
        repaired = copy.deepcopy(model)
        history = fine_tune(repaired, clean, self.tuning(), seed=self.seed, progress=self.progress, desc="FT")
        repaired.eval()
        report = DefenseReport(
            method=self.name,
            config=self.params(),
            layers=[],
            samples=len(clean),
            seconds=time.perf_counter() - start,
            extra={"history": history},
        )
        return repaired, report
