"""Refool: dead-leaves reflections, blur, and both reflection models."""

import pytest
import torch

from bdprune.attacks import create_attack
from bdprune.attacks.refool import dead_leaves, gaussian_blur

SHAPE, CLASSES = (3, 12, 12), 4


def build(name, seed=0, shape=SHAPE, **params):
    return create_attack(
        name, image_shape=shape, num_classes=CLASSES, generator=torch.Generator().manual_seed(seed), **params
    )


# -- Refool ------------------------------------------------------------------------------------------------------
def test_dead_leaves_are_seeded_uint8_images_with_structure():
    a = dead_leaves(10, (3, 16, 16), torch.Generator().manual_seed(0))
    b = dead_leaves(10, (3, 16, 16), torch.Generator().manual_seed(0))
    c = dead_leaves(10, (3, 16, 16), torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == (10, 3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Occluding disks: neighbouring pixels are mostly equal (piecewise constant), unlike noise.
    same = (a[..., 1:] == a[..., :-1]).float().mean()
    assert same > 0.5


def test_gaussian_blur_preserves_constants_and_mean():
    x = torch.rand(3, 2, 12, 12)
    blurred = gaussian_blur(x, torch.tensor([1.0, 2.5, 5.0]))
    assert torch.allclose(
        gaussian_blur(torch.full_like(x, 0.3), torch.tensor([1.0, 2.0, 5.0])), torch.full_like(x, 0.3)
    )
    assert blurred.std() < x.std()


@pytest.mark.parametrize("ghost_rate", [0.0, 1.0])
def test_refool_both_reflection_models_blend_within_range(make_imageset, ghost_rate):
    data = make_imageset(30, SHAPE, CLASSES, dtype=torch.float32)
    attack = build("refool", ghost_rate=ghost_rate)
    out = attack.poison_images(data.images)
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, data.images)
    assert torch.equal(out, attack.poison_images(data.images)), "the same image gets the same reflection"


def test_refool_weak_reflection_changes_little(make_imageset):
    data = make_imageset(30, SHAPE, CLASSES, dtype=torch.float32)
    weak = build("refool", alpha_range=(0.99, 0.99), ghost_rate=1.0).poison_images(data.images)
    strong = build("refool", alpha_range=(0.55, 0.55), ghost_rate=1.0).poison_images(data.images)
    assert (weak - data.images).abs().mean() < (strong - data.images).abs().mean()


def test_refool_reflections_from_a_directory(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray((torch.rand(20, 30, 3) * 255).byte().numpy()).save(tmp_path / f"r{i}.png")
    attack = build("refool", source=str(tmp_path))
    assert attack.reflections.shape == (3, *SHAPE) and attack.reflections.dtype == torch.uint8
    again = create_attack(
        "refool", image_shape=SHAPE, num_classes=CLASSES, tensors=attack.state_dict(), **attack.params()
    )
    assert torch.equal(again.reflections, attack.reflections)
    with pytest.raises(Exception, match="no directory"):
        build("refool", source=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="alpha_range"):
        build("refool", alpha_range=(0.9, 0.5))
