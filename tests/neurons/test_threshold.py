"""The per-layer outlier rules: z-score, MAD, iterative, count."""

import math

import pytest
import torch

from bdprune.neurons.threshold import layer_outliers, select_neurons


# -- thresholds ------------------------------------------------------------------------------------------
def test_zscore_rule_prunes_the_low_outlier_and_ignores_nan():
    scores = torch.tensor([1.0] * 10 + [1.1] * 10 + [-5.0, float("nan")])
    d = layer_outliers(scores, 3.0, "low")
    assert d.selected == [20] and d.note is None and d.threshold == pytest.approx(d.center - 3 * d.scale)
    assert math.isnan(d.z[21])


def test_a_layer_too_narrow_for_the_zscore_rule_is_reported():
    scores = torch.tensor([0.0, 0.1, 0.2, 0.1, 0.0, 0.1, 9.0, 9.1])  # two equal outliers among 8
    d = layer_outliers(scores, 3.0, "high")
    assert d.selected == [] and "sqrt(n - 1)" in d.note
    robust = layer_outliers(scores, 3.0, "high", "mad")
    assert robust.selected == [6, 7]


def test_iterative_rule_finds_outliers_that_mask_each_other():
    # 30 benign neurons around 0 and three far outliers: together they inflate the std so much that the
    # one-shot z-score rule finds only the most extreme; the iterative rule peels all three off.
    benign = torch.linspace(-1.0, 1.0, 30)
    scores = torch.cat([benign, torch.tensor([40.0, 12.0, 8.0, float("nan")])])
    once = layer_outliers(scores, 3.0, "high")
    assert once.selected == [30]
    again = layer_outliers(scores, 3.0, "high", "iterative")
    assert again.selected == [30, 31, 32]
    assert again.threshold == pytest.approx(
        benign.double().mean().item() + 3 * benign.double().std(correction=0).item()
    )
    assert math.isnan(again.z[33]) and again.note is None
    assert layer_outliers(benign, 3.0, "high", "iterative").selected == []  # nothing to peel: nothing pruned


def test_count_rule_ranks_across_layers_by_z():
    scores = {"a": torch.tensor([0.0, 0.1, 0.2, 5.0]), "b": torch.tensor([1.0, 1.1, 1.0, 1.05, 40.0])}
    chosen = select_neurons(scores, u=3, side="high", rule="count", count=2)
    assert chosen["a"].selected == [3] and chosen["b"].selected == [4]


def test_all_nan_or_constant_layers_give_no_threshold():
    assert layer_outliers(torch.tensor([float("nan")] * 3), 3, "low").threshold is None
    d = layer_outliers(torch.ones(5), 3, "low")
    assert d.selected == [] and d.threshold is None and "equal" in d.note
