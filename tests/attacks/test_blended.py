"""Blended: the convex mix of image and trigger."""

import pytest
import torch

from bdprune.attacks import create_attack

SHAPE, CLASSES = (3, 8, 8), 4


def build(name, seed=0, **params):
    return create_attack(
        name, image_shape=SHAPE, num_classes=CLASSES, generator=torch.Generator().manual_seed(seed), **params
    )


# -- Blended ---------------------------------------------------------------------------------------------
def test_blended_is_the_convex_mix():
    attack = build("blended", alpha=0.2)
    x = torch.rand(3, *SHAPE)
    out, _ = attack.apply(x, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(out, 0.8 * x + 0.2 * attack.trigger, atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        build("blended", alpha=0.0)
