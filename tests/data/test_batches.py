"""Batched augmentation and batch iteration."""

import pytest
import torch

from bdprune.data import Augment, batch_crop, batch_flip_lr, iterate_batches


# -- augmentation ----------------------------------------------------------------------------------------
def test_batch_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.rand(16, 2, 6, 6)
    out = batch_crop(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        assert any(torch.equal(padded[i, :, r : r + 6, c : c + 6], out[i]) for r in range(5) for c in range(5))
    assert out.shape == x.shape


def test_batch_flip_flips_about_half_and_keeps_input():
    x = torch.rand(400, 1, 4, 4)
    before = x.clone()
    out = batch_flip_lr(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped | same).all())
    assert 150 < int(flipped.sum()) < 250
    assert torch.equal(x, before)


def test_iterate_batches_covers_every_sample_once(tiny_set):
    seen = torch.cat([pos for _, _, pos in iterate_batches(tiny_set, 10, shuffle=True, generator=torch.Generator())])
    assert sorted(seen.tolist()) == list(range(len(tiny_set)))
    x, y, _ = next(iterate_batches(tiny_set, 10))
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y.dtype == torch.int64


def test_iterate_batches_needs_a_generator_for_randomness(tiny_set):
    with pytest.raises(ValueError, match="torch.Generator"):
        next(iterate_batches(tiny_set, 8, augment=Augment()))
