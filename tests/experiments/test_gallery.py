"""The attack gallery: default-built attacks and fitted ones taken from runs."""

import pytest
import torch

from bdprune.card import ModelCard
from bdprune.checkpoint import save_checkpoint
from bdprune.experiments.gallery import attacks_from_runs, default_attacks, make_gallery

SHAPE, CLASSES = (1, 8, 8), 4


def test_gallery_writes_a_png(make_imageset, tmp_path):
    data = make_imageset(20, (1, 16, 16), CLASSES)
    attacks, skipped = default_attacks(data, names=["badnets", "blended", "refool", "wanet"])
    gallery = make_gallery(data, tmp_path / "g.png", attacks=attacks, count=2)
    assert gallery.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert gallery.shown == ["badnets", "blended", "refool", "wanet"] and not skipped


def test_gallery_shows_fitted_attacks_of_runs(make_imageset, build_attack, tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, CLASSES))
    for name in ("ssba", "iab"):
        save_checkpoint(tmp_path / name, model, ModelCard("x", {}), attack=build_attack(name))
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
