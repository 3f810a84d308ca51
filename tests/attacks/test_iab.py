"""IAB: an input-aware trigger, its diversity loss, and joint training through train_model."""

import pytest
import torch

from bdprune.attacks.iab import diversity_loss
from bdprune.train import TrainConfig

SHAPE, CLASSES = (1, 8, 8), 4


# -- IAB -------------------------------------------------------------------------------------------------------
def test_iab_trigger_is_input_aware_and_cross_images_differ(build_attack):
    attack = build_attack("iab")
    x = torch.rand(6, *SHAPE)
    masks, patterns = attack.masks_and_patterns(x)
    assert masks.shape == (6, 1, 8, 8) and patterns.shape == (6, *SHAPE)
    assert masks.min() >= 0 and masks.max() <= 1 and patterns.min() >= 0 and patterns.max() <= 1
    assert not torch.allclose(patterns[0], patterns[1]), "the pattern should depend on the image"
    own = attack.poison_images(x)
    assert torch.allclose(own, x + (patterns - x) * masks)
    assert not torch.allclose(attack.cross_trigger_images(x, x.roll(1, 0)), own)


def test_iab_diversity_loss_is_image_distance_over_output_distance():
    x1, x2 = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    o1, o2 = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.5)
    assert diversity_loss(x1, x2, o1, o2).item() == pytest.approx(2.0, rel=1e-5)


def test_iab_joint_training_updates_pattern_generator_and_classifier(build_attack, make_imageset):
    attack = build_attack("iab", seed=3, fit=False).fit(make_imageset(32, SHAPE, CLASSES, seed=9))
    data = make_imageset(48, SHAPE, CLASSES, seed=2)
    poisoned = torch.zeros(48, dtype=torch.bool)
    poisoned[torch.arange(1, 48, 8)] = True
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, CLASSES))
    before_model = [p.detach().clone() for p in model.parameters()]
    before_mask = {k: v.clone() for k, v in attack.mask_net.state_dict().items()}
    before_pattern = {k: v.clone() for k, v in attack.pattern_net.state_dict().items()}
    history = attack.train_jointly(
        model,
        data,
        poisoned,
        TrainConfig(epochs=1, batch_size=16, lr=0.05, augment=None),
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before_model, model.parameters()))
    assert any(not torch.equal(v, attack.pattern_net.state_dict()[k]) for k, v in before_pattern.items())
    assert all(torch.equal(v, attack.mask_net.state_dict()[k]) for k, v in before_mask.items()), "M is frozen"
    assert all(p.requires_grad for p in attack.mask_net.parameters()), "requires_grad must be restored"
    with pytest.raises(ValueError, match="bool tensor"):
        attack.train_jointly(
            model, data, poisoned[:5], TrainConfig(epochs=1, augment=None), generator=torch.Generator(), progress=False
        )
