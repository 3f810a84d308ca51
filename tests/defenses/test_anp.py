"""ANP: masks under adversarial perturbation, pruning by the BN weight."""

import torch

from bdprune.defenses import ANP, DefenseData


def test_anp_masks_move_under_perturbation_and_stay_in_the_unit_interval(tiny):
    model, clean = tiny
    _, perturbed = ANP(iterations=20, eps=0.4).run(model, DefenseData(clean=clean))
    _, natural = ANP(iterations=20, eps=0.0).run(model, DefenseData(clean=clean))

    def masks(report):
        return torch.cat([torch.tensor(m) for m in report.extra["masks"].values()])

    m_pert, m_nat = masks(perturbed), masks(natural)
    assert ((m_pert >= 0) & (m_pert <= 1)).all()
    assert (m_pert < 1).any(), "the adversarial perturbation moves some masks"
    assert (1 - m_pert).sum() > (1 - m_nat).sum(), "masks move further under perturbation than without it"
    pruned = {l.name: l.pruned for l in perturbed.layers}
    for name, values in perturbed.extra["masks"].items():
        assert pruned[name] == [i for i, v in enumerate(values) if v < 0.2]


def test_anp_prunes_by_zeroing_the_bn_weight(tiny):
    model, clean = tiny
    _, report = ANP(iterations=5, threshold=1.01).run(model, DefenseData(clean=clean))  # every mask < 1.01
    repaired, _ = ANP(iterations=5, threshold=1.01).run(model, DefenseData(clean=clean))
    assert report.num_pruned == sum(l.channels for l in report.layers)
    assert repaired.bn1.weight.abs().sum() == 0 and torch.equal(repaired.bn1.bias, model.bn1.bias)
