"""`bdprune defend` and `bdprune demo` end to end on tiny runs, and a foreign (timm-style) model."""

import json
import sys
import types

import pytest
import torch
from torch import nn

from bdprune.cli import main
from bdprune.defenses import BNP, DefenseData
from bdprune.models import create_model
from bdprune.neurons.pairs import find_conv_bn_pairs

from conftest import requires_fashion_mnist


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--attack", "badnets", "--width", "4", "--epochs", "1", "--train-subset", "800",
                 "--seed", "5", "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    return out


@requires_fashion_mnist
@pytest.mark.parametrize("method, options", [("bnp", ["--clean-samples", "100"]),
                                             ("ep", ["--rule", "iterative", "--u", "3.5"])])
def test_defend_writes_model_report_plots_and_metrics(tiny_run, tmp_path, method, options, capsys):
    out = tmp_path / method
    assert main(["defend", str(tiny_run), "--method", method, "--out", str(out), "--quiet", *options]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "model.json", "report.json", "metrics.json", "scores.png"} <= names
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == method and report["samples"] == (100 if method == "bnp" else 800)
    assert report["config"]["rule"] == ("zscore" if method == "bnp" else "iterative")
    pruned = sum(len(layer["pruned"]) for layer in report["layers"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"before", "after"} and 0 <= metrics["after"]["asr"] <= 100
    # the repaired model loads and evaluates like any run, with its pruned neurons silenced
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", str(tmp_path / "e.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["acc"] == pytest.approx(metrics["after"]["acc"])
    card = json.loads((out / "model.json").read_text())
    assert card.get("defense", {}).get("method") == method and pruned == card["defense"]["num_pruned"]


@requires_fashion_mnist
def test_defend_refuses_options_that_do_not_apply(tiny_run, tmp_path, capsys):
    assert main(["defend", str(tiny_run), "--method", "bnp", "--estimator", "kde", "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2
    assert "does not apply" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written


@requires_fashion_mnist
def test_demo_runs_end_to_end_on_a_tiny_setting(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--width", "4", "--epochs", "1", "--train-subset", "600", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    labels = [row["model"] for row in summary["table"]]
    assert labels[0] == "backdoored" and {"EP", "BNP", "EP iterative", "BNP iterative"} <= set(labels)
    assert "ASR %" in capsys.readouterr().out


# -- a foreign model: the same code on a timm-style network ------------------------------------------------
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
    monkeypatch.setitem(sys.modules, "timm", module)
    return module


def test_defenses_run_on_a_foreign_model_unchanged(fake_timm):
    model = create_model("timm:foreign", num_classes=10, in_channels=1).eval()
    pairs = find_conv_bn_pairs(model, torch.zeros(1, 1, 16, 16))
    assert [(p.conv, p.bn) for p in pairs] == [("model.stem.0", "model.stem.1"), ("model.block.0", "model.block.1")]
    clean = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8)
    from bdprune.data import ImageSet

    data = DefenseData(clean=ImageSet(clean, torch.randint(0, 10, (40,)), tuple("abcdefghij"), name="noise"))
    repaired, report = BNP().run(model, data)
    assert type(repaired.model) is ForeignNet and [layer.name for layer in report.layers] == ["model.stem.1",
                                                                                               "model.block.1"]


@requires_fashion_mnist
def test_defend_a_foreign_state_dict_from_a_weights_only_pt_file(fake_timm, tmp_path):
    weights = tmp_path / "foreign.pt"
    torch.save(ForeignNet(10, 1).state_dict(), weights)
    out = tmp_path / "out"
    assert main(["defend", "--weights", str(weights), "--arch", "timm:foreign", "--dataset", "fashion-mnist",
                 "--method", "bnp", "--clean-samples", "64", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] == 64 and [layer["name"] for layer in report["layers"]] == ["model.stem.1",
                                                                                         "model.block.1"]
