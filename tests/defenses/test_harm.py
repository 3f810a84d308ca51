"""First, do no harm: a pruning defense checks its result on data its choice did not use, and backs off."""

import torch

from bdprune.defenses import BNP, EP, DefenseData
from bdprune.metrics import clean_accuracy

from .test_guard import TwoPaths, bright_and_dark


def task_neuron_model(with_bn_statistics):
    """TwoPaths with channels 0 (the task) and 1 (nothing) as outliers of their layer's BN statistics."""
    data = bright_and_dark(400)
    model = with_bn_statistics(TwoPaths(), data)
    with torch.no_grad():
        model.bn.running_var[:2] *= torch.tensor([4.0, 3.0])  # channel 0 the most outlying, then channel 1
        model.bn.running_var[2:] *= torch.tensor([1.01, 1.02, 1.03])
    return model, data


def test_a_repair_that_costs_accuracy_on_held_out_samples_backs_off(with_bn_statistics):
    model, data = task_neuron_model(with_bn_statistics)
    unchecked_model, unchecked = BNP.from_options(rule="mad", u=0.5, max_harm=None).run(model, DefenseData(clean=data))
    assert unchecked.pruned == {"bn": [0, 1]} and "harm_check" not in unchecked.extra
    repaired, report = BNP.from_options(rule="mad", u=0.5, then="none").run(model, DefenseData(clean=data))
    record = report.extra["harm_check"]
    assert record["checked"] and record["samples"] == 80 and record["source"] == "held-out clean samples"
    assert record["pruned_by_rule"] == 2 and record["cost"] > 2 and record["kept"] == 0  # channel 0 came first
    assert report.num_pruned == 0 and report.samples == 400  # scored on 320, checked on the 80 set aside
    assert any(w.startswith("harm check: pruning the 2 neurons the rule chose cost") and "returned the model unchanged"
               in w for w in report.warnings)  # fmt: skip
    assert clean_accuracy(repaired, data) == clean_accuracy(model, data) > clean_accuracy(unchecked_model, data)


def test_a_repair_within_the_budget_is_kept_whole(with_bn_statistics):
    model, data = task_neuron_model(with_bn_statistics)
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[0.0, 0, 0, 0, 4], [0.0, 0, 0, 0, -4]]))  # the task moves to channel 4
        model.fc.bias.zero_()
    _, report = BNP.from_options(rule="mad", u=0.5, then="none").run(model, DefenseData(clean=data))
    assert report.extra["harm_check"]["kept"] == report.extra["harm_check"]["pruned_by_rule"] == report.num_pruned == 2
    assert not any(w.startswith("harm check") for w in report.warnings)


def test_ep_checks_on_training_samples_outside_the_suspected_group(toy_backdoor):
    model, mixed, poisoned, _, _ = toy_backdoor
    _, report = EP.from_options(rule="consensus", candidates=4).run(model, DefenseData(train=mixed))
    record = report.extra["harm_check"]
    assert record["checked"] and record["source"] == "training samples outside the suspected group"
    assert record["samples"] == len(mixed) - int(poisoned.sum())  # every sample outside the group (<= 2,000)
    assert report.pruned == {"bn": [0]} and record["kept"] == 1  # removing the backdoor costs the others nothing
    # a per-layer rule names no group: the training labels include the poisoned ones, so there is no fair check
    _, paper = EP.from_options(rule="zscore").run(model, DefenseData(train=mixed))
    assert not paper.extra["harm_check"]["checked"] and "names no suspected samples" in paper.extra["harm_check"]["why"]


def test_few_held_out_samples_are_noted(with_bn_statistics):
    model, data = task_neuron_model(with_bn_statistics)
    few = data.subset(torch.arange(100))
    _, report = BNP.from_options(rule="mad", u=0.5).run(model, DefenseData(clean=few))
    assert (
        report.extra["harm_check"]["samples"] == 20 and "each weighs 5.0 points" in report.extra["harm_check"]["note"]
    )
