"""The clean-sample veto of BNP's rule "guarded": a suspect the task runs through stays, the others go."""

import torch
from torch import nn

from bdprune.data import ImageSet
from bdprune.defenses import BNP, DefenseData
from bdprune.defenses.rules.guarded import veto, within_budget
from bdprune.defenses.scores import neuron_layers


class TwoPaths(nn.Module):
    """conv-BN-ReLU, spatial mean, linear head that reads channel 0 only: channel 0 carries the task (bright
    images: class 0, dark ones: class 1), channels 1 to 4 nothing."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 9)
            self.fc.weight.copy_(torch.tensor([[4.0, 0.0, 0.0, 0.0, 0.0], [-4.0, 0.0, 0.0, 0.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 1.0]))

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def bright_and_dark(n: int = 200) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    level = torch.rand(n, generator=g)
    images = (level.view(n, 1, 1, 1).expand(n, 1, 8, 8) * 255).round().to(torch.uint8)
    return ImageSet(images.contiguous(), (level < 0.5).long(), ("bright", "dark"), name="levels")


def test_a_suspect_the_task_runs_through_is_vetoed_and_the_model_restored(with_bn_statistics):
    data = bright_and_dark()
    model = with_bn_statistics(TwoPaths(), data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = neuron_layers(model, data, require_bn=True)
    passed, trace = veto(model, layers, [("bn", 0), ("bn", 1)], data, max_change=1.0, silence="bn", batch_size=64)
    assert passed == [("bn", 1)]
    assert [t["pruned"] for t in trace] == [False, True]
    assert trace[0]["changed"] > 10 and trace[1]["changed"] == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    passed, _ = veto(model, layers, [("bn", 0), ("bn", 1)], data, max_change=100.0, silence="bn", batch_size=64)
    assert passed == [("bn", 0), ("bn", 1)], "a budget of 100% vetoes nothing"


def test_guarded_bnp_spares_the_task_neuron_that_the_mad_rule_alone_prunes(with_bn_statistics):
    data = bright_and_dark()
    model = with_bn_statistics(TwoPaths(), data)
    with torch.no_grad():  # channels 0 and 1: running statistics unlike the clean data's, so both are suspects
        model.bn.running_var[:2] *= 4
        model.bn.running_var[2:] *= torch.tensor([1.01, 1.02, 1.03])  # the others: small, unequal differences
    clean = DefenseData(clean=data)
    _, mad = BNP.from_options(rule="mad", u=0.5, max_harm=None).run(model, clean)  # the rules alone decide
    repaired, guarded = BNP.from_options(rule="guarded", u=0.5, max_harm=None).run(model, clean)
    assert mad.pruned == {"bn": [0, 1]}
    assert guarded.pruned == {"bn": [1]}
    assert guarded.extra["guard"]["suspects"] == 2 and guarded.extra["guard"]["pruned"] == 1
    assert any("guard: 1 of 2 suspects left in place" in w and "bn:0" in w for w in guarded.warnings)
    assert repaired.bn.weight[0] != 0 and repaired.bn.weight[1] == 0


def test_the_budget_stops_before_the_first_neuron_that_costs_too_much_clean_accuracy(with_bn_statistics):
    data = bright_and_dark()
    model = with_bn_statistics(TwoPaths(), data)
    layers = neuron_layers(model, data, require_bn=True)
    k, curve = within_budget(
        model, layers, [("bn", 1), ("bn", 2), ("bn", 0), ("bn", 3)], data, max_drop=1.0, silence="bn", batch_size=64
    )
    assert k == 2 and len(curve) == 3 and curve[0] == curve[1] > curve[2] + 10  # stops at channel 0
    assert (
        within_budget(model, layers, [("bn", 1), ("bn", 0)], data, max_drop=100.0, silence="bn", batch_size=64)[0] == 2
    )


def test_guarded_bnp_without_the_veto_still_stops_within_the_budget(with_bn_statistics):
    data = bright_and_dark()
    model = with_bn_statistics(TwoPaths(), data)
    with torch.no_grad():
        model.bn.running_var[:2] *= 4
        model.bn.running_var[2:] *= torch.tensor([1.01, 1.02, 1.03])
        model.bn.running_var[0] *= 2  # channel 0, the task's, is the most suspicious: it comes first
    _, report = BNP.from_options(rule="guarded", u=0.5, max_change=100.0, max_drop=1.0, max_harm=None).run(
        model, DefenseData(clean=data)
    )
    assert report.pruned == {} and report.extra["guard"]["vetted"] == 2
    assert any("pruning stopped after 0 of 2 vetted suspects" in w for w in report.warnings)
