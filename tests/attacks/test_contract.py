"""The properties every registered attack has (STYLE.md point 10), run over the whole registry: a new attack
is tested here with no edit. Learned attacks are built small and fitted first (see conftest.py)."""

import pytest
import torch

from bdprune import files
from bdprune.attacks import (
    ALL_TO_ALL,
    create_attack,
    list_attacks,
    poison_test_set,
    poison_training_set,
)

SHAPE, CLASSES = (1, 8, 8), 4
LEARNED = list_attacks(learned=True)


@pytest.mark.parametrize("name", list_attacks())
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_apply_keeps_shape_dtype_device_and_input(name, dtype, build_attack, labels_for, make_imageset):
    attack = build_attack(name)
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


@pytest.mark.parametrize("name", list_attacks())
def test_rate_zero_changes_nothing(name, build_attack, make_imageset):
    data = make_imageset(40, SHAPE, CLASSES)
    mixed, positions = poison_training_set(data, build_attack(name), 0.0, torch.Generator())
    assert len(positions) == 0
    assert torch.equal(mixed.images, data.images) and torch.equal(mixed.labels, data.labels)


@pytest.mark.parametrize("name", list_attacks())
@pytest.mark.parametrize("rate", [0.1, 0.25])
def test_poisoned_fraction_labels_and_untouched_rest(name, rate, build_attack, make_imageset):
    data = make_imageset(80, SHAPE, CLASSES)
    attack = build_attack(name)
    mixed, positions = poison_training_set(data, attack, rate, torch.Generator().manual_seed(1))
    if attack.clean_label:  # a fraction of the target class, labels unchanged
        assert len(positions) == round(rate * int((data.labels == attack.target).sum()))
        assert (data.labels[positions] == attack.target).all() and torch.equal(mixed.labels, data.labels)
    else:
        assert len(positions) == round(rate * len(data))
        assert (mixed.labels[positions] == attack.target).all()
        assert (data.labels[positions] != attack.target).all(), "all-to-one skips samples already in the target class"
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[positions] = False
    assert torch.equal(mixed.images[rest], data.images[rest]) and torch.equal(mixed.labels[rest], data.labels[rest])
    assert not torch.equal(mixed.images[positions], data.images[positions])


@pytest.mark.parametrize("name", list_attacks())
def test_all_to_all_labels(name, build_attack, make_imageset):
    attack = build_attack(name, mode=ALL_TO_ALL)
    if attack.clean_label:
        pytest.skip("a clean-label attack keeps the true labels")
    data = make_imageset(40, SHAPE, CLASSES)
    mixed, positions = poison_training_set(data, attack, 0.5, torch.Generator())
    assert torch.equal(mixed.labels[positions], (data.labels[positions] + 1) % CLASSES)
    test = poison_test_set(data, attack)
    assert len(test) == len(data) and torch.equal(test.labels, (data.labels + 1) % CLASSES)


@pytest.mark.parametrize("name", list_attacks())
def test_same_seed_same_output_and_other_seed_other_trigger(name, build_attack, make_imageset):
    data = make_imageset(40, SHAPE, CLASSES)
    a, pa = poison_training_set(data, build_attack(name, seed=5), 0.5, torch.Generator().manual_seed(7))
    b, pb = poison_training_set(
        data,
        build_attack(name, seed=5, fit=False).fit(make_imageset(32, SHAPE, CLASSES, seed=9))
        if name in LEARNED
        else build_attack(name, seed=5),
        0.5,
        torch.Generator().manual_seed(7),
    )
    c, _ = poison_training_set(data, build_attack(name, seed=6), 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(pa, pb) and torch.equal(a.images, b.images)
    assert not torch.equal(a.images[pa], c.images[pa])


@pytest.mark.parametrize("name", list_attacks())
def test_test_set_has_target_labels_and_excludes_the_target_class(name, build_attack, make_imageset):
    data = make_imageset(40, SHAPE, CLASSES)
    attack = build_attack(name, target=2)
    test = poison_test_set(data, attack)
    assert len(test) == int((data.labels != 2).sum())
    assert (test.labels == 2).all() and (data.labels[test.indices] != 2).all()
    assert not torch.equal(test.images, data.images[test.indices])


@pytest.mark.parametrize("name", list_attacks())
def test_saved_tensors_rebuild_the_same_attack(name, build_attack, labels_for, make_imageset, tmp_path):
    attack = build_attack(name, seed=3)
    files.save_tensors(tmp_path / "attack.safetensors", attack.state_dict())
    again = create_attack(
        name,
        image_shape=SHAPE,
        num_classes=CLASSES,
        **attack.params(),
        tensors=files.load_tensors(tmp_path / "attack.safetensors"),
    )
    x, y = make_imageset(12, SHAPE, CLASSES, seed=3).images, labels_for(attack, 12)
    assert torch.equal(attack.apply(x, y)[0], again.apply(x, y)[0])
    assert torch.equal(attack.apply_test(x, y)[0], again.apply_test(x, y)[0])
    assert again.params() == attack.params()


@pytest.mark.parametrize("name", list_attacks())
def test_parameters_are_declared_checked_and_recorded(name, build_attack):
    attack = build_attack(name)
    declared = type(attack).parameters()
    assert list(attack.params()) == list(declared), "params() records exactly the declared hyperparameters"
    with pytest.raises(KeyError, match="has no parameter"):
        create_attack(name, image_shape=SHAPE, num_classes=CLASSES, no_such_parameter=1)
    with pytest.raises(ValueError, match="target"):
        create_attack(name, image_shape=SHAPE, num_classes=CLASSES, target=CLASSES)
    with pytest.raises(ValueError, match="finite|integer"):
        create_attack(name, image_shape=SHAPE, num_classes=CLASSES, target=float("nan"))


@pytest.mark.parametrize("name", LEARNED)
def test_unfitted_learned_attack_says_to_fit_first(name, build_attack):
    with pytest.raises(RuntimeError, match="call attack.fit"):
        build_attack(name, fit=False).apply(torch.rand(2, *SHAPE), torch.zeros(2, dtype=torch.long))


def test_learned_filter_of_the_registry():
    assert set(LEARNED) == {"cla", "iab", "ssba", "wb"} and not set(LEARNED) & set(list_attacks(learned=False))
    assert sorted(LEARNED + list_attacks(learned=False)) == list_attacks()


def test_wrong_image_shape_and_impossible_rate_are_errors(build_attack, make_imageset):
    with pytest.raises(ValueError, match="built for images of shape"):
        build_attack("badnets").apply(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="only 30 can be poisoned"):
        poison_training_set(make_imageset(40, SHAPE, CLASSES), build_attack("badnets"), 0.9, torch.Generator())
