"""WaNet: the warping field, and its noise-mode ("cross") samples."""

import math

import pytest
import torch

from bdprune.attacks import choose_cross_positions, create_attack, cross_at, poison_training_set
from bdprune.attacks.wanet import control_grid, identity_grid, warp

SHAPE, CLASSES = (3, 12, 12), 4


def build(name, seed=0, shape=SHAPE, **params):
    return create_attack(
        name, image_shape=shape, num_classes=CLASSES, generator=torch.Generator().manual_seed(seed), **params
    )


# -- WaNet -----------------------------------------------------------------------------------------------------
def test_wanet_with_zero_strength_is_the_identity(make_imageset):
    data = make_imageset(16, SHAPE, CLASSES, dtype=torch.float32)
    out = build("wanet", s=0.0).poison_images(data.images)
    assert torch.allclose(out, data.images, atol=1e-5)
    u8 = make_imageset(16, SHAPE, CLASSES)
    assert torch.equal(build("wanet", s=0.0).apply(u8.images, u8.labels)[0], u8.images)


def test_wanet_control_grid_and_warp_size():
    noise = control_grid(4, torch.Generator().manual_seed(0))
    assert noise.shape == (2, 4, 4) and math.isclose(noise.abs().mean().item(), 1.0, rel_tol=1e-5)
    attack = build("wanet", s=0.5)
    offset = (attack.grid - identity_grid(12, 12)).abs()  # in [-1, 1] coordinates: 2 / (size - 1) per pixel
    pixels = offset * (12 - 1) / 2
    assert 0 < pixels.mean() < 1.0, "s = 0.5 moves pixels by a fraction of a pixel on average"
    stronger = build("wanet", s=2.0)
    assert (stronger.grid - identity_grid(12, 12)).abs().mean() > offset.mean()


def test_wanet_warp_of_a_constant_image_is_constant_inside():
    images = torch.full((2, 3, 12, 12), 0.6)
    out = warp(images, build("wanet").grid)
    assert torch.allclose(out[..., 2:-2, 2:-2], images[..., 2:-2, 2:-2], atol=1e-5)


def test_wanet_noise_mode_samples_are_deterministic_keep_labels_and_differ_from_the_trigger(make_imageset):
    data = make_imageset(20, SHAPE, CLASSES)
    attack = build("wanet")
    cross, labels = attack.apply_cross(data.images, data.labels)
    again, _ = attack.apply_cross(data.images, data.labels)
    poisoned, _ = attack.apply(data.images, data.labels)
    assert torch.equal(cross, again) and torch.equal(labels, data.labels)
    assert cross.dtype == torch.uint8 and cross.shape == data.images.shape
    assert not torch.equal(cross, poisoned) and not torch.equal(cross, data.images)


def test_cross_positions_count_disjointness_and_labels(make_imageset):
    data = make_imageset(100, SHAPE, CLASSES)
    attack = build("wanet", cross_ratio=2.0)
    mixed, positions = poison_training_set(data, attack, 0.1, torch.Generator().manual_seed(0))
    cross = choose_cross_positions(mixed.labels, attack, positions, torch.Generator().manual_seed(1))
    assert len(cross) == 2 * len(positions) == 20
    assert not set(cross.tolist()) & set(positions.tolist())
    full = cross_at(mixed, attack, cross)
    assert torch.equal(full.labels, mixed.labels), "noise-mode samples keep their true labels"
    changed = (full.images != mixed.images).flatten(1).any(1)
    assert set(changed.nonzero().flatten().tolist()) <= set(cross.tolist())
    assert len(choose_cross_positions(mixed.labels, build("badnets"), positions, torch.Generator())) == 0
    with pytest.raises(ValueError, match="cross_ratio"):
        choose_cross_positions(mixed.labels, build("wanet", cross_ratio=20.0), positions, torch.Generator())
