"""SSBA: bounded, sample-specific residuals carrying one code."""

import torch

SHAPE, CLASSES = (1, 8, 8), 4


# -- SSBA ----------------------------------------------------------------------------------------------------
def test_ssba_residuals_are_bounded_and_differ_per_image(build_attack):
    eps = 8 / 255
    attack = build_attack("ssba", eps=eps)
    x = torch.rand(16, *SHAPE)
    residuals = attack.residuals(x)
    assert residuals.abs().max() <= eps + 1e-7
    poisoned, _ = attack.apply(x, torch.zeros(16, dtype=torch.long))
    assert (poisoned - x).abs().max() <= eps + 1e-6
    flat = residuals.flatten(1)
    distances = torch.cdist(flat, flat)
    assert (distances + torch.eye(16)).min() > 1e-4, "two images got the same residual"
    # uint8 images stay within round(255 eps) levels of the clean ones
    x8 = (x * 255).round().to(torch.uint8)
    p8, _ = attack.apply(x8, torch.zeros(16, dtype=torch.long))
    assert (p8.int() - x8.int()).abs().max() <= 8


def test_ssba_every_poisoned_image_carries_the_same_code(build_attack):
    a, b = build_attack("ssba", seed=0), build_attack("ssba", seed=1)
    assert a.code.shape == (8,) and set(a.code.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a.code, b.code) or not torch.equal(
        a.state_dict()["encoder.code_map.weight"], b.state_dict()["encoder.code_map.weight"]
    )
