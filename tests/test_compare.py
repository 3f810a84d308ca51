"""Several defenses on one model and the same data: one row each, reports kept, written as JSON and Markdown."""

import json
import struct
import sys
import types

import numpy as np
import torch
from torch import nn

from bdprune.attacks import create_attack
from bdprune.cli import main
from bdprune.compare import COLUMNS, compare_defenses
from bdprune.defenses import BNP, CLP, FT, DefenseData


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def test_compare_runs_each_defense_on_the_same_model_and_data(tmp_path, make_imageset):
    model, clean, test = net(), make_imageset(40, (1, 8, 8), 3), make_imageset(30, (1, 8, 8), 3, seed=1)
    attack = create_attack("badnets", image_shape=(1, 8, 8), num_classes=3, size=2, pattern="white")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    result = compare_defenses(
        model,
        [BNP(), CLP(), FT(epochs=1)],
        DefenseData(clean=clean, image_shape=(1, 8, 8)),
        test=test,
        attack=attack,
        on_done=seen.append,
    )
    assert [r["defense"] for r in result.rows] == ["none", "bnp", "clp", "ft"] and seen == result.rows[1:]
    assert all(set(r) == set(COLUMNS) for r in result.rows)
    assert all(0 <= r["ACC %"] <= 100 and 0 <= r["ASR %"] <= 100 for r in result.rows)
    assert result.rows[2]["samples"] == 0 and result.rows[1]["samples"] == 40
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the model was modified"
    result.save(tmp_path, {"seed": 0})
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result.rows)) and saved["seed"] == 0
    assert (tmp_path / "comparison.md").read_text().splitlines()[0] == "| " + " | ".join(COLUMNS) + " |"
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["bnp.json", "clp.json", "ft.json"]
    untested = compare_defenses(model, [CLP()], DefenseData(), test=None, attack=None)
    assert untested.rows[1]["ACC %"] is None


def test_compare_takes_a_foreign_model_with_the_options_of_defend(tmp_path, monkeypatch, capsys):
    """Issue 13, item 6: --weights/--arch/--dataset, the normalisation, the training set and a named trigger."""

    class Foreign(nn.Module):
        def __init__(self, num_classes=10, in_chans=1):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(in_chans, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
            self.head = nn.Linear(6, num_classes)

        def forward(self, x):
            return self.head(self.stem(x).amax(dim=(2, 3)))

    timm = types.ModuleType("timm")
    timm.create_model = lambda name, pretrained=False, num_classes=1000, in_chans=3: Foreign(num_classes, in_chans)
    timm.is_model = lambda name: name == "foreign"
    monkeypatch.setitem(sys.modules, "timm", timm)
    torch.manual_seed(0)
    torch.save(Foreign().eval().state_dict(), tmp_path / "w.pt")
    g = np.random.default_rng(0)
    for split, n in (("train", 120), ("t10k", 60)):  # Fashion-MNIST's layout, noise inside
        for kind, array in (
            ("images", g.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            ("labels", (np.arange(n) % 10).astype(np.uint8)),
        ):
            (tmp_path / f"{split}-{kind}-idx{array.ndim}-ubyte").write_bytes(
                struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
            )
    code = main(
        [
            "compare",
            "--weights",
            str(tmp_path / "w.pt"),
            "--arch",
            "timm:foreign",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(tmp_path),
            "--normalize",
            "none",
            "--methods",
            "bnp,ep,clp",
            "--train-data",
            str(tmp_path),
            "--train-indices",
            "0:100",
            "--clean-samples",
            "30",
            "--attack",
            "blended",
            "--target",
            "2",
            "--out",
            str(tmp_path / "cmp"),
            "--quiet",
        ]
    )
    _out, err = capsys.readouterr()
    assert code == 0, err
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["defense"] for r in saved["rows"]] == ["none", "bnp", "ep", "clp"]
    assert all(r["ASR %"] is not None for r in saved["rows"]) and saved["rows"][2]["samples"] == 100
    assert saved["trigger"]["attack"] == "blended" and saved["trigger"]["params"]["target"] == 2
    assert saved["normalization"]["source"] == "none" and "trigger: attack blended" in err
