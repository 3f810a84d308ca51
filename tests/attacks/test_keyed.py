"""Per-image keyed randomness: deterministic, distinct, uniform."""

import torch

from bdprune.attacks.keyed import image_keys, keyed_uniform

SHAPE, CLASSES = (3, 12, 12), 4


# -- keyed randomness --------------------------------------------------------------------------------------------
def test_image_keys_are_deterministic_distinct_and_uniform(make_imageset):
    data = make_imageset(400, SHAPE, CLASSES)
    x = data.images.float() / 255
    keys = image_keys(x, seed=3)
    assert torch.equal(keys, image_keys(data.images, seed=3)), "uint8 and float [0, 1] give the same key"
    assert len(set(keys.tolist())) == len(keys)
    assert not torch.equal(keys, image_keys(x, seed=4))
    u = keyed_uniform(keys, 50, seed=3)
    assert u.shape == (400, 50) and u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    assert abs(torch.corrcoef(u[:, :2].T)[0, 1].item()) < 0.15, "two streams of one key look independent"
