"""The library behind `bdprune defend`: load a suspicious model, gather the defender's data, repair it."""

import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bdprune import repair
from bdprune.checkpoint import load_checkpoint
from bdprune.data import ImageSet
from bdprune.defenses import BNP, CLP, EP, DefenseData
from bdprune.errors import InvalidInput


@pytest.mark.fashion_mnist
def test_defender_data_of_a_run_is_what_each_defense_needs(tiny_run):
    suspect = repair.load_suspect(tiny_run)
    clean, test = repair.defender_data(suspect, BNP.needs, clean_samples=50, seed=1)
    assert len(clean.clean) == 50 and clean.train is None and len(test) == 10000
    assert clean.image_shape == (1, 28, 28) == suspect.image_shape
    train, _ = repair.defender_data(suspect, EP.needs)
    assert train.clean is None and len(train.train) == 800 and int(train.train_poisoned.sum()) == 80
    again, _ = repair.defender_data(suspect, BNP.needs, clean_samples=50, seed=1)
    assert torch.equal(again.clean.indices, clean.clean.indices), "the seed decides the clean samples"
    with pytest.raises(InvalidInput, match="asked for 5000 clean samples; the run's clean reserve holds 3000"):
        repair.defender_data(suspect, BNP.needs, clean_samples=5000)


@pytest.mark.fashion_mnist
def test_repair_writes_a_loadable_model_with_its_record(tiny_run, tmp_path):
    suspect = repair.load_suspect(tiny_run)
    data, test = repair.defender_data(suspect, BNP.needs, clean_samples=100)
    test = test.subset(range(500))
    result = repair.repair(suspect, BNP(), data, test=test, out_dir=tmp_path / "out")
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"model.safetensors", "model.json", "attack.safetensors", "report.json", "metrics.json",
                     "scores.png", "neurons.png"}
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["before"] == result.metrics["before"] and set(metrics["after"]) == {"acc", "asr"}
    repaired = load_checkpoint(tmp_path / "out")
    assert repaired.card.defense.method == "bnp" and repaired.card.defense.num_pruned == result.report.num_pruned
    assert repaired.card.parent_weights_sha256 == suspect.card.weights_sha256 != repaired.card.weights_sha256
    assert repaired.card.run == suspect.card.run, "the repaired model keeps the run record (and so its data)"
    x = test.float_images()[:8]
    assert torch.equal(repaired.model(x), result.model(x))
    nothing = repair.repair(suspect, CLP(), DefenseData(image_shape=(1, 28, 28)))
    assert "before" not in nothing.metrics and nothing.report.samples == 0


class ForeignNet(nn.Module):
    """Not one of ours: other module names, a stem with a max-pool, a conv with bias before its BN."""

    def __init__(self, num_classes=10, in_chans=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.head = nn.Linear(12, num_classes)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean(dim=(2, 3)))


@pytest.fixture
def fake_timm(monkeypatch):
    module = types.ModuleType("timm")
    module.create_model = lambda name, pretrained=False, num_classes=1000, in_chans=3: ForeignNet(num_classes, in_chans)
    module.is_model = lambda name: name == "foreign"
    monkeypatch.setitem(sys.modules, "timm", module)
    return module


def test_a_foreign_state_dict_is_loaded_into_the_wrapped_network(fake_timm, tmp_path):
    original = ForeignNet(10, 1).eval()
    torch.save(original.state_dict(), tmp_path / "foreign.pt")
    suspect = repair.load_foreign(tmp_path / "foreign.pt", arch="timm:foreign", dataset="fashion-mnist")
    assert suspect.attack is None and suspect.card.source_weights.endswith("foreign.pt")
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(suspect.model(x), original((x - 0.2860) / 0.3530), atol=1e-5)
    for folder in "abcdefghij":  # one folder per class of the model
        for i in range(2):
            (tmp_path / "clean" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((28, 28), 40 * i, dtype=np.uint8)).save(tmp_path / "clean" / folder / f"{i}.png")
    data, test = repair.defender_data(suspect, BNP.needs, clean_samples=16, clean_dir=tmp_path / "clean",
                                      data_dir=str(tmp_path / "nowhere"))
    assert len(data.clean) == 16 and test is None, "no test set where the dataset is not installed"
    result = repair.repair(suspect, BNP(), data)
    assert [layer.name for layer in result.report.layers] == ["model.stem.1", "model.block.1"]
    with pytest.raises(InvalidInput, match="EP needs the .* training set: pass --train-dir"):
        repair.defender_data(suspect, EP.needs)
    (tmp_path / "clean" / "k").mkdir()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "clean" / "k" / "0.png")
    with pytest.raises(InvalidInput, match="11 class folders, but a fashion-mnist model has 10 classes"):
        repair.defender_data(suspect, BNP.needs, clean_samples=4, clean_dir=tmp_path / "clean")


def test_clean_images_of_the_wrong_size_are_refused():
    small = ImageSet(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), ("a", "b"))
    with pytest.raises(InvalidInput, match=r"shape \(1, 2, 2\), but the model takes \(1, 28, 28\)"):
        DefenseData(clean=small, image_shape=(1, 28, 28))
