"""WaNet, Refool, the per-image keyed randomness, noise-mode samples, and the adaptive attacks of appendix G.

The generic property tests (shape, dtype, device, input untouched, rate 0, poisoned fraction, labels, same
seed same output, saved tensors rebuild the attack) run over the whole registry in test_attacks.py; here
are each attack's own checks.
"""

import math

import pytest
import torch
from torch import nn

from bdprune.attacks import (
    choose_cross_positions, create_attack, cross_at, poison_training_set,
)
from bdprune.attacks.adaptive import (
    create_adaptive_loss, list_adaptive, mmd2_gaussian, paired_preactivation_distance, reparameterize_bn,
)
from bdprune.attacks.keyed import image_keys, keyed_uniform
from bdprune.attacks.refool import dead_leaves, gaussian_blur
from bdprune.attacks.wanet import control_grid, identity_grid, warp
from bdprune.defenses import DefenseData, create_defense
from bdprune.metrics import predict_logits
from bdprune.neurons.layers import find_neuron_layers
from bdprune.train import TrainConfig, train_model

from conftest import make_imageset, requires_fashion_mnist

SHAPE, CLASSES = (3, 12, 12), 4


def build(name, seed=0, shape=SHAPE, **params):
    return create_attack(name, image_shape=shape, num_classes=CLASSES, generator=torch.Generator().manual_seed(seed),
                         **params)


# -- WaNet -----------------------------------------------------------------------------------------------------
def test_wanet_with_zero_strength_is_the_identity():
    data = make_imageset(16, SHAPE, CLASSES, dtype=torch.float32)
    out = build("wanet", s=0.0).poison_images(data.images)
    assert torch.allclose(out, data.images, atol=1e-5)
    u8 = make_imageset(16, SHAPE, CLASSES)
    assert torch.equal(build("wanet", s=0.0).apply(u8.images, u8.labels)[0], u8.images)


def test_wanet_control_grid_and_warp_size():
    noise = control_grid(4, torch.Generator().manual_seed(0))
    assert noise.shape == (2, 4, 4) and math.isclose(noise.abs().mean().item(), 1.0, rel_tol=1e-5)
    attack = build("wanet", s=0.5)
    offset = (attack.grid - identity_grid(12, 12)).abs()  # in [-1, 1] coordinates: 2 / (size - 1) per pixel
    pixels = offset * (12 - 1) / 2
    assert 0 < pixels.mean() < 1.0, "s = 0.5 moves pixels by a fraction of a pixel on average"
    stronger = build("wanet", s=2.0)
    assert (stronger.grid - identity_grid(12, 12)).abs().mean() > offset.mean()


def test_wanet_warp_of_a_constant_image_is_constant_inside():
    images = torch.full((2, 3, 12, 12), 0.6)
    out = warp(images, build("wanet").grid)
    assert torch.allclose(out[..., 2:-2, 2:-2], images[..., 2:-2, 2:-2], atol=1e-5)


def test_wanet_noise_mode_samples_are_deterministic_keep_labels_and_differ_from_the_trigger():
    data = make_imageset(20, SHAPE, CLASSES)
    attack = build("wanet")
    cross, labels = attack.apply_cross(data.images, data.labels)
    again, _ = attack.apply_cross(data.images, data.labels)
    poisoned, _ = attack.apply(data.images, data.labels)
    assert torch.equal(cross, again) and torch.equal(labels, data.labels)
    assert cross.dtype == torch.uint8 and cross.shape == data.images.shape
    assert not torch.equal(cross, poisoned) and not torch.equal(cross, data.images)


def test_cross_positions_count_disjointness_and_labels():
    data = make_imageset(100, SHAPE, CLASSES)
    attack = build("wanet", cross_ratio=2.0)
    mixed, positions = poison_training_set(data, attack, 0.1, torch.Generator().manual_seed(0))
    cross = choose_cross_positions(mixed.labels, attack, positions, torch.Generator().manual_seed(1))
    assert len(cross) == 2 * len(positions) == 20
    assert not set(cross.tolist()) & set(positions.tolist())
    full = cross_at(mixed, attack, cross)
    assert torch.equal(full.labels, mixed.labels), "noise-mode samples keep their true labels"
    changed = (full.images != mixed.images).flatten(1).any(1)
    assert set(changed.nonzero().flatten().tolist()) <= set(cross.tolist())
    assert len(choose_cross_positions(mixed.labels, build("badnets"), positions, torch.Generator())) == 0
    with pytest.raises(ValueError, match="cross_ratio"):
        choose_cross_positions(mixed.labels, build("wanet", cross_ratio=20.0), positions, torch.Generator())


# -- keyed randomness --------------------------------------------------------------------------------------------
def test_image_keys_are_deterministic_distinct_and_uniform():
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


# -- Refool ------------------------------------------------------------------------------------------------------
def test_dead_leaves_are_seeded_uint8_images_with_structure():
    a = dead_leaves(10, (3, 16, 16), torch.Generator().manual_seed(0))
    b = dead_leaves(10, (3, 16, 16), torch.Generator().manual_seed(0))
    c = dead_leaves(10, (3, 16, 16), torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == (10, 3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Occluding disks: neighbouring pixels are mostly equal (piecewise constant), unlike noise.
    same = (a[..., 1:] == a[..., :-1]).float().mean()
    assert same > 0.5


def test_gaussian_blur_preserves_constants_and_mean():
    x = torch.rand(3, 2, 12, 12)
    blurred = gaussian_blur(x, torch.tensor([1.0, 2.5, 5.0]))
    assert torch.allclose(gaussian_blur(torch.full_like(x, 0.3), torch.tensor([1.0, 2.0, 5.0])), torch.full_like(x, 0.3))
    assert blurred.std() < x.std()


@pytest.mark.parametrize("ghost_rate", [0.0, 1.0])
def test_refool_both_reflection_models_blend_within_range(ghost_rate):
    data = make_imageset(30, SHAPE, CLASSES, dtype=torch.float32)
    attack = build("refool", ghost_rate=ghost_rate)
    out = attack.poison_images(data.images)
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, data.images)
    assert torch.equal(out, attack.poison_images(data.images)), "the same image gets the same reflection"


def test_refool_weak_reflection_changes_little():
    data = make_imageset(30, SHAPE, CLASSES, dtype=torch.float32)
    weak = build("refool", alpha_range=(0.99, 0.99), ghost_rate=1.0).poison_images(data.images)
    strong = build("refool", alpha_range=(0.55, 0.55), ghost_rate=1.0).poison_images(data.images)
    assert (weak - data.images).abs().mean() < (strong - data.images).abs().mean()


def test_refool_reflections_from_a_directory(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray((torch.rand(20, 30, 3) * 255).byte().numpy()).save(tmp_path / f"r{i}.png")
    attack = build("refool", source=str(tmp_path))
    assert attack.reflections.shape == (3, *SHAPE) and attack.reflections.dtype == torch.uint8
    again = create_attack("refool", image_shape=SHAPE, num_classes=CLASSES, tensors=attack.tensors(), **attack.params())
    assert torch.equal(again.reflections, attack.reflections)
    with pytest.raises(Exception, match="no directory"):
        build("refool", source=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="alpha_range"):
        build("refool", alpha_range=(0.9, 0.5))


# -- runs: noise-mode samples are recorded and rebuilt -----------------------------------------------------------
@requires_fashion_mnist
def test_wanet_run_records_and_rebuilds_its_noise_mode_samples():
    from bdprune.runs import prepare_run_data, preset, rebuild_run_data, run_record

    config = preset("cpu", attack="wanet", train_subset=400, seed=3)
    data = prepare_run_data(config)
    assert int(data.poisoned.sum()) == 40 and int(data.cross.sum()) == 80
    assert not (data.poisoned & data.cross).any()
    record = run_record(config, data)
    attack = create_attack("wanet", image_shape=(1, 28, 28), num_classes=10, tensors=data.attack.tensors(),
                           **data.attack.params())
    rebuilt = rebuild_run_data({"run": record}, attack)
    assert torch.equal(rebuilt.train.images, data.train.images) and torch.equal(rebuilt.train.labels, data.train.labels)
    assert torch.equal(rebuilt.cross, data.cross) and torch.equal(rebuilt.poisoned, data.poisoned)


# -- BN re-parameterisation (appendix G.1) ----------------------------------------------------------------------
def tiny_cnn(channels=3, classes=CLASSES):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes),
    )


def test_bn_reparameterisation_keeps_logits_and_collapses_bnp_scores():
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
    bnp = create_defense("bnp", u=3.0)
    _, report_before = bnp.run(model, DefenseData(clean=benign))
    repaired = reparameterize_bn(model, benign)
    after = predict_logits(repaired, benign)
    assert torch.allclose(after, before, atol=1e-4, rtol=1e-4)
    assert torch.allclose(predict_logits(repaired, make_imageset(50, SHAPE, CLASSES, dtype=torch.float32, seed=9)),
                          predict_logits(model, make_imageset(50, SHAPE, CLASSES, dtype=torch.float32, seed=9)),
                          atol=1e-4, rtol=1e-4), "the function is unchanged on any input"
    assert not torch.equal(repaired[1].running_mean, model[1].running_mean), "the original is not modified"
    _, report_after = bnp.run(repaired, DefenseData(clean=benign))
    kl_before = max(max(layer.scores) for layer in report_before.layers)
    kl_after = max(max(layer.scores) for layer in report_after.layers)
    assert kl_before > 0.1 and kl_after < 1e-6
    assert report_after.num_pruned == 0 or kl_after < 1e-6


def test_bn_reparameterisation_on_a_resnet_keeps_logits():
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
def test_adaptive_objectives_train_through_train_model(name):
    data = make_imageset(64, SHAPE, CLASSES, dtype=torch.float32)
    attack = build("badnets")
    mixed, positions = poison_training_set(data, attack, 0.25, torch.Generator().manual_seed(0))
    poisoned = torch.zeros(len(data), dtype=torch.bool)
    poisoned[positions] = True
    loss = create_adaptive_loss(name, attack=attack, poisoned=poisoned)
    model = tiny_cnn()
    history = train_model(model, mixed, TrainConfig(epochs=1, batch_size=32, lr=0.01, augment=None),
                          generator=torch.Generator().manual_seed(0), loss_fn=loss, progress=False)
    assert len(history) == 1 and math.isfinite(history[0]["loss"])
    assert loss.last_regularizer > 0
    with pytest.raises(TypeError, match="unknown|unexpected"):
        create_adaptive_loss(name, attack=attack, poisoned=poisoned, lamda=1.0)


def test_eq4_regulariser_reduces_the_benign_poisoned_distance():
    data = make_imageset(96, SHAPE, CLASSES, dtype=torch.float32)
    attack = build("badnets", size=4, pattern="white")
    mixed, positions = poison_training_set(data, attack, 0.2, torch.Generator().manual_seed(0))
    poisoned = torch.zeros(len(data), dtype=torch.bool)
    poisoned[positions] = True
    distances = {}
    for weight in (0.0, 10.0):
        model = tiny_cnn()
        loss = create_adaptive_loss("preact-l2", attack=attack, poisoned=poisoned, weight=weight, pairs=32)
        train_model(model, mixed, TrainConfig(epochs=6, batch_size=32, lr=0.05, augment=None),
                    generator=torch.Generator().manual_seed(0), loss_fn=loss, progress=False)
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


# -- the attacks command and the gallery ------------------------------------------------------------------------
def test_attacks_command_lists_parameters(capsys):
    from bdprune.cli import main

    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    for text in ("wanet", "k=4", "s=0.5", "cross_ratio=2.0", "refool", "source='dead-leaves'", "preact-l2", "ml-mmd"):
        assert text in out


def test_gallery_writes_a_png(tmp_path):
    from bdprune.experiments.gallery import default_attacks, make_gallery

    data = make_imageset(20, (1, 16, 16), CLASSES)
    attacks, skipped = default_attacks(data, names=["badnets", "blended", "refool", "wanet"])
    gallery = make_gallery(data, tmp_path / "g.png", attacks=attacks, count=2)
    assert gallery.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert gallery.shown == ["badnets", "blended", "refool", "wanet"] and not skipped
