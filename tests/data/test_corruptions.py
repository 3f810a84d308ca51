"""Appendix E's corruptions: batched, pure, seeded, in range; the fraction replaced is the fraction asked."""

import pytest
import torch

from bdprune.data import ImageSet
from bdprune.data.corruptions import CORRUPTIONS, corrupt_fraction, polar_warp
from bdprune.errors import UnknownName


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_kept_input_untouched_and_seeded(name, dtype, channels):
    g = torch.Generator().manual_seed(0)
    images = (
        torch.randint(0, 256, (6, channels, 12, 12), generator=g, dtype=torch.uint8)
        if dtype == torch.uint8
        else torch.rand(6, channels, 12, 12, generator=g)
    )
    before = images.clone()
    out = CORRUPTIONS[name](images, torch.Generator().manual_seed(1))
    again = CORRUPTIONS[name](images, torch.Generator().manual_seed(1))
    assert torch.equal(images, before)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert torch.equal(out, again)
    assert float(out.float().min()) >= 0 and float(out.float().max()) <= (255 if dtype == torch.uint8 else 1)
    assert not torch.equal(out, images)  # it does change the images


def test_polar_warp_without_translation_is_the_identity():
    x = torch.rand(3, 1, 9, 9)
    out = polar_warp(x, torch.Generator().manual_seed(0), translate=0.0)
    assert torch.allclose(out, x, atol=1e-5)


def test_corrupt_fraction_replaces_the_fraction_asked_and_keeps_labels():
    g = torch.Generator().manual_seed(0)
    data = ImageSet(
        torch.randint(0, 256, (50, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(50) % 5, tuple("abcde")
    )
    out = corrupt_fraction(data, "pw", 0.1, torch.Generator().manual_seed(3))
    changed = (out.images != data.images).flatten(1).any(1)
    assert int(changed.sum()) == 5
    assert torch.equal(out.labels, data.labels) and torch.equal(out.indices, data.indices)
    with pytest.raises(UnknownName, match="known: cj"):
        corrupt_fraction(data, "fog", 0.1, g)
