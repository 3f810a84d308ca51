"""EP's consensus rule: the samples shared by many low-entropy neurons' upper modes, and the neurons that
separate them."""

from __future__ import annotations

import torch

from bdprune.defenses import EP, DefenseData
from bdprune.errors import InvalidInput

import pytest


def test_consensus_prunes_the_neuron_that_separates_the_shared_group(toy_backdoor):
    model, mixed, poisoned, _, _ = toy_backdoor
    repaired, report = EP(rule="consensus", candidates=4).run(model, DefenseData(train=mixed))
    assert report.pruned == {"bn": [0]}
    consensus = report.extra["consensus"]
    assert consensus["group_size"] == int(poisoned.sum())  # found without reading the poisoned flags
    assert report.layers[0].extra["auc"][0] > 0.99
    assert repaired.bn.weight[0].item() == 0.0 and model.bn.weight[0].item() == 1.0


def test_consensus_reads_no_ground_truth(toy_backdoor):
    model, mixed, poisoned, _, _ = toy_backdoor
    blind = EP(rule="consensus", candidates=4).run(model, DefenseData(train=mixed))[1]
    told = EP(rule="consensus", candidates=4).run(model, DefenseData(train=mixed, train_poisoned=~poisoned))[1]
    assert blind.pruned == told.pruned


def test_consensus_on_a_set_without_a_group_prunes_nothing(toy_backdoor):
    model, _, _, clean, _ = toy_backdoor
    constant = clean.with_samples(torch.full_like(clean.images, 0.1), clean.labels)
    _, report = EP(rule="consensus", candidates=4).run(model, DefenseData(train=constant))
    assert report.num_pruned == 0
    assert any("no consensus group" in w for w in report.warnings)


@pytest.mark.parametrize("bad", [{"candidates": 1}, {"outlier": 0}, {"min_auc": 0.4}, {"min_auc": float("nan")}])
def test_consensus_parameters_are_checked(bad):
    with pytest.raises(InvalidInput):
        EP(rule="consensus", **bad)
