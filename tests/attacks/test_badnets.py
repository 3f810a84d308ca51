"""BadNets: the patch, where it goes, and the paper's random pattern."""

import pytest
import torch

from bdprune.attacks import create_attack

SHAPE, CLASSES = (3, 8, 8), 4


def build(name, seed=0, **params):
    return create_attack(
        name, image_shape=SHAPE, num_classes=CLASSES, generator=torch.Generator().manual_seed(seed), **params
    )


# -- BadNets ---------------------------------------------------------------------------------------------
def test_badnets_stamps_exactly_the_patch_in_the_corner():
    attack = build("badnets", size=3, pattern="white", corner="bottom-right")
    x = torch.zeros(2, *SHAPE)
    out, _ = attack.apply(x, torch.zeros(2, dtype=torch.long))
    assert out[:, :, 5:, 5:].eq(1).all() and out.sum() == 2 * 3 * 9
    top_left, _ = build("badnets", size=2, pattern="white", corner="top-left", margin=1).apply(x, x[:, 0, 0, 0].long())
    assert top_left[:, :, 1:3, 1:3].eq(1).all() and top_left.sum() == 2 * 3 * 4


def test_badnets_random_pattern_is_the_papers_sigmoid_normal():
    attack = build("badnets", seed=0)
    expected = torch.sigmoid(torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(attack.patch, expected)


def test_badnets_rejects_a_patch_that_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        build("badnets", size=9)
