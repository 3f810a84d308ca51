"""NAD: the attention loss and the stages it distils."""

import torch

from bdprune.defenses import NAD, DefenseData
from bdprune.defenses.nad import attention_loss, attention_map, find_stages


def test_nad_attention_loss_is_zero_for_identical_teacher_and_student():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(4, 8, 6, 6, generator=g), torch.randn(4, 16, 3, 3, generator=g)]
    assert attention_loss(feats, [f.clone() for f in feats], [500.0, 1000.0]).item() == 0.0
    other = [f + torch.randn(f.shape, generator=g) for f in feats]
    assert attention_loss(feats, other, [500.0, 1000.0]).item() > 0.0
    am = attention_map(feats[0])  # (N, H * W), unit L2 norm per sample
    assert am.shape == (4, 36) and torch.allclose(am.norm(dim=1), torch.ones(4), atol=1e-5)


def test_nad_distils_the_last_three_stages(tiny):
    model, clean = tiny
    assert find_stages(model) == ["layer2", "layer3", "layer4"]
    _, report = NAD(teacher_epochs=1, epochs=1).run(model, DefenseData(clean=clean))
    assert report.extra["attention_layers"] == ["layer2", "layer3", "layer4"]
    assert report.extra["mean_attention_loss"] > 0  # the teacher moved, so the student is pulled towards it
