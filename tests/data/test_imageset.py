"""ImageSet: validation, seeded disjoint splits that keep their indices."""

import pytest
import torch

from bdprune.data import ImageSet


# -- ImageSet --------------------------------------------------------------------------------------------
def test_imageset_validates_its_fields():
    with pytest.raises(ValueError, match="N, C, H, W"):
        ImageSet(torch.zeros(4, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), ("a",))
    with pytest.raises(ValueError, match="labels must lie"):
        ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), ("a", "b"))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 1]), ("a", "b"))


def test_split_is_disjoint_seeded_and_keeps_indices(tiny_set):
    a1, b1 = tiny_set.split([10, 20], torch.Generator().manual_seed(1))
    a2, b2 = tiny_set.split([10, 20], torch.Generator().manual_seed(1))
    a3, _ = tiny_set.split([10, 20], torch.Generator().manual_seed(2))
    assert torch.equal(a1.indices, a2.indices) and torch.equal(b1.indices, b2.indices)
    assert not torch.equal(a1.indices, a3.indices)
    assert len(set(a1.indices.tolist()) & set(b1.indices.tolist())) == 0
    assert torch.equal(a1.images, tiny_set.images[a1.indices])
    with pytest.raises(ValueError, match="cannot split"):
        tiny_set.split([50, 50], torch.Generator())
