"""Runs: the split and poisoning drawn from the seed, recorded in the sidecar, and rebuilt exactly."""

import json

import pytest
import torch

from bdprune.attacks import create_attack
from bdprune.card import ModelCard
from bdprune.checkpoint import load_checkpoint
from bdprune.config import configure, preset
from bdprune.errors import CheckpointError
from bdprune.runs import prepare_run_data, rebuild_run_data, run_record, train_run

pytestmark = pytest.mark.fashion_mnist


def test_a_saved_run_rebuilds_the_data_it_was_trained_on(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    data = rebuild_run_data(ckpt.card, ckpt.attack)
    prepared = prepare_run_data(ckpt.card.run.config)
    assert torch.equal(data.train.images, prepared.train.images) and torch.equal(data.poisoned, prepared.poisoned)
    assert int(data.poisoned.sum()) == metrics["poisoned_samples"] == 80 and len(data.train) == 800
    assert not set(data.reserve.indices.tolist()) & set(data.train.indices.tolist()), "the reserve is never trained on"
    assert (data.train.labels[data.poisoned] == 0).all()


def test_the_seed_decides_split_and_poisoning_in_independent_streams():
    a = prepare_run_data(preset("cpu", train_subset=300, seed=1))
    b = prepare_run_data(preset("cpu", train_subset=300, seed=1))
    c = prepare_run_data(preset("cpu", train_subset=300, seed=1, rate=0.2))
    assert torch.equal(a.train.indices, b.train.indices) and torch.equal(a.poisoned, b.poisoned)
    assert torch.equal(a.train.indices, c.train.indices), "the poisoning rate does not move the split"
    assert int(c.poisoned.sum()) == 60 and not torch.equal(a.poisoned, c.poisoned)


def test_a_record_that_names_samples_the_dataset_lacks_is_refused(tiny_run):
    card = load_checkpoint(tiny_run).card
    card.run.poisoned_indices = [10**9]
    with pytest.raises(CheckpointError, match="sample 1000000000, which .* does not have"):
        rebuild_run_data(card, create_attack("badnets", image_shape=(1, 28, 28), num_classes=10))
    with pytest.raises(CheckpointError, match="no run record"):
        rebuild_run_data(ModelCard("resnet18", {}), None)


def test_wanet_run_records_and_rebuilds_its_noise_mode_samples():
    config = preset("cpu", attack="wanet", train_subset=400, seed=3)
    data = prepare_run_data(config)
    assert int(data.poisoned.sum()) == 40 and int(data.cross.sum()) == 80
    assert not (data.poisoned & data.cross).any()
    attack = create_attack(
        "wanet", image_shape=(1, 28, 28), num_classes=10, tensors=data.attack.state_dict(), **data.attack.params()
    )
    rebuilt = rebuild_run_data(ModelCard("resnet18", {}, run=run_record(config, data)), attack)
    assert torch.equal(rebuilt.train.images, data.train.images) and torch.equal(rebuilt.train.labels, data.train.labels)
    assert torch.equal(rebuilt.cross, data.cross) and torch.equal(rebuilt.poisoned, data.poisoned)


TINY = {
    "iab": {"width": 4, "mask_epochs": 1, "mask_subset": 256},
    "cla": {"adv_width": 2, "adv_subset": 256, "adv_steps": 1, "steps": 2},
}


@pytest.mark.parametrize("name", ["iab", "cla"])  # IAB: the joint-training path; CLA: clean-label (SSBA: as CLA)
def test_a_learned_attack_run_saves_its_fit_and_rebuilds(name, tmp_path):
    config = configure(
        "cpu",
        attack=name,
        train_subset=400,
        rate=0.2,
        seed=3,
        model_args={"base_width": 4},
        attack_params=TINY[name],
        train={"epochs": 1},
    )
    metrics = train_run(config, tmp_path / "run", progress=False, cache_dir=tmp_path / "cache")
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.card.attack.params["budget"] == "cpu" and ckpt.card.attack.tensors_sha256
    assert len(list((tmp_path / "cache").glob(f"{name}-*.safetensors"))) == 1
    assert "attack_fit" in metrics and 0 <= metrics["asr"] <= 100
    if name == "iab":
        assert {"loss", "ce", "div"} <= set(metrics["history"][0]), "the joint objective's terms are logged"
    data = rebuild_run_data(ckpt.card, ckpt.attack)
    assert int(data.poisoned.sum()) == metrics["poisoned_samples"] > 0
    assert (data.train.labels[data.poisoned] == 0).all()
