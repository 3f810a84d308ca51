"""The concentration diagnostic: separation scores in closed form, and pruning curves on a tiny model."""

from __future__ import annotations

import torch

from bdprune.defenses import BNP, DefenseData
from bdprune.defenses.scores import neuron_layers
from bdprune.diagnostics import concentration, pruning_curve, report_order, separation_order
from bdprune.neurons.separation import auc, shift
from bdprune.neurons.sketch import StreamingHistogram


def test_auc_and_shift_in_closed_form():
    g = torch.Generator().manual_seed(0)
    benign = torch.randn(4000, 3, generator=g)
    poisoned = torch.randn(1000, 3, generator=g)
    poisoned[:, 0] += 3.0  # far apart: AUC = Phi(3 / sqrt 2) = 0.983
    poisoned[:, 1] -= 1.0  # below: AUC = Phi(-1 / sqrt 2) = 0.240
    sketch = StreamingHistogram(3, 2048, groups=2)
    sketch.update(torch.cat([benign, poisoned]), torch.cat([torch.zeros(4000), torch.ones(1000)]).long())
    normal_cdf = lambda x: 0.5 * (1 + torch.erf(torch.tensor(x) / 2**0.5)).item()
    a, s = auc(sketch), shift(sketch)
    assert abs(a[0] - normal_cdf(3 / 2**0.5)) < 0.01
    assert abs(a[1] - normal_cdf(-1 / 2**0.5)) < 0.02
    assert abs(a[2] - 0.5) < 0.03
    assert abs(s[0] - 3.0) < 0.1 and abs(s[1] + 1.0) < 0.1 and abs(s[2]) < 0.1


def test_auc_is_not_fooled_by_a_point_mass():
    # half of both groups tied at one value (a black background's maximum): ties count one half
    benign = torch.cat([torch.zeros(500), torch.randn(500, generator=torch.Generator().manual_seed(1))])
    poisoned = torch.cat([torch.zeros(100), torch.randn(100, generator=torch.Generator().manual_seed(2))])
    sketch = StreamingHistogram(1, 2048, groups=2)
    sketch.update(torch.cat([benign, poisoned])[:, None], torch.cat([torch.zeros(1000), torch.ones(200)]).long())
    assert abs(auc(sketch)[0] - 0.5) < 0.06


def test_pruning_curve_finds_the_single_backdoor_neuron(toy_backdoor):
    model, train, poisoned, data, attack = toy_backdoor
    layers = neuron_layers(model, train, require_bn=False)
    report = concentration(model, train, poisoned, data, attack, ks=(0, 1, 2, 4))
    assert report.curves["separation"].order[0] == ("bn", 0)
    assert report.curves["separation"].points[0]["asr"] > 90
    assert report.k_star == 1
    assert report.layer_counts() == {"bn": 1}
    # the model is restored after every measurement
    assert model.bn.weight[0].item() == 1.0
    # an order that puts the backdoor neuron last needs all four
    curve = pruning_curve(
        model, [("bn", 3), ("bn", 2), ("bn", 1), ("bn", 0)], data, attack, layers, label="worst", ks=(0, 1, 2, 3, 4)
    )
    assert curve.k_star == 4


def test_report_order_ranks_by_z(toy_backdoor):
    model, _, _, data, _ = toy_backdoor
    _, bnp = BNP.from_options(u=3).run(model, DefenseData(clean=data))
    order = report_order(bnp, "high")
    z = {(l.name, c): v for l in bnp.layers for c, v in enumerate(l.z)}
    assert [z[n] for n in order] == sorted(z.values(), reverse=True)
    assert separation_order({"x": (torch.tensor([0.5, 1.0, 1.0]), torch.tensor([0.0, 2.0, 5.0]))}) == [
        ("x", 2),
        ("x", 1),
        ("x", 0),
    ]
