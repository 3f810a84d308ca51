"""CLA: clean labels, the four-corner trigger, and PGD within the ball."""

import torch

from bdprune.attacks import poison_training_set
from bdprune.attacks.cla import pgd

SHAPE, CLASSES = (1, 8, 8), 4


# -- CLA -------------------------------------------------------------------------------------------------------
def test_cla_keeps_labels_poisons_only_the_target_class_and_triggers_four_corners(make_imageset, build_attack):
    attack = build_attack("cla", pattern="white", target=1)
    data = make_imageset(40, SHAPE, CLASSES)
    mixed, positions = poison_training_set(data, attack, 1.0, torch.Generator())
    assert torch.equal(positions, (data.labels == 1).nonzero().flatten())
    assert torch.equal(mixed.labels, data.labels)
    test, _ = attack.apply_test(torch.zeros(2, *SHAPE), torch.zeros(2, dtype=torch.long))
    for rows, cols in (
        (slice(0, 3), slice(0, 3)),
        (slice(0, 3), slice(5, 8)),
        (slice(5, 8), slice(0, 3)),
        (slice(5, 8), slice(5, 8)),
    ):
        assert test[:, :, rows, cols].eq(1).all()
    assert test.sum() == 2 * 4 * 9, "at test time only the trigger is applied"


def test_cla_training_poison_is_within_eps_outside_the_corners(build_attack):
    attack = build_attack("cla", eps=4 / 255)
    x = torch.rand(6, *SHAPE)
    out, _ = attack.apply(x, torch.zeros(6, dtype=torch.long))
    inner = (slice(None), slice(None), slice(3, 5), slice(None))
    assert (out[inner] - x[inner]).abs().max() <= 4 / 255 + 1e-6
    assert (out[inner] - x[inner]).abs().max() > 0, "PGD changed nothing"


def test_pgd_raises_the_loss_and_stays_in_the_ball():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, CLASSES))
    x, y = torch.rand(8, *SHAPE), torch.arange(8) % CLASSES
    adv = pgd(model, x, y, eps=0.05, step=0.01, steps=10)
    loss = torch.nn.functional.cross_entropy
    assert loss(model(adv), y) > loss(model(x), y)
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
