"""The fit/save contract of learned attacks: fitted networks travel with the model, fits are cached by data
and parameters, and weights of other parameters are refused. (Their registry-wide properties are in
test_contract.py.)"""

import pytest
import torch

from bdprune import checkpoint
from bdprune.attacks import LearnedAttack, create_attack, fit_or_load, list_attacks
from bdprune.card import ModelCard

SHAPE, CLASSES = (1, 8, 8), 4
LEARNED = list_attacks(learned=True)


@pytest.mark.parametrize("name", LEARNED)
def test_checkpoint_carries_the_fitted_attack(make_imageset, build_attack, labels_for, name, tmp_path):
    attack = build_attack(name)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, CLASSES))
    checkpoint.save_checkpoint(tmp_path, model, ModelCard("x", {}), attack=attack)
    loaded = checkpoint.build_attack(checkpoint.read_card(tmp_path), tmp_path)
    assert isinstance(loaded, LearnedAttack) and loaded.fitted
    x = make_imageset(6, SHAPE, CLASSES, seed=4).images
    assert torch.equal(attack.apply_test(x, labels_for(attack, 6))[0], loaded.apply_test(x, labels_for(attack, 6))[0])


def test_weights_of_other_parameters_are_refused(build_attack):
    attack = build_attack("ssba")
    with pytest.raises(ValueError, match="do not fit"):
        create_attack(
            "ssba",
            image_shape=SHAPE,
            num_classes=CLASSES,
            tensors=attack.state_dict(),
            **{**attack.params(), "width": 8},
        )


def test_fit_or_load_caches_by_data_and_parameters(make_imageset, build_attack, tmp_path):
    data = make_imageset(32, SHAPE, CLASSES, seed=9)
    first = fit_or_load(build_attack("ssba", seed=2, fit=False), data, cache_dir=tmp_path)
    cached = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(cached) == 1 and "cached" not in first.fit_log
    second = fit_or_load(build_attack("ssba", seed=2, fit=False), data, cache_dir=tmp_path)
    assert "cached" in second.fit_log
    x = data.images[:5]
    assert torch.equal(first.apply(x, data.labels[:5])[0], second.apply(x, data.labels[:5])[0])
    fit_or_load(build_attack("ssba", seed=2, fit=False), make_imageset(32, SHAPE, CLASSES, seed=10), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2, "other data must not hit the cache"
