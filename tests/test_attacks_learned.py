"""Learned attacks (CLA, IAB, SSBA): the registry-wide attack properties on tiny fitted attacks, save/load
round trips, and each attack's own checks. Fits are a few steps on tiny synthetic sets."""

import pytest
import torch

from bdprune import io
from bdprune.attacks import (
    ATTACKS, LearnedAttack, create_attack, fit_or_load, list_attacks, poison_test_set, poison_training_set,
)
from bdprune.attacks.cla import pgd
from bdprune.attacks.iab import diversity_loss
from bdprune.data.imageset import to_float
from bdprune.train import TrainConfig

from conftest import make_imageset, requires_fashion_mnist

SHAPE, CLASSES = (1, 8, 8), 4
TINY = {
    "ssba": {"bits": 8, "width": 4, "fit_steps": 3, "batch_size": 8},
    "iab": {"width": 4, "mask_epochs": 1, "mask_subset": 0},
    "cla": {"adv_width": 2, "adv_epochs": 1, "adv_steps": 1, "adv_subset": 0, "steps": 3},
}
LEARNED = [n for n in list_attacks() if getattr(ATTACKS.get(n), "learned", False)]
_FITTED: dict = {}


def test_every_learned_attack_has_a_tiny_setting():
    assert set(LEARNED) == set(TINY)


def build(name, seed=0, **params):
    return create_attack(name, image_shape=SHAPE, num_classes=CLASSES, generator=torch.Generator().manual_seed(seed),
                         **{**TINY[name], **params})


def fitted(name, seed=0, **params):
    """A tiny attack fitted on a tiny synthetic set (cached per test session: fits are deterministic)."""
    key = (name, seed, tuple(sorted(params.items())))
    if key not in _FITTED:
        _FITTED[key] = build(name, seed, **params).fit(make_imageset(32, SHAPE, CLASSES, seed=9))
    return _FITTED[key]


def labels_for(attack, n):
    """Labels of samples the attack may poison: the target class for a clean-label attack."""
    return torch.full((n,), attack.target) if attack.clean_label else torch.arange(n) % CLASSES


# -- the properties every attack has --------------------------------------------------------------------
@pytest.mark.parametrize("name", LEARNED)
def test_unfitted_attack_says_to_fit_first(name):
    with pytest.raises(RuntimeError, match="call attack.fit"):
        build(name).apply(torch.rand(2, *SHAPE), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("name", LEARNED)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_apply_keeps_shape_dtype_device_and_input(name, dtype):
    attack = fitted(name)
    data = make_imageset(10, SHAPE, CLASSES, dtype=dtype)
    labels = labels_for(attack, 10)
    images, labels_copy = data.images.clone(), labels.clone()
    out, out_labels = attack.apply(data.images, labels)
    assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
    assert out_labels.dtype == torch.int64 and out_labels.shape == labels.shape
    assert torch.equal(data.images, images) and torch.equal(labels, labels_copy), "the input was modified"
    assert not torch.equal(out, images), "the trigger changed nothing"
    if dtype == torch.float32:
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", LEARNED)
def test_rate_zero_changes_nothing(name):
    data = make_imageset(40, SHAPE, CLASSES)
    mixed, positions = poison_training_set(data, fitted(name), 0.0, torch.Generator())
    assert len(positions) == 0
    assert torch.equal(mixed.images, data.images) and torch.equal(mixed.labels, data.labels)


@pytest.mark.parametrize("name", LEARNED)
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_poisoned_fraction_labels_and_untouched_rest(name, rate):
    data = make_imageset(80, SHAPE, CLASSES)
    attack = fitted(name)
    mixed, positions = poison_training_set(data, attack, rate, torch.Generator().manual_seed(1))
    if attack.clean_label:  # CLA: a fraction of the target class, labels unchanged
        assert len(positions) == round(rate * int((data.labels == attack.target).sum()))
        assert (data.labels[positions] == attack.target).all()
        assert torch.equal(mixed.labels, data.labels)
    else:
        assert len(positions) == round(rate * len(data))
        assert (mixed.labels[positions] == attack.target).all() and (data.labels[positions] != attack.target).all()
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[positions] = False
    assert torch.equal(mixed.images[rest], data.images[rest]) and torch.equal(mixed.labels[rest], data.labels[rest])
    assert not torch.equal(mixed.images[positions], data.images[positions])


@pytest.mark.parametrize("name", LEARNED)
def test_test_set_has_target_labels_and_excludes_the_target_class(name):
    data = make_imageset(40, SHAPE, CLASSES)
    attack = fitted(name)
    test = poison_test_set(data, attack)
    assert len(test) == int((data.labels != attack.target).sum()) and (test.labels == attack.target).all()
    assert not torch.equal(test.images, data.images[test.indices])


@pytest.mark.parametrize("name", LEARNED)
def test_same_seed_same_fit_and_output_other_seed_other_trigger(name):
    data = make_imageset(40, SHAPE, CLASSES)
    a = build(name, seed=5).fit(make_imageset(32, SHAPE, CLASSES, seed=9))
    b = build(name, seed=5).fit(make_imageset(32, SHAPE, CLASSES, seed=9))
    c = build(name, seed=6).fit(make_imageset(32, SHAPE, CLASSES, seed=9))
    pa, xa = poison_training_set(data, a, 0.5, torch.Generator().manual_seed(7))
    pb, xb = poison_training_set(data, b, 0.5, torch.Generator().manual_seed(7))
    pc, _ = poison_training_set(data, c, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(xa, xb) and torch.equal(pa.images, pb.images)
    assert not torch.equal(pa.images[xa], pc.images[xa])


# -- fitted networks round-trip through save and load ------------------------------------------------------
@pytest.mark.parametrize("name", LEARNED)
def test_saved_tensors_rebuild_the_fitted_attack(name, tmp_path):
    attack = fitted(name)
    io.save_tensors(tmp_path / "attack.safetensors", attack.tensors())
    again = create_attack(name, image_shape=SHAPE, num_classes=CLASSES,
                          tensors=io.load_tensors(tmp_path / "attack.safetensors"), **attack.params())
    x = make_imageset(12, SHAPE, CLASSES, seed=3).images
    y = labels_for(attack, 12)
    assert torch.equal(attack.apply(x, y)[0], again.apply(x, y)[0])
    assert torch.equal(attack.apply_test(x, y)[0], again.apply_test(x, y)[0])


@pytest.mark.parametrize("name", LEARNED)
def test_checkpoint_carries_the_fitted_attack(name, tmp_path):
    attack = fitted(name)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, CLASSES))
    io.save_checkpoint(tmp_path, model, {"architecture": "x", "arch_args": {}}, attack=attack)
    card = io.read_json(tmp_path / io.SIDECAR)
    loaded = io.load_attack(card, tmp_path)
    assert isinstance(loaded, LearnedAttack) and loaded.fitted
    x = make_imageset(6, SHAPE, CLASSES, seed=4).images
    assert torch.equal(attack.apply_test(x, labels_for(attack, 6))[0], loaded.apply_test(x, labels_for(attack, 6))[0])


def test_weights_of_other_parameters_are_refused():
    tensors = fitted("ssba").tensors()
    with pytest.raises(ValueError, match="do not fit"):
        create_attack("ssba", image_shape=SHAPE, num_classes=CLASSES, tensors=tensors, **{**TINY["ssba"], "width": 8})


def test_fit_or_load_caches_by_data_and_parameters(tmp_path):
    data = make_imageset(32, SHAPE, CLASSES, seed=9)
    first = fit_or_load(build("ssba", seed=2), data, cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and "cached" not in first.fit_log
    second = fit_or_load(build("ssba", seed=2), data, cache_dir=tmp_path)
    assert "cached" in second.fit_log
    x = data.images[:5]
    assert torch.equal(first.apply(x, data.labels[:5])[0], second.apply(x, data.labels[:5])[0])
    fit_or_load(build("ssba", seed=2), make_imageset(32, SHAPE, CLASSES, seed=10), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2, "other data must not hit the cache"


# -- SSBA ----------------------------------------------------------------------------------------------------
def test_ssba_residuals_are_bounded_and_differ_per_image():
    eps = 8 / 255
    attack = fitted("ssba", eps=eps)
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


def test_ssba_every_poisoned_image_carries_the_same_code():
    a, b = fitted("ssba", seed=0), fitted("ssba", seed=1)
    assert a.code.shape == (8,) and set(a.code.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a.code, b.code) or not torch.equal(a.tensors()["encoder.code_map.weight"],
                                                             b.tensors()["encoder.code_map.weight"])


# -- IAB -------------------------------------------------------------------------------------------------------
def test_iab_trigger_is_input_aware_and_cross_images_differ():
    attack = fitted("iab")
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


def test_iab_joint_training_updates_pattern_generator_and_classifier():
    attack = build("iab", seed=3).fit(make_imageset(32, SHAPE, CLASSES, seed=9))
    data = make_imageset(48, SHAPE, CLASSES, seed=2)
    poisoned = torch.zeros(48, dtype=torch.bool)
    poisoned[torch.arange(1, 48, 8)] = True
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, CLASSES))
    before_model = [p.detach().clone() for p in model.parameters()]
    before_mask = {k: v.clone() for k, v in attack.mask_net.state_dict().items()}
    before_pattern = {k: v.clone() for k, v in attack.pattern_net.state_dict().items()}
    history = attack.train_jointly(model, data, poisoned, TrainConfig(epochs=1, batch_size=16, lr=0.05, augment=None),
                                   generator=torch.Generator().manual_seed(0), progress=False)
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before_model, model.parameters()))
    assert any(not torch.equal(v, attack.pattern_net.state_dict()[k]) for k, v in before_pattern.items())
    assert all(torch.equal(v, attack.mask_net.state_dict()[k]) for k, v in before_mask.items()), "M is frozen"
    assert all(p.requires_grad for p in attack.mask_net.parameters()), "requires_grad must be restored"
    with pytest.raises(ValueError, match="bool tensor"):
        attack.train_jointly(model, data, poisoned[:5], TrainConfig(epochs=1, augment=None),
                             generator=torch.Generator(), progress=False)


# -- CLA -------------------------------------------------------------------------------------------------------
def test_cla_keeps_labels_poisons_only_the_target_class_and_triggers_four_corners():
    attack = fitted("cla", pattern="white", target=1)
    data = make_imageset(40, SHAPE, CLASSES)
    mixed, positions = poison_training_set(data, attack, 1.0, torch.Generator())
    assert torch.equal(positions, (data.labels == 1).nonzero().flatten())
    assert torch.equal(mixed.labels, data.labels)
    test, _ = attack.apply_test(torch.zeros(2, *SHAPE), torch.zeros(2, dtype=torch.long))
    for rows, cols in ((slice(0, 3), slice(0, 3)), (slice(0, 3), slice(5, 8)), (slice(5, 8), slice(0, 3)),
                       (slice(5, 8), slice(5, 8))):
        assert test[:, :, rows, cols].eq(1).all()
    assert test.sum() == 2 * 4 * 9, "at test time only the trigger is applied"


def test_cla_training_poison_is_within_eps_outside_the_corners():
    attack = fitted("cla", eps=4 / 255)
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


# -- end to end: `bdprune train` fits, trains, saves; `evaluate` and the run record rebuild the attack ----------
TINY_CLI = {
    "iab": ["width=4", "mask_epochs=1", "mask_subset=256"],
    "cla": ["adv_width=2", "adv_subset=256", "adv_steps=1", "steps=2"],
}


@requires_fashion_mnist
@pytest.mark.parametrize("name", ["iab", "cla"])  # IAB: the joint-training path; CLA: clean-label (SSBA: as CLA)
def test_train_evaluate_and_rebuild_a_learned_attack_run(name, tmp_path, capsys):
    import json

    from bdprune.cli import main
    from bdprune.runs import rebuild_run_data

    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["train", "--attack", name, "--width", "4", "--epochs", "1", "--train-subset", "400", "--rate", "0.2",
            "--seed", "3", "--out", str(out), "--cache-dir", str(cache), "--quiet", "--device", "cpu"]
    for item in TINY_CLI[name]:
        args += ["--attack-arg", item]
    assert main(args) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["attack"]["params"]["budget"] == "cpu" and "tensors_sha256" in card["attack"]
    assert len(list(cache.glob(f"{name}-*.safetensors"))) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert "attack_fit" in metrics and 0 <= metrics["asr"] <= 100
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", str(tmp_path / "eval.json"), "--quiet"]) == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["asr"] == pytest.approx(metrics["asr"]) and evaluation["acc"] == pytest.approx(metrics["acc"])
    ckpt = io.load_checkpoint(out)
    data = rebuild_run_data(ckpt.card, ckpt.attack)
    assert int(data.poisoned.sum()) == metrics["poisoned_samples"] > 0
    if name == "cla":
        assert (data.train.labels[data.poisoned] == 0).all(), "clean-label: only target-class samples, labels kept"
    else:
        assert (data.train.labels[data.poisoned] == 0).all() and (data.train.labels != 0).sum() > 0


def test_gallery_shows_fitted_attacks_of_runs(tmp_path):
    from bdprune.experiments.gallery import attacks_from_runs, make_gallery

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, CLASSES))
    for name in ("ssba", "iab"):
        io.save_checkpoint(tmp_path / name, model, {"architecture": "x", "arch_args": {}}, attack=fitted(name))
    runs = [tmp_path / "ssba", tmp_path / "iab", tmp_path / "ssba"]
    attacks = attacks_from_runs(runs, SHAPE)
    assert list(attacks) == ["ssba", "iab", "ssba#2"] and all(a.fitted for a in attacks.values())
    data = make_imageset(12, SHAPE, CLASSES, seed=2)
    gallery = make_gallery(data, tmp_path / "g.png", attacks=attacks, count=2)
    assert gallery.shown == ["ssba", "iab", "ssba#2"] and gallery.path.stat().st_size > 0
    mixed = make_gallery(data, tmp_path / "m.png", fitted=attacks, count=2)
    assert mixed.shown[-3:] == ["ssba", "iab", "ssba#2"] and "badnets" in mixed.shown
    assert "cla" in mixed.skipped and "ssba" not in mixed.skipped and "iab" not in mixed.skipped
    with pytest.raises(ValueError, match="either"):
        make_gallery(data, tmp_path / "x.png", attacks=attacks, fitted=attacks)
    with pytest.raises(ValueError, match="--dataset"):
        attacks_from_runs(runs[:1], (3, 8, 8))
