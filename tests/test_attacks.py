"""Property tests run over every registered attack, plus each attack's own checks."""

import pytest
import torch

from bdprune.attacks import (
    ALL_TO_ALL, ATTACKS, create_attack, list_attacks, poison_test_set, poison_training_set,
)

from conftest import make_imageset

SHAPE, CLASSES = (3, 8, 8), 4
# Learned attacks (CLA, IAB, SSBA) need a fit before they poison: tests/test_attacks_learned.py runs the
# same properties on tiny fitted ones.
FIXED = [n for n in list_attacks() if not getattr(ATTACKS.get(n), "learned", False)]


def build(name, seed=0, **params):
    return create_attack(name, image_shape=SHAPE, num_classes=CLASSES, generator=torch.Generator().manual_seed(seed),
                         **params)


@pytest.mark.parametrize("name", FIXED)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_apply_keeps_shape_dtype_device_and_input(name, dtype):
    data = make_imageset(10, SHAPE, CLASSES, dtype=dtype)
    images, labels = data.images.clone(), data.labels.clone()
    out, out_labels = build(name).apply(data.images, data.labels)
    assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
    assert out_labels.dtype == torch.int64 and out_labels.shape == labels.shape
    assert torch.equal(data.images, images) and torch.equal(data.labels, labels), "the input was modified"
    assert not torch.equal(out, images), "the trigger changed nothing"
    if dtype == torch.float32:
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", FIXED)
def test_rate_zero_changes_nothing(name):
    data = make_imageset(40, SHAPE, CLASSES)
    mixed, positions = poison_training_set(data, build(name), 0.0, torch.Generator())
    assert len(positions) == 0
    assert torch.equal(mixed.images, data.images) and torch.equal(mixed.labels, data.labels)


@pytest.mark.parametrize("name", FIXED)
@pytest.mark.parametrize("rate", [0.1, 0.25])
def test_poisoned_fraction_labels_and_untouched_rest(name, rate):
    data = make_imageset(80, SHAPE, CLASSES)
    attack = build(name)
    mixed, positions = poison_training_set(data, attack, rate, torch.Generator().manual_seed(1))
    assert len(positions) == round(rate * len(data))
    assert (mixed.labels[positions] == attack.target).all()
    assert (data.labels[positions] != attack.target).all(), "all-to-one skips samples already in the target class"
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[positions] = False
    assert torch.equal(mixed.images[rest], data.images[rest]) and torch.equal(mixed.labels[rest], data.labels[rest])
    assert not torch.equal(mixed.images[positions], data.images[positions])


@pytest.mark.parametrize("name", FIXED)
def test_all_to_all_labels(name):
    data = make_imageset(40, SHAPE, CLASSES)
    attack = build(name, mode=ALL_TO_ALL)
    mixed, positions = poison_training_set(data, attack, 0.5, torch.Generator())
    assert torch.equal(mixed.labels[positions], (data.labels[positions] + 1) % CLASSES)
    test = poison_test_set(data, attack)
    assert len(test) == len(data) and torch.equal(test.labels, (data.labels + 1) % CLASSES)


@pytest.mark.parametrize("name", FIXED)
def test_same_seed_same_output_and_other_seed_other_trigger(name):
    data = make_imageset(40, SHAPE, CLASSES)
    a, pa = poison_training_set(data, build(name, seed=5), 0.2, torch.Generator().manual_seed(7))
    b, pb = poison_training_set(data, build(name, seed=5), 0.2, torch.Generator().manual_seed(7))
    c, _ = poison_training_set(data, build(name, seed=6), 0.2, torch.Generator().manual_seed(7))
    assert torch.equal(pa, pb) and torch.equal(a.images, b.images)
    assert not torch.equal(a.images[pa], c.images[pa])


@pytest.mark.parametrize("name", FIXED)
def test_test_set_excludes_the_target_class(name):
    data = make_imageset(40, SHAPE, CLASSES)
    attack = build(name, target=2)
    test = poison_test_set(data, attack)
    assert len(test) == int((data.labels != 2).sum())
    assert (test.labels == 2).all() and (data.labels[test.indices] != 2).all()


@pytest.mark.parametrize("name", FIXED)
def test_saved_tensors_rebuild_the_same_attack(name):
    attack = build(name, seed=3)
    again = create_attack(name, image_shape=SHAPE, num_classes=CLASSES, tensors=attack.tensors(), **attack.params())
    x = torch.rand(5, *SHAPE)
    assert torch.equal(attack.apply(x, torch.zeros(5, dtype=torch.long))[0],
                       again.apply(x, torch.zeros(5, dtype=torch.long))[0])


def test_rate_larger_than_possible_is_an_error():
    with pytest.raises(ValueError, match="only 30 can be poisoned"):
        poison_training_set(make_imageset(40, SHAPE, CLASSES), build("badnets"), 0.9, torch.Generator())


def test_wrong_image_shape_is_an_error():
    with pytest.raises(ValueError, match="built for images of shape"):
        build("badnets").apply(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))


# -- BadNets ---------------------------------------------------------------------------------------------
def test_badnets_stamps_exactly_the_patch_in_the_corner():
    attack = build("badnets", size=3, pattern="white", corner="bottom-right")
    x = torch.zeros(2, *SHAPE)
    out, _ = attack.apply(x, torch.zeros(2, dtype=torch.long))
    assert out[:, :, 5:, 5:].eq(1).all() and out.sum() == 2 * 3 * 9
    top_left, _ = build("badnets", size=2, pattern="white", corner="top-left", margin=1).apply(x, x[:, 0, 0, 0].long())
    assert top_left[:, :, 1:3, 1:3].eq(1).all() and top_left.sum() == 2 * 3 * 4


def test_badnets_random_pattern_is_the_papers_sigmoid_normal():
    attack = build("badnets", seed=0)
    expected = torch.sigmoid(torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(attack.patch, expected)


def test_badnets_rejects_a_patch_that_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        build("badnets", size=9)


# -- Blended ---------------------------------------------------------------------------------------------
def test_blended_is_the_convex_mix():
    attack = build("blended", alpha=0.2)
    x = torch.rand(3, *SHAPE)
    out, _ = attack.apply(x, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(out, 0.8 * x + 0.2 * attack.trigger, atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        build("blended", alpha=0.0)
