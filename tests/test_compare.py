"""Several defenses on one model and the same data: one row each, reports kept, written as JSON and Markdown."""

import json

import torch
from torch import nn

from bdprune.attacks import create_attack
from bdprune.compare import COLUMNS, compare_defenses
from bdprune.defenses import BNP, CLP, FT, DefenseData


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3)).eval()


def test_compare_runs_each_defense_on_the_same_model_and_data(tmp_path, make_imageset):
    model, clean, test = net(), make_imageset(40, (1, 8, 8), 3), make_imageset(30, (1, 8, 8), 3, seed=1)
    attack = create_attack("badnets", image_shape=(1, 8, 8), num_classes=3, size=2, pattern="white")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    result = compare_defenses(model, [BNP(), CLP(), FT(epochs=1)], DefenseData(clean=clean, image_shape=(1, 8, 8)),
                              test=test, attack=attack, on_done=seen.append)
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
