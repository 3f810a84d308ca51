"""EP's stage after pruning (issue 23): name the suspected samples, unlearn them only when the pruning left the
shortcut in place, keep pruned neurons silent, and let the held-out guard fall back to pruning only."""

import copy

import pytest
import torch

from bdprune.defenses import BNP, EP, DefenseData
from bdprune.defenses import unlearn as unlearn_module
from bdprune.defenses.recover import pruned_channels
from bdprune.defenses.unlearn import UnlearnStage
from bdprune.errors import InvalidInput
from bdprune.neurons.layers import find_neuron_layers
from bdprune.neurons.mask import ChannelMask, silence_
from bdprune.samples.result import SuspectedSamples


@pytest.fixture
def planted(monkeypatch):
    """Make the detector name the given positions (the stage's logic, not the detector's, is under test)."""

    def plant(indices):
        found = SuspectedSamples("planted", torch.tensor(indices, dtype=torch.long), torch.zeros(0))
        monkeypatch.setattr(unlearn_module, "detect_poisoned", lambda model, train, batch_size, features=None: found)

    return plant


def silenced(model):
    out = copy.deepcopy(model)
    bn = out.layer1[0].bn1
    with torch.no_grad():
        bn.weight[[1]] = 0
        bn.bias[[1]] = 0
    return out


def test_nothing_found_leaves_the_start_model(tiny, planted):
    model, data = tiny
    planted([])
    out, extra, warnings = UnlearnStage(steps=2).run(model, model, data)
    assert extra["detection"]["suspected"] == 0 and not warnings
    assert all(torch.equal(a, b) for a, b in zip(out.state_dict().values(), model.state_dict().values(), strict=True))


def test_retention_gate_skips_unlearning_when_pruning_broke_the_shortcut(tiny, planted):
    model, data = tiny
    start = silenced(model)
    planted(list(range(12)))
    kept = 100 * float((start(data.float_images()[:12]).argmax(1) == data.labels[:12]).float().mean())
    out, extra, _ = UnlearnStage(steps=2, retention=kept).run(model, start, data)  # at the threshold: skipped
    assert extra["retention"]["percent"] == pytest.approx(kept) and "nothing left" in extra["guard"]["message"]
    assert (
        "history" not in extra
        and out is not start
        and torch.equal(out.layer2[0].conv1.weight, start.layer2[0].conv1.weight)
    )
    _, extra, _ = UnlearnStage(steps=2, retention=kept - 1e-3, budget=100.0).run(model, start, data)
    assert len(extra["history"]) == 1 and extra["guard"]["chosen"] == 0  # above it: unlearned


def test_unlearning_a_pruned_model_keeps_its_pruned_neurons_silent(tiny, planted):
    model, data = tiny
    start = silenced(model)
    planted(list(range(12)))
    out, extra, _ = UnlearnStage(steps=5, lr=0.05, keep_batch=8, forget_batch=4, budget=100.0).run(model, start, data)
    assert extra["guard"]["chosen"] == 0
    assert pruned_channels(out)["layer1.0.bn1"].tolist() == [1]
    assert not torch.equal(out.layer2[0].conv1.weight, start.layer2[0].conv1.weight)


def test_guard_falls_back_to_the_pruning_then_to_the_suspect(tiny, planted):
    model, data = tiny
    planted(list(range(12)))
    # a budget of -1000 points can never be met: both unlearning attempts are refused
    stage = UnlearnStage(steps=2, budget=-1000.0, holdout=0.3)
    start = silenced(model)
    out, extra, warnings = stage.run(model, start, data)
    assert [a["attempt"] for a in extra["guard"]["attempts"]] == ["unlearn lr 0.003", "unlearn lr 0.001"]
    assert extra["guard"]["chosen"] == "pruning only" and "pruning alone is kept" in warnings[0]
    assert all(torch.equal(a, b) for a, b in zip(out.state_dict().values(), start.state_dict().values(), strict=True))
    out, extra, warnings = stage.run(model, model, data)  # nothing pruned: the suspect itself
    assert extra["guard"]["chosen"] is None and "unchanged" in warnings[0]
    assert all(torch.equal(a, b) for a, b in zip(out.state_dict().values(), model.state_dict().values(), strict=True))


def test_unlearning_is_eps_setting_only_and_one_option_away():
    with pytest.raises(InvalidInput, match="training set"):
        BNP(then="unlearn")
    for wrong in (
        lambda: BNP.from_options(kept_statistics=True),
        lambda: EP.from_options(then="none", kept_statistics=True),
    ):
        with pytest.raises(InvalidInput, match="kept_statistics"):
            wrong()
    assert EP().then == "unlearn" and EP.from_options(then="none").then == "none"
    with pytest.raises(InvalidInput):
        EP.from_options(then="relabel")


def test_ep_prunes_nothing_when_the_detector_confirms_no_backdoor(tiny, planted):
    model, data = tiny
    planted([])
    repaired, report = EP(rule="zscore").run(model, DefenseData(train=data))
    assert report.num_pruned == 0 and report.layers == [] and "returned unchanged" in report.warnings[0]
    assert all(
        torch.equal(a, b) for a, b in zip(repaired.state_dict().values(), model.state_dict().values(), strict=True)
    )
    _, report = EP.from_options(rule="count", count=2, confirm=False).run(model, DefenseData(train=data))
    assert report.num_pruned == 2 and report.extra["unlearn"]["detection"]["suspected"] == 0


def test_a_label_the_group_mostly_covers_is_not_unlearned(tiny, planted):
    model, data = tiny
    label0 = (data.labels == 0).nonzero().flatten().tolist()
    planted(label0)  # the whole of label 0: what its held-out samples could never check
    _, extra, warnings = UnlearnStage(steps=2).run(model, model, data)
    assert extra["unchecked_labels"] == {0: 1.0} and "nothing is unlearned" in warnings[0] and "history" not in extra
    planted(label0[:2] + [1, 2])  # a sixth of label 0 and one sample each of labels 1, 2: all unlearned
    _, extra, _ = UnlearnStage(steps=2, budget=100.0).run(model, model, data)
    assert "unchecked_labels" not in extra and len(extra["history"]) == 1


def test_eps_default_reads_the_detectors_features_off_its_scoring_pass(tiny, monkeypatch):
    from bdprune.samples import detector

    def second_pass(*args, **kwargs):
        raise AssertionError("the detector read the training set again")

    monkeypatch.setattr(detector, "sample_features", second_pass)
    model, data = tiny
    _, report = EP(rule="zscore").run(model, DefenseData(train=data))
    assert "detection" in report.extra["unlearn"]


def test_ep_prunes_nothing_when_the_suspect_never_learnt_the_named_group(tiny, planted):
    model, data = tiny
    with torch.no_grad():
        right = model.eval()(data.float_images()).argmax(1) == data.labels
    wrong, learnt = (~right).nonzero().flatten().tolist()[:6], right.nonzero().flatten().tolist()[:6]
    assert len(wrong) == 6 and len(learnt) == 6
    planted(wrong)  # a group the suspect does not give its label: the poisoning did not take
    repaired, report = EP.from_options(rule="count", count=2).run(model, DefenseData(train=data))
    assert report.num_pruned == 0 and "did not take" in report.warnings[0]
    assert report.extra["unlearn"]["taken"]["percent"] == 0.0 and report.extra["unlearn"]["suspected_indices"] == wrong
    assert all(
        torch.equal(a, b) for a, b in zip(repaired.state_dict().values(), model.state_dict().values(), strict=True)
    )
    planted(learnt)  # a group it gives its label: a shortcut to remove, so the rule prunes and the stage goes on
    _, report = EP.from_options(rule="count", count=2, then="unlearn").run(model, DefenseData(train=data))
    assert report.extra["unlearn"]["taken"]["percent"] == 100.0 and "percent" in report.extra["unlearn"]["retention"]


def test_a_pruning_that_left_the_shortcut_whole_is_dropped_before_the_unlearning(tiny, planted):
    model, data = tiny
    with torch.no_grad():
        right = (model.eval()(data.float_images()).argmax(1) == data.labels).nonzero().flatten().tolist()
    planted(right[:12])  # the suspect gives all of them their label
    start = silenced(model)
    stage = UnlearnStage(steps=3, lr=0.05, keep_batch=8, forget_batch=4, budget=100.0, retention=0.0)
    _, extra, _ = stage.run(model, start, data)
    left = extra["retention"]["percent"] / extra["retention"]["suspect"]  # what the pruning left of the shortcut
    assert extra["retention"]["suspect"] == 100.0 and 0 < left < 1
    out, extra, warnings = UnlearnStage(**{**vars(stage), "inert": left - 1e-6}).run(model, start, data)  # at it
    assert extra["pruning_dropped"] and "did not act on the shortcut" in warnings[0] and extra["guard"]["chosen"] == 0
    assert "layer1.0.bn1" not in pruned_channels(out)  # unlearned from the suspect: the channel is not kept silent
    out, extra, _ = UnlearnStage(**{**vars(stage), "inert": left + 0.01}).run(model, start, data)  # below it
    assert "pruning_dropped" not in extra and pruned_channels(out)["layer1.0.bn1"].tolist() == [1]


def test_a_pruning_of_no_neuron_is_not_reported_dropped(tiny, planted):
    model, data = tiny
    planted(list(range(12)))
    stage = UnlearnStage(steps=2, budget=100.0, retention=0.0, inert=0.0)  # every ratio is at the line
    _, extra, warnings = stage.run(model, copy.deepcopy(model), data)  # a "pruned" start with nothing silenced
    assert "pruning_dropped" not in extra and not any("dropped" in w for w in warnings)
    assert extra["retention"]["percent"] == extra["retention"]["suspect"]


def test_a_pruning_that_zeroed_conv_filters_stays_silent_and_can_be_dropped(tiny, planted):
    model, data = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.layer1[0].bn1.bias[1] = 0.5  # the silenced channel's constant passes the ReLU: its filter gets gradients
    layers = {l.name: l for l in find_neuron_layers(model, data.float_images()[:2])}
    mask = ChannelMask({"layer1.0.bn1": [1]})

    def again(net):
        silence_(net, layers, mask, "conv")

    start = copy.deepcopy(model)
    again(start)
    assert not pruned_channels(start)  # the conv mode leaves the BN as it was: nothing to read off the model
    with torch.no_grad():
        right = (model.eval()(data.float_images()).argmax(1) == data.labels).nonzero().flatten().tolist()
    planted(right[:12])
    stage = UnlearnStage(steps=3, lr=0.05, keep_batch=8, forget_batch=4, budget=100.0, retention=0.0, inert=2.0)
    out, extra, _ = stage.run(model, start, data, silence=again)
    assert "pruning_dropped" not in extra and extra["guard"]["chosen"] == 0
    assert out.layer1[0].conv1.weight[1].abs().sum() == 0  # the filter stayed zero through the unlearning
    assert out.layer1[0].conv1.weight[0].abs().sum() > 0
    out, extra, _ = UnlearnStage(**{**vars(stage), "inert": 0.0}).run(model, start, data, silence=again)
    assert extra["pruning_dropped"] and out.layer1[0].conv1.weight[1].abs().sum() > 0  # the suspect, unlearned
    _, extra, _ = UnlearnStage(**{**vars(stage), "inert": 0.0}).run(model, start, data)  # the pruning unseen
    assert "pruning_dropped" not in extra


@pytest.mark.parametrize("kept", [False, True])
def test_eps_kept_statistics_option_reaches_the_unlearning(tiny, planted, monkeypatch, kept):
    model, data = tiny
    planted(list(range(12)))
    seen = []
    real = unlearn_module.unlearn_fine_tune
    monkeypatch.setattr(
        unlearn_module, "unlearn_fine_tune", lambda *a, **k: seen.append(k["kept_statistics"]) or real(*a, **k)
    )
    EP.from_options(rule="count", count=1, confirm=False, retention=0.0, kept_statistics=kept).run(
        model, DefenseData(train=data)
    )
    assert seen and set(seen) == {kept}
