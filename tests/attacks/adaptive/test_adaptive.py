"""The adaptive attacks of appendix G: BN re-parameterisation (G.1), Eq. (4) and ML-MMD (G.2)."""

import math

import pytest
import torch
from torch import nn

from bdprune.attacks import create_attack, poison_training_set
from bdprune.attacks.adaptive import (
    create_adaptive_loss,
    list_adaptive,
    mmd2_gaussian,
    paired_preactivation_distance,
    reparameterize_bn,
)
from bdprune.defenses import DefenseData, create_defense
from bdprune.metrics import predict_logits
from bdprune.neurons.layers import find_neuron_layers
from bdprune.train import TrainConfig, train_model

SHAPE, CLASSES = (3, 12, 12), 4


def build(name, seed=0, shape=SHAPE, **params):
    return create_attack(
        name, image_shape=shape, num_classes=CLASSES, generator=torch.Generator().manual_seed(seed), **params
    )


# -- BN re-parameterisation (appendix G.1) ----------------------------------------------------------------------
def tiny_cnn(channels=3, classes=CLASSES):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


def test_bn_reparameterisation_keeps_logits_and_collapses_bnp_scores(make_imageset):
    benign = make_imageset(200, SHAPE, CLASSES, dtype=torch.float32, seed=1)
    model = tiny_cnn()
    with torch.no_grad():  # running statistics from a shifted "poisoned" mixture, random affine parameters
        for bn in (model[1], model[4]):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
        model.train()
        for _ in range(20):
            model(torch.rand(64, *SHAPE) * 0.5 + 0.5)
    model.eval()
    before = predict_logits(model, benign)
    bnp = create_defense("bnp", u=3.0, max_harm=None)  # scored on all 200 samples the BN statistics were set from
    _, report_before = bnp.run(model, DefenseData(clean=benign))
    repaired = reparameterize_bn(model, benign)
    after = predict_logits(repaired, benign)
    assert torch.allclose(after, before, atol=1e-4, rtol=1e-4)
    assert torch.allclose(
        predict_logits(repaired, make_imageset(50, SHAPE, CLASSES, dtype=torch.float32, seed=9)),
        predict_logits(model, make_imageset(50, SHAPE, CLASSES, dtype=torch.float32, seed=9)),
        atol=1e-4,
        rtol=1e-4,
    ), "the function is unchanged on any input"
    assert not torch.equal(repaired[1].running_mean, model[1].running_mean), "the original is not modified"
    _, report_after = bnp.run(repaired, DefenseData(clean=benign))
    kl_before = max(max(layer.scores) for layer in report_before.layers)
    kl_after = max(max(layer.scores) for layer in report_after.layers)
    assert kl_before > 0.1 and kl_after < 1e-6
    assert report_after.num_pruned == 0 or kl_after < 1e-6


def test_bn_reparameterisation_on_a_resnet_keeps_logits(make_imageset):
    from bdprune.models import create_model

    model = create_model("resnet18", num_classes=CLASSES, in_channels=3, base_width=4)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, *SHAPE) * 0.3)
    model.eval()
    benign = make_imageset(64, SHAPE, CLASSES, dtype=torch.float32)
    repaired = reparameterize_bn(model, benign)
    assert torch.allclose(predict_logits(repaired, benign), predict_logits(model, benign), atol=1e-4, rtol=1e-3)


# -- regularised adaptive attacks (appendix G.2) ------------------------------------------------------------------
def _distance(model, attack, images):
    layers = find_neuron_layers(model, images[:1])
    with torch.no_grad():
        return paired_preactivation_distance(model, layers, images, attack.poison_images(images)).item()


@pytest.mark.parametrize("name", list_adaptive())
def test_adaptive_objectives_train_through_train_model(make_imageset, name):
    data = make_imageset(64, SHAPE, CLASSES, dtype=torch.float32)
    attack = build("badnets")
    mixed, positions = poison_training_set(data, attack, 0.25, torch.Generator().manual_seed(0))
    poisoned = torch.zeros(len(data), dtype=torch.bool)
    poisoned[positions] = True
    loss = create_adaptive_loss(name, attack=attack, poisoned=poisoned)
    model = tiny_cnn()
    history = train_model(
        model,
        mixed,
        TrainConfig(epochs=1, batch_size=32, lr=0.01, augment=None),
        generator=torch.Generator().manual_seed(0),
        loss_fn=loss,
        progress=False,
    )
    assert len(history) == 1 and math.isfinite(history[0]["loss"])
    assert loss.last_regularizer > 0
    with pytest.raises(KeyError, match="has no parameter lamda"):
        create_adaptive_loss(name, attack=attack, poisoned=poisoned, lamda=1.0)


def test_eq4_regulariser_reduces_the_benign_poisoned_distance(make_imageset):
    data = make_imageset(96, SHAPE, CLASSES, dtype=torch.float32)
    attack = build("badnets", size=4, pattern="white")
    mixed, positions = poison_training_set(data, attack, 0.2, torch.Generator().manual_seed(0))
    poisoned = torch.zeros(len(data), dtype=torch.bool)
    poisoned[positions] = True
    distances = {}
    for weight in (0.0, 10.0):
        model = tiny_cnn()
        loss = create_adaptive_loss("preact-l2", attack=attack, poisoned=poisoned, weight=weight, pairs=32)
        train_model(
            model,
            mixed,
            TrainConfig(epochs=6, batch_size=32, lr=0.05, augment=None),
            generator=torch.Generator().manual_seed(0),
            loss_fn=loss,
            progress=False,
        )
        distances[weight] = _distance(model, attack, data.images[~poisoned][:48])
    assert distances[10.0] < 0.5 * distances[0.0], distances


@pytest.mark.parametrize("bn", ["batch", "running"])
@pytest.mark.parametrize("training", [True, False])
def test_eq4_pair_pass_leaves_bn_statistics_and_mode_alone(bn, training):
    model = tiny_cnn()
    with torch.no_grad():
        model.train()
        model(torch.rand(16, *SHAPE))  # running statistics away from their initial values
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(8, *SHAPE)
    attack = build("badnets")
    layers = find_neuron_layers(model, images[:1])
    distance = paired_preactivation_distance(model, layers, images, attack.poison_images(images), bn=bn)
    distance.backward()
    assert distance > 0 and model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    assert model.training == training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_eq4_batch_mode_normalises_with_the_pair_batch_and_standardize_is_scale_free():
    model = tiny_cnn()
    images = torch.rand(8, *SHAPE)
    triggered = build("badnets").poison_images(images)
    layers = find_neuron_layers(model, images[:1])

    def distance(**kw):
        with torch.no_grad():
            return paired_preactivation_distance(model, layers, images, triggered, **kw).item()

    raw, std = distance(bn="batch"), distance(bn="batch", standardize=True)
    with torch.no_grad():
        model[0].weight.mul_(10.0)  # batch statistics absorb the scale from the second layer on
        model[0].bias.mul_(10.0)
    assert distance(bn="batch") > 10 * raw
    assert distance(bn="batch", standardize=True) == pytest.approx(std, rel=1e-3)
    with pytest.raises(ValueError, match="bn must be"):
        paired_preactivation_distance(model, layers, images, triggered, bn="eval")


def test_mmd_is_zero_for_equal_samples_and_grows_with_a_shift():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    y = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    assert mmd2_gaussian(x, x).abs() < 1e-6
    near, far = mmd2_gaussian(x, y).item(), mmd2_gaussian(x, y + 3.0).item()
    assert far > near and far > 0.1
