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
from bdprune.defenses import BNP, CLP, EP, DefenseData, DefenseReport
from bdprune.errors import InvalidInput
from bdprune.models import create_model


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
    assert names == {
        "model.safetensors",
        "model.json",
        "attack.safetensors",
        "report.json",
        "metrics.json",
        "scores.png",
        "neurons.png",
    }
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
    data, test = repair.defender_data(
        suspect, BNP.needs, clean_samples=16, clean=tmp_path / "clean", data_dir=str(tmp_path / "nowhere")
    )
    assert len(data.clean) == 16 and test is None, "no test set where the dataset is not installed"
    result = repair.repair(suspect, BNP(), data)
    assert [layer.name for layer in result.report.layers] == ["model.stem.1", "model.block.1"]
    with pytest.raises(InvalidInput, match="EP needs the .* training set: pass --train-data"):
        repair.defender_data(suspect, EP.needs)
    (tmp_path / "clean" / "k").mkdir()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "clean" / "k" / "0.png")
    with pytest.raises(InvalidInput, match="11 class folders, but a fashion-mnist model has 10 classes"):
        repair.defender_data(suspect, BNP.needs, clean_samples=4, clean=tmp_path / "clean")


def test_clean_images_of_the_wrong_size_are_refused():
    small = ImageSet(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), ("a", "b"))
    with pytest.raises(InvalidInput, match=r"shape \(1, 2, 2\), but the model takes \(1, 28, 28\)"):
        DefenseData(clean=small, image_shape=(1, 28, 28))


# -- the deployer's path (issue 13) ------------------------------------------------------------------------------
class Brightness(nn.Module):
    """A conv-BN network whose class is the image's mean brightness in tenths: right only on the input it was
    made for ([0, 1] images, no normalisation)."""

    def __init__(self, num_classes=10, in_chans=1):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(1)
        nn.init.ones_(self.conv.weight)
        self.register_buffer("centres", (torch.arange(num_classes) + 0.5) / num_classes)

    def forward(self, x):
        m = self.bn(self.conv(x)).mean(dim=(1, 2, 3))
        return -100 * (m[:, None] - self.centres) ** 2


def brightness_set(n=50) -> ImageSet:
    labels = torch.arange(n) % 10
    images = ((labels.float() + 0.5) / 10)[:, None, None, None].expand(n, 1, 28, 28)
    return ImageSet((images * 255).round().to(torch.uint8), labels, tuple("abcdefghij"))


@pytest.fixture
def brightness_pt(monkeypatch, tmp_path):
    module = types.ModuleType("timm")
    module.create_model = lambda name, pretrained=False, num_classes=1000, in_chans=3: Brightness(num_classes, in_chans)
    module.is_model = lambda name: name == "brightness"
    monkeypatch.setitem(sys.modules, "timm", module)
    torch.save(Brightness().eval().state_dict(), tmp_path / "b.pt")
    return tmp_path / "b.pt"


def test_input_normalisation_is_an_explicit_option_and_a_wrong_one_is_warned_about(brightness_pt):
    clean = DefenseData(clean=brightness_set())
    default = repair.load_foreign(brightness_pt, arch="timm:brightness", dataset="fashion-mnist")
    assert default.card.normalization == {"source": "dataset", "mean": [0.286], "std": [0.353]}
    accuracy, warnings = repair.accuracy_warnings(default, clean)
    assert accuracy < 0.37 and "(chance: 10%)" in warnings[0]
    assert "with --normalize none the model classifies 100.0% of them correctly" in warnings[1]
    right = repair.load_foreign(brightness_pt, arch="timm:brightness", dataset="fashion-mnist", normalize="none")
    assert right.card.normalization == {"source": "none", "mean": None, "std": None}
    assert repair.accuracy_warnings(right, clean) == (1.0, [])
    custom = repair.load_foreign(
        brightness_pt, arch="timm:brightness", dataset="fashion-mnist", model_args={"mean": "0", "std": "1"}
    )
    assert custom.card.normalization["source"] == "custom" and repair.accuracy_warnings(custom, clean)[0] == 1.0
    both = {"normalize": "none", "model_args": {"mean": "0", "std": "1"}}
    for kwargs, message in (
        (both, "give the input normalisation once"),
        ({"normalize": "imagenet"}, "need one value for its 1-channel stem, got 3"),
        ({"normalize": "zscore"}, "unknown normalisation 'zscore'"),
    ):
        with pytest.raises(InvalidInput, match=message):
            repair.load_foreign(brightness_pt, arch="timm:brightness", dataset="fashion-mnist", **kwargs)


def test_bdprunes_own_models_take_their_normalisation_from_their_weights(tmp_path):
    model = create_model("resnet18", num_classes=10, in_channels=1, base_width=2, mean=[0.25], std=[0.5])
    torch.save(model.state_dict(), tmp_path / "ours.pt")
    suspect = repair.load_foreign(
        tmp_path / "ours.pt", arch="resnet18", dataset="fashion-mnist", model_args={"base_width": "2"}
    )
    assert suspect.card.normalization == {"source": "weights", "mean": [0.25], "std": [0.5]}
    with pytest.raises(InvalidInput, match="carries its input normalisation in its weights"):
        repair.load_foreign(tmp_path / "ours.pt", arch="resnet18", dataset="fashion-mnist", normalize="none")


def test_a_named_trigger_is_rebuilt_from_its_seed_and_recorded(brightness_pt, tmp_path):
    suspect = repair.load_foreign(brightness_pt, arch="timm:brightness", dataset="fashion-mnist", normalize="none")
    first = repair.name_trigger(suspect, attack="badnets", params={"size": "4"}, target=3, seed=7)
    again = repair.name_trigger(suspect, attack="badnets", params={"size": "4"}, target=3, seed=7)
    other = repair.name_trigger(suspect, attack="badnets", params={"size": "4"}, target=3, seed=8)
    assert torch.equal(first.attack.patch, again.attack.patch) and not torch.equal(
        first.attack.patch, other.attack.patch
    )
    assert first.attack.target == 3 and first.trigger == {
        "attack": "badnets",
        "params": first.attack.params(),
        "seed": 7,
    }
    result = repair.repair(
        first, BNP(), DefenseData(clean=brightness_set()), test=brightness_set(), out_dir=tmp_path / "out", plots=False
    )
    assert "asr" in result.metrics["before"] and result.metrics["trigger"]["seed"] == 7
    saved = load_checkpoint(tmp_path / "out")
    assert saved.card.attack.seed == 7 and torch.equal(saved.attack.patch, first.attack.patch)
    Brightness().load_state_dict(torch.load(tmp_path / "out" / "model.pt", weights_only=True))  # the user's class

    pattern = np.zeros((28, 28), np.uint8)
    pattern[-4:, -4:] = 255
    Image.fromarray(pattern).save(tmp_path / "t.png")
    Image.fromarray(pattern).save(tmp_path / "m.png")
    masked = repair.name_trigger(suspect, image=tmp_path / "t.png", mask=tmp_path / "m.png", target=1)
    poisoned, labels = masked.attack.apply(brightness_set().images[:2], brightness_set().labels[:2])
    assert (poisoned[:, :, -4:, -4:] == 255).all() and torch.equal(
        poisoned[:, :, :-4], brightness_set().images[:2, :, :-4]
    )
    assert labels.tolist() == [1, 1] and masked.trigger["image"].endswith("t.png")
    for kwargs, message in (
        ({"attack": "iab"}, "learned attack"),
        ({"image": tmp_path / "t.png"}, "needs its mask"),
        ({"params": {"size": "3"}}, "name it with --attack"),
        ({"target": 2}, "--target needs a trigger"),
    ):
        with pytest.raises(InvalidInput, match=message):
            repair.name_trigger(suspect, **kwargs)


def test_ep_reads_a_training_set_given_as_tensors(brightness_pt):
    suspect = repair.load_foreign(brightness_pt, arch="timm:brightness", dataset="fashion-mnist", normalize="none")
    data = brightness_set()
    given, _ = repair.defender_data(suspect, EP.needs, train=(data.images[:, 0], data.labels), train_indices="0:20")
    assert len(given.train) == 20 and torch.equal(given.train.images, data.images[:20])


def test_the_labels_a_detection_flagged_are_read_from_the_defenses_report():
    classes = [{"class": 0, "poisoned": True, "evidence": "surplus", "suspected": 2, "count_ratio": 2.25},
               {"class": 1, "poisoned": False}]  # fmt: skip
    for extra in ({"unlearn": {"detection": {"classes": classes}}}, {"detection": {"classes": classes}}):
        report = DefenseReport(method="ep", config={}, layers=[], samples=10, seconds=0.0, extra=extra)
        assert repair.detection_classes(report) == classes
    assert repair.detection_classes(DefenseReport(method="bnp", config={}, layers=[], samples=1, seconds=0.0)) == []


def test_a_scan_flipped_to_backdoored_by_a_pruning_is_flagged_not_believed(tmp_path, monkeypatch):
    import bdprune.detection as detection
    from bdprune.card import ModelCard
    from bdprune.checkpoint import save_checkpoint

    arch = {"num_classes": 3, "in_channels": 1, "base_width": 2}
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run", create_model("resnet18", **arch), ModelCard("resnet18", dict(arch)))
    suspect = repair.load_suspect(tmp_path / "run")
    g = torch.Generator().manual_seed(0)
    clean = ImageSet(torch.randint(0, 256, (30, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(30) % 3,
                     ("a", "b", "c"), name="tiny")  # fmt: skip
    data = DefenseData(clean=clean, image_shape=(1, 8, 8))
    monkeypatch.setattr(repair, "witness_record", lambda *args: {"skipped": "not under test"})

    def scans(*verdicts):
        told = iter(verdicts)  # before, then after the repair
        record = {"score": 0.0, "threshold": 1.0, "statistic": "s"}
        monkeypatch.setattr(detection, "scan", lambda net, clean: types.SimpleNamespace(
            to_dict=lambda: {**record, "verdict": next(told)}))  # fmt: skip

    scans("no evidence", "backdoored")
    pruned = repair.repair(suspect, CLP.from_options(u=0), data)
    assert pruned.report.num_pruned > 0 and pruned.metrics["scan_after"]["note"] == repair.STALE_SCAN
    assert repair.STALE_SCAN in pruned.warnings
    scans("no evidence", "backdoored")
    untouched = repair.repair(suspect, CLP.from_options(u=1e9), data)  # nothing pruned: the verdict stands alone
    assert untouched.report.num_pruned == 0 and "note" not in untouched.metrics["scan_after"]
    scans("backdoored", "backdoored")
    kept = repair.repair(suspect, CLP.from_options(u=0), data)
    assert "note" not in kept.metrics["scan_after"] and repair.STALE_SCAN not in kept.warnings


def test_a_scan_of_statistics_re_estimated_on_the_scans_own_samples_is_flagged(tmp_path, monkeypatch):
    """BNP's unlearning re-estimates the BN statistics on the defender's clean samples: a scan after it compares
    them with themselves, whatever it says."""
    import bdprune.detection as detection
    from bdprune.card import ModelCard
    from bdprune.checkpoint import save_checkpoint

    arch = {"num_classes": 3, "in_channels": 1, "base_width": 2}
    save_checkpoint(tmp_path / "run", create_model("resnet18", **arch), ModelCard("resnet18", dict(arch)))
    suspect = repair.load_suspect(tmp_path / "run")
    clean = ImageSet(torch.zeros(6, 1, 8, 8, dtype=torch.uint8), torch.arange(6) % 3, ("a", "b", "c"), name="tiny")
    monkeypatch.setattr(repair, "witness_record", lambda *args: {"skipped": "not under test"})
    monkeypatch.setattr(detection, "scan", lambda net, clean: types.SimpleNamespace(
        to_dict=lambda: {"score": 0.0, "threshold": 1.0, "statistic": "s", "verdict": "no evidence"}))  # fmt: skip
    for unlearned in (True, False):
        report = DefenseReport(method="bnp", config={}, layers=[], samples=6, seconds=0.0,
                               extra={"synth": {"unlearned": unlearned}})  # fmt: skip
        defense = types.SimpleNamespace(name="bnp", run=lambda model, data, report=report: (model, report))
        result = repair.repair(suspect, defense, DefenseData(clean=clean, image_shape=(1, 8, 8)))
        assert (result.metrics["scan_after"].get("note") == repair.SELF_SCAN) is unlearned
        assert (repair.SELF_SCAN in result.warnings) is unlearned


@pytest.mark.parametrize(
    "extra, config, flagged",
    [
        ({"unlearn": {"detection": {}, "guard": {"chosen": 0}}}, {}, True),  # EP's stage unlearned, the group in
        ({"detection": {}, "guard": {"chosen": 1}}, {}, True),  # `unlearn`, the gentler attempt
        ({"unlearn": {"detection": {}, "guard": {"chosen": 0}}}, {"kept_statistics": True}, False),
        ({"unlearn": {"detection": {}, "guard": {"chosen": None}}}, {}, False),  # every attempt refused
        ({"unlearn": {"detection": {}, "guard": {"chosen": "pruning only"}}}, {}, False),
        ({"guard": {"chosen": 0}}, {}, False),  # a fine-tuning on clean samples (bnp-recover): no group
    ],
)
def test_a_backdoored_scan_after_an_unlearning_with_the_group_in_its_statistics_is_flagged(
    tmp_path, monkeypatch, extra, config, flagged
):
    import bdprune.detection as detection
    from bdprune.card import ModelCard
    from bdprune.checkpoint import save_checkpoint

    arch = {"num_classes": 3, "in_channels": 1, "base_width": 2}
    save_checkpoint(tmp_path / "run", create_model("resnet18", **arch), ModelCard("resnet18", dict(arch)))
    suspect = repair.load_suspect(tmp_path / "run")
    clean = ImageSet(torch.zeros(6, 1, 8, 8, dtype=torch.uint8), torch.arange(6) % 3, ("a", "b", "c"), name="tiny")
    monkeypatch.setattr(repair, "witness_record", lambda *args: {"skipped": "not under test"})
    told = iter(["no evidence", "backdoored"])
    monkeypatch.setattr(detection, "scan", lambda net, clean: types.SimpleNamespace(
        to_dict=lambda: {"score": 0.0, "threshold": 1.0, "statistic": "s", "verdict": next(told)}))  # fmt: skip
    report = DefenseReport(method="ep", config=config, layers=[], samples=6, seconds=0.0, extra=extra)
    defense = types.SimpleNamespace(name="ep", run=lambda model, data: (model, report))
    result = repair.repair(suspect, defense, DefenseData(clean=clean, image_shape=(1, 8, 8)))
    assert (result.metrics["scan_after"].get("note") == repair.MIXED_SCAN) is flagged
    assert (repair.MIXED_SCAN in result.warnings) is flagged
