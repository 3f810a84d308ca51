"""FT: fine-tuning lowers the clean loss."""

import torch

from bdprune.defenses import FT, DefenseData


# -- core mechanisms -----------------------------------------------------------------------------------------
def test_ft_lowers_the_clean_loss_and_changes_the_weights(tiny):
    model, clean = tiny
    repaired, report = FT(epochs=6, lr=0.05, augment=False).run(model, DefenseData(clean=clean))
    losses = [h["loss"] for h in report.extra["history"]]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert not torch.equal(repaired.conv1.weight, model.conv1.weight)
