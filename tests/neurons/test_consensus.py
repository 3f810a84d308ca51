"""The consensus group: samples that are upper outliers in many candidate neurons at once."""

from __future__ import annotations

import torch

from bdprune.neurons.groups import consensus_split, upper_outliers


def _values(n=2000, m=16, poisoned=200, backdoor=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, m, generator=g)
    values[:poisoned, :backdoor] += 8.0  # the same samples far above in the backdoor neurons
    for j in range(backdoor, m):  # benign second modes: a different random 10% in every other neuron
        values[torch.randperm(n, generator=g)[: n // 10], j] += 8.0
    return values


def test_consensus_finds_the_shared_group_and_not_the_private_modes():
    split = consensus_split(upper_outliers(_values(), k=4.0))
    assert split.members[:200].all()
    assert split.members[200:].float().mean() < 0.01
    assert split.eta > 0.7


def test_without_a_shared_group_the_split_is_weak():
    values = _values(poisoned=0)
    split = consensus_split(upper_outliers(values, k=4.0))
    shared = consensus_split(upper_outliers(_values(), k=4.0))
    assert split.eta < shared.eta


def test_a_tied_majority_does_not_make_everything_an_outlier():
    values = torch.zeros(1000, 1)
    values[600:, 0] = torch.linspace(0.1, 1.0, 400)  # 60% tied at 0 (a background response): MAD = 0
    values[990:, 0] = 50.0
    out = upper_outliers(values, k=4.0)[:, 0]
    assert out[990:].all() and not out[:990].any()


def test_no_variation_gives_no_group():
    split = consensus_split(torch.zeros(100, 8, dtype=torch.bool))
    assert not split.members.any() and split.eta == 0.0
