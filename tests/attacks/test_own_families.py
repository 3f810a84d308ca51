"""Our own trigger families (issue 23): each changes the image the way its docstring says."""

import torch

from bdprune.attacks import create_attack

SHAPE = (1, 28, 28)


def build(name, seed=0, **params):
    return create_attack(
        name, image_shape=SHAPE, num_classes=10, generator=torch.Generator().manual_seed(seed), **params
    )


def test_sinusoid_adds_a_grating_of_the_given_amplitude():
    attack = build("sinusoid", delta=0.1)
    grey = torch.full((2, *SHAPE), 0.5)
    change = attack.poison_images(grey) - grey
    assert change.abs().max() <= 0.1 + 1e-6 and change.abs().max() > 0.09
    assert abs(float(change.mean())) < 0.02  # a sine over whole periods averages to about 0


def test_smooth_pattern_is_bounded_and_has_no_high_frequencies():
    attack = build("smooth", eps=0.1)
    grey = torch.full((1, *SHAPE), 0.5)
    change = (attack.poison_images(grey) - grey)[0, 0]
    assert change.abs().max() <= 0.1 + 1e-6
    neighbours = (change[:, 1:] - change[:, :-1]).abs().max()
    assert neighbours < 0.05  # neighbouring pixels differ by far less than the amplitude


def test_sparse_touches_exactly_its_pixels():
    attack = build("sparse", pixels=7)
    grey = torch.full((1, *SHAPE), 0.5)
    changed = (attack.poison_images(grey) != grey).sum()
    assert changed == 7  # every trigger pixel is 0 or 1, never the grey value
