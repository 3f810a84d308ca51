"""WB: the sliced Wasserstein distance, the bounded trigger, T's objective and joint training through train_model."""

import pytest
import torch
from torch import nn

from bdprune.attacks.learned import seeded_init
from bdprune.attacks.wb import classifier_head, sliced_wasserstein
from bdprune.train import TrainConfig

SHAPE, CLASSES = (1, 8, 8), 4


def small_classifier() -> nn.Module:
    """A conv-BN network ending with a linear layer: the latent features WB reads are its 4 pooled channels."""
    return seeded_init(
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, CLASSES),
        ),
        0,
    )


# -- the distance ------------------------------------------------------------------------------------------------
def test_sliced_wasserstein_closed_forms():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 3, generator=g)
    e = torch.eye(3)
    assert sliced_wasserstein(a, a, e).item() == 0.0
    assert sliced_wasserstein(a, a[torch.randperm(50, generator=g)], e).item() == 0.0, "order within a sample"
    # a shift by c along the first axis: W2^2 = c^2 on that slice, 0 on the two others
    shifted = a + torch.tensor([2.0, 0.0, 0.0])
    assert sliced_wasserstein(a, shifted, e).item() == pytest.approx(4.0 / 3.0, rel=1e-5)
    # one slice orthogonal to the shift sees nothing
    assert sliced_wasserstein(a, shifted, torch.tensor([[0.0, 1.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="one shape"):
        sliced_wasserstein(a, a[:10], e)


def test_classifier_head_is_the_last_linear_and_required():
    model = small_classifier()
    assert classifier_head(model) is model[-1]
    with pytest.raises(ValueError, match="no nn.Linear"):
        classifier_head(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()))


# -- the trigger -------------------------------------------------------------------------------------------------
def test_trigger_is_bounded_input_dependent_and_in_range(build_attack):
    attack = build_attack("wb", eps=0.1)
    x = torch.rand(6, *SHAPE)
    out = attack.poison_images(x)
    delta = out - x
    assert delta.abs().max() <= 0.1 + 1e-6 and out.min() >= 0 and out.max() <= 1
    assert delta.abs().max() > 0.01, "the trigger changed almost nothing"
    assert not torch.allclose(delta[0], delta[1]), "the perturbation should depend on the image"


def test_trigger_loss_trains_the_generator_only(build_attack, make_imageset):
    attack = build_attack("wb", seed=1, fit=False).fit(make_imageset(32, SHAPE, CLASSES, seed=9))
    model = small_classifier().train()
    bn = model[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    x, y = torch.rand(16, *SHAPE), torch.arange(16) % CLASSES
    terms = attack.trigger_loss(model, x, y)
    assert set(terms) == {"trigger_loss", "trigger_ce", "sliced_w"} and terms["sliced_w"] >= 0
    terms["trigger_loss"].backward()
    assert all(p.grad is None for p in model.parameters()), "T's step must not train the classifier"
    assert all(p.requires_grad for p in model.parameters()), "requires_grad must be restored"
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in attack.generator_net.parameters())


def test_the_penalty_pulls_triggered_features_towards_clean_ones(build_attack, make_imageset):
    """T trained against a fixed classifier: with the penalty the latent distance ends lower than without."""
    x, y = torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(4)), torch.arange(32) % CLASSES
    ends = {}
    for weight in (0.0, 100.0):
        attack = build_attack("wb", seed=2, fit=False, eps=0.3, lambda_w=weight, lr=0.01)
        attack.fitted = True
        model = small_classifier().eval()
        optimizer = attack.generator_optimizer()
        for _ in range(40):
            optimizer.zero_grad()
            attack.trigger_loss(model, x, y)["trigger_loss"].backward()
            optimizer.step()
        ends[weight] = attack.trigger_loss(model, x, y)["sliced_w"].item()
    assert ends[100.0] < 0.5 * ends[0.0], ends


# -- joint training ------------------------------------------------------------------------------------------------
def joint_setup(build_attack, make_imageset, **params):
    attack = build_attack("wb", seed=3, fit=False, **params).fit(make_imageset(32, SHAPE, CLASSES, seed=9))
    data = make_imageset(48, SHAPE, CLASSES, seed=2)
    poisoned = torch.zeros(48, dtype=torch.bool)
    poisoned[torch.arange(1, 48, 8)] = True
    return attack, data, poisoned


def test_joint_training_updates_generator_and_classifier(build_attack, make_imageset):
    attack, data, poisoned = joint_setup(build_attack, make_imageset)
    model = small_classifier()
    before_model = [p.detach().clone() for p in model.parameters()]
    before_gen = {k: v.clone() for k, v in attack.generator_net.state_dict().items()}
    history = attack.train_jointly(
        model,
        data,
        poisoned,
        TrainConfig(epochs=1, batch_size=16, lr=0.05, augment=None),
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert len(history) == 1 and {"loss", "ce", "trigger_ce", "sliced_w"} <= set(history[0])
    assert torch.isfinite(torch.tensor(history[0]["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before_model, model.parameters()))
    assert any(not torch.equal(v, attack.generator_net.state_dict()[k]) for k, v in before_gen.items())
    assert not model.training and not attack.generator_net.training
    with pytest.raises(ValueError, match="bool tensor"):
        attack.train_jointly(
            model, data, poisoned[:5], TrainConfig(epochs=1, augment=None), generator=torch.Generator(), progress=False
        )
    with pytest.raises(ValueError, match="no nn.Linear"):
        attack.train_jointly(
            nn.Sequential(nn.Conv2d(1, CLASSES, 8), nn.Flatten()),
            data,
            poisoned,
            TrainConfig(epochs=1, augment=None),
            generator=torch.Generator(),
            progress=False,
        )


def test_joint_samples_zero_freezes_the_trigger(build_attack, make_imageset):
    attack, data, poisoned = joint_setup(build_attack, make_imageset, joint_samples=0)
    before = {k: v.clone() for k, v in attack.generator_net.state_dict().items()}
    history = attack.train_jointly(
        small_classifier(),
        data,
        poisoned,
        TrainConfig(epochs=1, batch_size=16, lr=0.05, augment=None),
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert "sliced_w" not in history[0]
    assert all(torch.equal(v, attack.generator_net.state_dict()[k]) for k, v in before.items())


def test_fit_logs_its_terms(build_attack):
    log = build_attack("wb").fit_log
    assert {"trigger_ce_last_50_steps", "sliced_w_last_50_steps", "surrogate_asr_last_50_steps"} <= set(log)
