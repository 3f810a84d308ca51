"""EP's consensus rule: the samples shared by many low-entropy neurons' upper modes, and the neurons that
separate them."""

from __future__ import annotations

import pytest
import torch

from bdprune.defenses import EP, DefenseData
from bdprune.errors import InvalidInput


def test_consensus_prunes_the_neuron_that_separates_the_shared_group(toy_backdoor):
    model, mixed, poisoned, _, _ = toy_backdoor
    repaired, report = EP.from_options(rule="consensus", candidates=4).run(model, DefenseData(train=mixed))
    assert report.pruned == {"bn": [0]}
    consensus = report.extra["consensus"]
    assert consensus["group_size"] == int(poisoned.sum())  # found without reading the poisoned flags
    assert report.layers[0].extra["auc"][0] > 0.99
    assert repaired.bn.weight[0].item() == 0.0 and model.bn.weight[0].item() == 1.0


def test_consensus_reads_no_ground_truth(toy_backdoor):
    model, mixed, poisoned, _, _ = toy_backdoor
    blind = EP.from_options(rule="consensus", candidates=4).run(model, DefenseData(train=mixed))[1]
    told = EP.from_options(rule="consensus", candidates=4).run(
        model, DefenseData(train=mixed, train_poisoned=~poisoned)
    )[1]
    assert blind.pruned == told.pruned


def test_consensus_on_a_set_without_a_group_prunes_nothing(toy_backdoor):
    model, _, _, clean, _ = toy_backdoor
    constant = clean.with_samples(torch.full_like(clean.images, 0.1), clean.labels)
    _, report = EP.from_options(rule="consensus", candidates=4).run(model, DefenseData(train=constant))
    assert report.num_pruned == 0
    assert any("no consensus group" in w for w in report.warnings)


@pytest.mark.parametrize("bad", [{"candidates": 1}, {"outlier": 0}, {"min_auc": 0.4}, {"min_auc": float("nan")}])
def test_consensus_parameters_are_checked(bad):
    with pytest.raises(InvalidInput):
        EP.from_options(rule="consensus", **bad)


def test_consensus_stops_once_the_group_labels_no_longer_hold(toy_backdoor):
    model, mixed, _, _, _ = toy_backdoor
    _, report = EP.from_options(rule="consensus", candidates=4, min_auc=0.51).run(model, DefenseData(train=mixed))
    trace = report.extra["consensus"]["trace"]
    assert trace[0] == {"k": 0, "hold": 100.0}
    assert report.num_pruned == 1 and trace[-1]["hold"] <= 5.0  # one neuron removes it: no more are pruned


def test_a_group_that_is_a_whole_class_is_not_pruned(toy_backdoor):
    model, mixed, poisoned, _, _ = toy_backdoor
    # the poisoned samples are all of their label: a class-selective neuron, as far as the data can tell
    relabelled = mixed.with_samples(
        mixed.images, torch.where(poisoned, 0, torch.where(mixed.labels == 0, 1, mixed.labels))
    )
    _, report = EP.from_options(rule="consensus", candidates=4).run(model, DefenseData(train=relabelled))
    assert report.num_pruned == 0
    assert any("a class, not a poisoned subset" in w for w in report.warnings)


def test_upper_bound_of_a_share():
    from bdprune.defenses.rules.consensus import upper_bound

    assert upper_bound(5.0, 2000) == pytest.approx(5.85, abs=0.05)  # Wilson, one-sided 95%
    assert upper_bound(0.0, 2000) == pytest.approx(0.135, abs=0.01)
    assert upper_bound(5.0, 20) > 15 and upper_bound(50.0, 0) == 100.0


def test_a_group_mixed_with_a_benign_cluster_is_split_again(toy_backdoor, monkeypatch):
    # The candidates' outliers as on a real model where some benign samples (a cluster) are outliers of a few
    # candidates and the poisoned ones of all: the first split takes both, and pruning cannot make the mixed
    # group lose its labels (its benign part keeps its own), so the group is split again above the first threshold.
    import bdprune.defenses.rules.consensus as consensus_module

    model, mixed, poisoned, _, _ = toy_backdoor
    cluster = torch.zeros_like(poisoned)
    cluster[60:120] = True

    def outliers(values, k):
        counts = torch.where(poisoned, 4, torch.where(cluster, 2, 0))
        return torch.arange(values.shape[1])[None, :] < counts[:, None]

    monkeypatch.setattr(consensus_module, "upper_outliers", outliers)
    _, report = EP.from_options(rule="consensus", candidates=4).run(model, DefenseData(train=mixed))
    attempts = report.extra["consensus"]["attempts"]
    assert [a["group_size"] for a in attempts] == [120, 60] and [a["removed"] for a in attempts] == [False, True]
    assert report.pruned == {"bn": [0]} and report.extra["consensus"]["group_size"] == 60
    _, once = EP.from_options(rule="consensus", candidates=4, resplits=0).run(model, DefenseData(train=mixed))
    assert len(once.extra["consensus"]["attempts"]) == 1
    assert any("1 group(s) tried" in w and "with its labels" in w for w in once.warnings)
