"""Closed-form and property checks of the neuron statistics: moments, sketch, entropy, KL, thresholds, masks."""

import math

import pytest
import torch
from torch import nn

from bdprune.neurons.entropy import ESTIMATORS, GAUSSIAN_ENTROPY, standardized_entropy
from bdprune.neurons.gaussian import kl_gaussian
from bdprune.neurons.layers import find_neuron_layers
from bdprune.neurons.mask import ChannelMask, masked, pruned_copy
from bdprune.neurons.moments import ChannelMoments
from bdprune.neurons.sketch import StreamingHistogram
from bdprune.neurons.threshold import layer_outliers, select_neurons


def sketch_of(values: torch.Tensor, bins: int = 2048) -> StreamingHistogram:
    s = StreamingHistogram(values.shape[1], bins)
    s.update(values)
    return s


# -- moments ---------------------------------------------------------------------------------------------
def test_moments_match_torch_and_do_not_depend_on_batching():
    x = torch.randn(64, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 7
    whole, pieces = ChannelMoments(3), ChannelMoments(3)
    whole.update(x)
    for i in range(64):
        pieces.update(x[i : i + 1])
    expected_var, expected_mean = torch.var_mean(x.double(), dim=(0, 2, 3), correction=1)
    for m in (whole, pieces):
        assert torch.allclose(m.mean, expected_mean, atol=1e-9) and torch.allclose(m.variance(), expected_var, atol=1e-9)
        assert m.count.tolist() == [64 * 25] * 3


def test_moments_leave_out_and_count_non_finite_values():
    x = torch.ones(4, 2, 2, 2)
    x[0, 1, 0, 0] = float("nan")
    x[1, 1, 1, 1] = float("inf")
    x[2, 1] = 3.0
    m = ChannelMoments(2)
    m.update(x)
    assert m.nonfinite.tolist() == [0, 2]
    assert m.count.tolist() == [16, 14]
    assert m.mean[0] == 1.0 and math.isfinite(m.mean[1].item()) and torch.isfinite(m.variance()).all()


# -- the streaming histogram ------------------------------------------------------------------------------
def test_histogram_of_one_batch_of_n_equals_n_batches_of_one():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 4, generator=g) * torch.tensor([1.0, 50.0, 1e-3, 1.0]) + torch.tensor([0.0, 1e3, 5.0, -2.0])
    x[::9, 3] += 30.0  # a far second mode forces the grid to coarsen along the way
    one = sketch_of(x, 64)
    many = StreamingHistogram(4, 64)
    for row in x:
        many.update(row[None])
    assert torch.equal(one.counts, many.counts)
    assert torch.equal(one.exponent, many.exponent) and torch.equal(one.offset, many.offset)
    assert torch.allclose(one.moments.mean, many.moments.mean, rtol=1e-12)
    assert one.counts.sum(-1).tolist() == [[300] * 4]
    edges = one.edges()
    assert (edges[:, 0] <= x.min(0).values.double()).all() and (edges[:, -1] > x.max(0).values.double()).all()


def test_histogram_groups_and_non_finite_values():
    s = StreamingHistogram(2, 32, groups=2)
    values = torch.tensor([[0.0, 1.0], [1.0, float("nan")], [2.0, 3.0], [3.0, float("inf")]])
    s.update(values, torch.tensor([0, 0, 1, 1]))
    assert s.counts.sum(-1).tolist() == [[2, 1], [2, 1]]
    assert s.nonfinite.tolist() == [0, 2]


# -- entropy ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_entropy_of_a_standard_normal_is_half_log_two_pi_e(estimator):
    x = torch.randn(40000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x * torch.tensor([1.0, 10.0, 0.01]) + torch.tensor([0.0, -5.0, 100.0])  # scale and shift do not matter
    h = standardized_entropy(sketch_of(x), estimator)
    assert torch.allclose(h, torch.full_like(h, GAUSSIAN_ENTROPY), atol=0.02), h


def mixture_entropy(weight: float, distance: float) -> float:
    """Numerical h(X / sd(X)) of (1 - w) N(0, 1) + w N(d, 1)."""
    xs = torch.linspace(-12, distance + 12, 400001, dtype=torch.float64)
    pdf = ((1 - weight) * torch.exp(-0.5 * xs**2) + weight * torch.exp(-0.5 * (xs - distance) ** 2)) / math.sqrt(2 * math.pi)
    h = -torch.trapezoid(pdf * torch.log(pdf.clamp(min=1e-300)), xs).item()
    return h - 0.5 * math.log(1 + weight * (1 - weight) * distance**2)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_entropy_of_a_two_gaussian_mixture_is_lower_and_matches_the_integral(estimator):
    g = torch.Generator().manual_seed(2)
    n = 40000
    poisoned = (torch.rand(n, generator=g) < 0.1).double()
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) + poisoned[:, None] * torch.tensor([3.0, 10.0])
    h = standardized_entropy(sketch_of(x), estimator)
    expected = torch.tensor([mixture_entropy(0.1, 3.0), mixture_entropy(0.1, 10.0)], dtype=torch.float64)
    assert (h < GAUSSIAN_ENTROPY - 0.05).all() and h[1] < h[0]
    assert torch.allclose(h, expected, atol=0.05), (h, expected)


def test_degenerate_channels_have_no_entropy():
    x = torch.zeros(100, 2, dtype=torch.float64)
    x[:, 1] = torch.randn(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for estimator in ESTIMATORS:
        h = standardized_entropy(sketch_of(x), estimator)
        assert math.isnan(h[0]) and math.isfinite(h[1])


# -- KL --------------------------------------------------------------------------------------------------
def test_kl_of_two_gaussians():
    mp, vp, mq, vq = (torch.tensor(v, dtype=torch.float64) for v in ([0.0, 1.0, -2.0], [1.0, 1.0, 0.5], [0.0, 0.0, 1.0], [1.0, 4.0, 2.0]))
    got = kl_gaussian(mp, vp, mq, vq)
    assert got[0] == 0.0
    assert got[1].item() == pytest.approx(math.log(2.0) + (1.0 + 1.0) / 8.0 - 0.5)  # log(s_q/s_p), not log(v_q/v_p)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mp, vp.sqrt()), torch.distributions.Normal(mq, vq.sqrt()))
    assert torch.allclose(got, expected)


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
    assert again.threshold == pytest.approx(benign.double().mean().item() + 3 * benign.double().std(correction=0).item())
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


# -- masks -----------------------------------------------------------------------------------------------
def conv_bn(channels=4):
    model = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(0.5, 1)
    return model.eval()


@pytest.mark.parametrize("mode", ["bn", "bn-weight", "conv"])
def test_silencing_modes_give_the_documented_constant(mode):
    model = conv_bn()
    layers = {l.name: l for l in find_neuron_layers(model, torch.zeros(1, 1, 5, 5))}
    x = torch.rand(2, 1, 5, 5)
    bn = model[1]
    with masked(model, layers, ChannelMask({"1": [2]}), mode):
        out = model[1](model[0](x))[:, 2]
    expected = {"bn": 0.0, "bn-weight": bn.bias[2].item(),
                "conv": (bn.bias[2] - bn.weight[2] * bn.running_mean[2] / (bn.running_var[2] + bn.eps).sqrt()).item()}[mode]
    assert torch.allclose(out, torch.full_like(out, expected), atol=1e-6)


def test_masked_restores_exactly_and_pruned_copy_leaves_the_input():
    model = conv_bn()
    layers = {l.name: l for l in find_neuron_layers(model, torch.zeros(1, 1, 5, 5))}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with masked(model, layers, ChannelMask({"1": [0, 3]}), "bn"):
        assert model[1].weight[0] == 0 and model[1].bias[3] == 0
    copy = pruned_copy(model, layers, ChannelMask({"1": [1]}), "conv")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert copy[0].weight[1].abs().sum() == 0 and model[0].weight[1].abs().sum() > 0
    with pytest.raises(IndexError, match="4 channels"):
        pruned_copy(model, layers, ChannelMask({"1": [7]}))
