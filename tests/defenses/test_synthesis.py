"""The trigger read out of the BN running statistics (`bdprune.defenses.synthesis`) and BNP's "synth" stage."""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from bdprune.data import ImageSet
from bdprune.defenses import BNP, EP, DefenseData, pruning, synthesis
from bdprune.defenses.anchor import bn_inputs
from bdprune.defenses.harm import beyond_noise, paired_cost
from bdprune.defenses.recover import pruned_channels, reestimate_bn, refit_head
from bdprune.defenses.scores import Scores
from bdprune.defenses.synthesis import (
    SynthesisedTrigger,
    TriggerStage,
    clean_bn_means,
    running_bns,
    synthesise_trigger,
    unlearn_trigger,
)
from bdprune.errors import InvalidInput
from bdprune.metrics import predict_logits
from bdprune.models import create_model
from bdprune.models.head import classifier_head
from bdprune.neurons.layers import NeuronLayer


@pytest.fixture(scope="module")
def shifted(images, with_bn_statistics):
    """(a width-4 ResNet whose BN statistics are those of the clean images plus a fixed perturbation, the
    clean images, the perturbation): every layer's running mean is shifted as a trigger would shift it."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("resnet18", base_width=4, num_classes=4, in_channels=1)
    clean = images(96, seed=1)
    pattern = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    perturbation = 0.15 * (pattern - 0.5)
    moved = (clean.float_images() + perturbation).clamp(0, 1)
    return with_bn_statistics(model, clean.with_samples(moved, clean.labels)), clean, perturbation


def _alignment(model, clean: ImageSet, delta: torch.Tensor) -> float:
    """The mean over BN layers of the cosine between the shift delta causes and the running statistics' shift."""
    names = [n for n, _ in running_bns(model)]
    x = clean.float_images()
    mu, moved = clean_bn_means(model, x, names), clean_bn_means(model, (x + delta).clamp(0, 1), names)
    cos = []
    for name, bn in running_bns(model):
        sd = (bn.running_var.double() + bn.eps).sqrt()
        cos.append(
            F.cosine_similarity((moved[name] - mu[name]) / sd, (bn.running_mean.double() - mu[name]) / sd, dim=0)
        )
    return float(torch.stack(cos).mean())


def test_the_trigger_read_from_the_statistics_reproduces_their_shift_in_every_layer(shifted):
    model, clean, perturbation = shifted
    before = copy.deepcopy(model.state_dict())
    trigger = synthesise_trigger(model, clean, radius=0.2, steps=50)
    assert float(trigger.delta.norm()) <= 0.2 * 16 + 1e-4  # within its ball (0.2 per pixel on 16 x 16)
    assert _alignment(model, clean, perturbation) > 0.95  # the measure itself: the true shift scores ~1
    random = torch.randn(perturbation.shape, generator=torch.Generator().manual_seed(0))
    assert abs(_alignment(model, clean, random * 3.2 / random.norm())) < 0.3
    assert trigger.to_dict()["mean_alignment"] > 0.8
    # and it points partly along the perturbation that made the statistics (chance: |cos| ~ 1/16)
    assert F.cosine_similarity(trigger.delta.flatten(), perturbation.flatten(), dim=0) > 0.2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    assert sum(trigger.counts) == len(clean) and 0 <= trigger.share <= 100


def test_a_model_without_running_statistics_has_no_trigger_to_read(images):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    model(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="no BN layer"):
        synthesise_trigger(model, images(8))
    pruned, extra, warnings = TriggerStage().run(model, model, images(8), images(8, seed=3))
    assert pruned is model and "skipped" in extra and "not run" in warnings[0]


def test_unlearning_keeps_pruned_neurons_silent_and_moves_the_triggered_predictions(tiny):
    model, clean = tiny
    pruned = copy.deepcopy(model)
    bn = dict(pruned.named_modules())["layer1.0.bn1"]
    with torch.no_grad():
        bn.weight[1] = 0
        bn.bias[1] = 0
    delta = torch.full((1, 1, 16, 16), 0.3)
    x = clean.float_images()
    gap_before = (F.softmax(pruned((x + delta).clamp(0, 1)), 1) - F.softmax(model(x), 1)).abs().sum(1).mean()
    history = unlearn_trigger(pruned, model, clean, delta, epochs=5, lr=0.05)
    assert len(history) == 5
    assert {k: v.tolist() for k, v in pruned_channels(pruned).items()} == {"layer1.0.bn1": [1]}
    with torch.no_grad():
        gap_after = (F.softmax(pruned((x + delta).clamp(0, 1)), 1) - F.softmax(model(x), 1)).abs().sum(1).mean()
    assert gap_after < gap_before  # the triggered inputs are pulled towards the suspect's clean predictions


def test_the_stage_unlearns_only_a_confirmed_trigger_and_only_under_its_guard(tiny, images, monkeypatch):
    model, clean = tiny
    pruned = copy.deepcopy(model)  # stands for BNP's pruned model
    held = images(24, seed=4)
    kept, extra, warnings = TriggerStage(confirm_share=101.0, restarts=1, steps=5).run(model, pruned, clean, held)
    assert kept is pruned and extra["confirmed"] is False and not warnings and len(extra["shares"]) == 1
    kept, extra, warnings = TriggerStage(confirm_share=0.0, restarts=1, steps=5).run(model, pruned, clean, None)
    assert kept is pruned and extra["confirmed"] and "no held-out" in warnings[0]
    stage = TriggerStage(confirm_share=0.0, restarts=1, steps=5, epochs=2, budget=100.0)
    repaired, extra, warnings = stage.run(model, pruned, clean, held)
    assert repaired is not pruned and repaired is not model and extra["unlearned"]
    assert "unlearned instead of pruned" in warnings[0]
    changed = [k for k, v in repaired.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert any(k.endswith("weight") for k in changed)  # the suspect's copy was trained, the suspect was not
    assert extra["guard"]["samples"] == len(held) and extra["guard"]["finite"]
    assert extra["share_after_pruning"] == pytest.approx(extra["trigger"]["share"])  # the "pruned" is the suspect
    assert extra["unlearn_scale"] in stage.unlearn_scales and extra["scaled_shares"]
    assert extra["head_refit"] == {"epochs": stage.head_epochs}
    mean, var = running_bns(repaired)[0][1].running_mean.clone(), running_bns(repaired)[0][1].running_var.clone()
    reestimate_bn(repaired, clean)  # the stage left the clean samples' own statistics: a second pass keeps them
    assert torch.allclose(running_bns(repaired)[0][1].running_mean, mean, atol=1e-5)
    assert torch.allclose(running_bns(repaired)[0][1].running_var, var, atol=1e-5)
    monkeypatch.setattr(synthesis, "beyond_noise", lambda cost, se, budget: True)  # every cost is harm
    repaired, extra, warnings = stage.run(model, pruned, clean, held)
    assert repaired is pruned and extra["unlearned"] is False and "BNP's pruning is kept" in warnings[0]


def test_the_bn_statistics_are_reestimated_on_the_clean_samples_alone(images):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("resnet18", base_width=4, num_classes=4, in_channels=1)
    clean = images(40, seed=2)
    model.train()
    with torch.no_grad():  # statistics of other data: bright images, as a perturbed fine-tuning would leave
        model(torch.ones(16, 1, 16, 16))
    model.eval()
    name, bn = running_bns(model)[0]
    reestimate_bn(model, clean, batch_size=20)  # equal batches: the average of batch means is the mean
    want = clean_bn_means(model, clean.float_images(), [name])[name].float()
    assert torch.allclose(bn.running_mean, want, atol=1e-4)  # the average over the clean samples, nothing else
    assert bn.momentum == 0.1 and not model.training  # the layer's momentum and the model's mode come back
    single = copy.deepcopy(model)
    reestimate_bn(single, images(1, seed=3))  # one sample: train-mode BN cannot read it; nothing changes
    assert torch.equal(running_bns(single)[0][1].running_mean, bn.running_mean)


def test_a_pruning_that_already_took_the_trigger_away_is_kept(tiny, images, monkeypatch):
    model, clean = tiny
    pruned = copy.deepcopy(model)
    # every trigger is confirmed on the suspect (share >= 0); the pruned model lets it do less than that
    monkeypatch.setattr(synthesis, "trigger_share", lambda m, c, d, top: -1.0)
    kept, extra, warnings = TriggerStage(confirm_share=0.0, restarts=1, steps=5).run(
        model, pruned, clean, images(24, seed=4)
    )
    assert extra["confirmed"] and kept is pruned and extra["unlearned"] is False
    assert "the pruned model is kept" in warnings[0] and "guard" not in extra  # nothing unlearned, nothing guarded
    # a pruning that left the trigger sending more than `kept_share` percent did not take its effect away
    monkeypatch.setattr(synthesis, "trigger_share", lambda m, c, d, top: 20.0)
    stage = TriggerStage(confirm_share=0.0, kept_share=5.0, restarts=1, steps=5, epochs=1, budget=100.0)
    repaired, extra, warnings = stage.run(model, pruned, clean, images(24, seed=4))
    assert extra["share_after_pruning"] == 20.0 and "guard" in extra and extra["unlearned"] and repaired is not pruned


def test_the_share_counts_other_labels_sent_to_the_class(images):
    class Always(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([0.0, 1.0, 0.0, 0.0]).expand(len(x), 4)

    clean = images(40)  # labels cycle over 4 classes
    delta = torch.zeros(1, 1, 16, 16)
    assert synthesis.trigger_share(Always(), clean, delta, 1) == 100.0  # every sample of labels 0, 2, 3
    assert synthesis.trigger_share(Always(), clean, delta, 0) == 0.0


def test_the_guard_counts_only_a_cost_beyond_its_noise():
    right = torch.ones(100, dtype=torch.bool)
    ten_lost = right.clone()
    ten_lost[:10] = False
    cost, se = paired_cost(right, ten_lost)
    assert cost == 10.0 and 2.9 < se < 3.1 and beyond_noise(cost, se, 2.0)
    mixed = right.clone()
    mixed[:3] = False
    before = right.clone()
    before[50:52] = False  # two samples the repair got right that the model got wrong
    cost, se = paired_cost(before, mixed)
    assert cost == 1.0 and not beyond_noise(cost, se, 2.0)
    assert not beyond_noise(3.0, 2.0, 2.0)  # over the budget, but within two standard errors


def test_bnp_defaults_to_the_synth_stage_and_ep_refuses_it(tiny, monkeypatch):
    model, clean = tiny
    assert BNP().then == "synth" and BNP(then="none").then == "none"
    repaired, report = BNP(plot_neurons=0).run(model, DefenseData(clean=clean))
    assert "synth" in report.extra and "confirmed" in report.extra["synth"]
    eager = functools.partial(
        TriggerStage, confirm_share=0.0, kept_share=-1.0, budget=100.0, restarts=1, steps=5, epochs=1
    )
    monkeypatch.setattr(pruning, "TriggerStage", eager)  # every trigger confirmed, every unlearning kept
    repaired, report = BNP.from_options(plot_neurons=0, rule="mad", u=0.5).run(model, DefenseData(clean=clean))
    assert report.extra["synth"]["unlearned"] and report.num_pruned == 0  # the unlearned suspect, unpruned
    assert not pruned_channels(repaired)
    pruning_only = BNP.from_options(plot_neurons=0, rule="mad", u=0.5, then="none").run(model, DefenseData(clean=clean))
    assert pruning_only[1].num_pruned > 0  # the same rule does prune when nothing replaces it
    assert "synth" not in BNP(then="none", plot_neurons=0).run(model, DefenseData(clean=clean))[1].extra
    with pytest.raises(InvalidInput, match="synth"):
        EP(then="synth")


def test_the_unlearned_fraction_is_the_smallest_that_still_sends_most_samples(monkeypatch):
    trigger = SynthesisedTrigger(torch.ones(1, 1, 4, 4), {}, [0, 10], top=1, share=100.0, radius=0.2)
    stage = TriggerStage()
    for strength, expected in ((200.0, 0.5), (120.0, 0.75), (50.0, 1.0)):  # share = strength x fraction
        monkeypatch.setattr(synthesis, "trigger_share", lambda m, c, delta, top, s=strength: s * float(delta.max()))
        scale, shares = stage.scale_for(None, None, trigger)
        assert scale == expected
        assert list(shares) == [f"{s:g}" for s in sorted(stage.unlearn_scales) if s <= expected]
    assert shares["1"] == pytest.approx(50.0)  # a weak perturbation is unlearned whole


def test_each_perturbed_sample_gets_a_multiple_of_the_perturbation_between_low_and_one(tiny):
    model, clean = tiny
    clean = clean.with_samples(torch.full_like(clean.float_images(), 0.5), clean.labels)  # no clamping, flips inert
    delta = torch.full((1, 1, 16, 16), 0.1)
    seen = []
    student = copy.deepcopy(model)
    hook = student.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    unlearn_trigger(student, model, clean, delta, epochs=2, low=0.5)
    hook.remove()
    factors = torch.cat([(x[len(x) // 2 :] - x[: len(x) // 2]).flatten(1).mean(1) / 0.1 for x in seen])
    assert factors.min() >= 0.5 - 1e-4 and factors.max() <= 1.0 + 1e-4
    assert factors.max() - factors.min() > 0.2  # drawn, not one fixed multiple
    with pytest.raises(ValueError, match="low"):
        unlearn_trigger(student, model, clean, delta, epochs=1, low=1.5)


def _moved_target_probability(model, clean: ImageSet, delta: torch.Tensor, target: int) -> float:
    """The mean probability `model` gives `target` on the clean samples plus `delta`."""
    with torch.no_grad():
        return float(F.softmax(model((clean.float_images() + delta).clamp(0, 1)), 1)[:, target].mean())


def test_the_forget_term_takes_the_triggers_class_from_the_moved_samples(tiny):
    model, clean = tiny
    delta = torch.full((1, 1, 16, 16), 0.3)
    with torch.no_grad():
        target = int(model((clean.float_images() + delta).clamp(0, 1)).argmax(1).mode().values)
    plain, forgetting = copy.deepcopy(model), copy.deepcopy(model)
    unlearn_trigger(plain, model, clean, delta, epochs=3, lr=0.05, moved_weight=0.0)
    unlearn_trigger(forgetting, model, clean, delta, epochs=3, lr=0.05, moved_weight=0.0, target=target, forget=2.0)
    assert _moved_target_probability(forgetting, clean, delta, target) < 0.7 * _moved_target_probability(
        plain, clean, delta, target
    )


def test_without_one_class_each_moved_sample_forgets_the_class_the_perturbation_sends_it_to(tiny):
    model, clean = tiny
    delta = torch.full((1, 1, 16, 16), 0.3)
    x = clean.float_images()
    with torch.no_grad():
        before, sent = model(x).argmax(1), model((x + delta).clamp(0, 1)).argmax(1)
    moved = sent != before
    assert moved.sum() >= 4  # the perturbation moves samples (else the test says nothing)

    def sent_probability(m):  # the mean probability of the class each moved sample was sent to
        with torch.no_grad():
            p = F.softmax(m((x + delta).clamp(0, 1)), 1)
        return float(p[moved].gather(1, sent[moved, None]).mean())

    plain, forgetting = copy.deepcopy(model), copy.deepcopy(model)
    unlearn_trigger(plain, model, clean, delta, epochs=3, lr=0.05, moved_weight=0.0)
    unlearn_trigger(forgetting, model, clean, delta, epochs=3, lr=0.05, moved_weight=0.0, forget=2.0)
    assert sent_probability(forgetting) < 0.7 * sent_probability(plain)


def test_a_perturbation_that_pairs_classes_is_unlearned_without_one_class(tiny, images, monkeypatch):
    model, clean = tiny
    pruned, held = copy.deepcopy(model), images(24, seed=4)
    # no trigger confirmed (share under 101); every perturbation pairs classes (pairing >= 0)
    stage = TriggerStage(
        confirm_share=101.0, pair_share=0.0, pair_forget=6.0, restarts=2, steps=5, epochs=1, budget=100.0
    )
    taken = {}
    real = synthesis.unlearn_trigger
    monkeypatch.setattr(synthesis, "unlearn_trigger", lambda *a, **k: taken.update(k) or real(*a, **k))
    repaired, extra, warnings = stage.run(model, pruned, clean, held)
    assert extra["confirmed"] is False and extra["unlearned"] and repaired is not pruned
    assert taken["target"] is None and taken["forget"] == stage.pair_forget and taken["low"] == 1.0
    assert "along one map of classes" in warnings[0] and "pairing_after_pruning" in extra
    # the pruning already took the pairing away: kept, nothing unlearned
    monkeypatch.setattr(synthesis, "trigger_pairing", lambda m, c, d: 0.0)
    kept, extra, warnings = stage.run(model, pruned, clean, held)
    assert kept is pruned and extra["unlearned"] is False and "the pruned model is kept" in warnings[0]
    # without `pair_forget` (the default), or under `pair_share`, a perturbation that only pairs is not unlearned
    for other in (replace(stage, pair_forget=0.0), replace(stage, pair_share=101.0)):
        kept, extra, warnings = other.run(model, pruned, clean, held)
        assert kept is pruned and not warnings and "unlearned" not in extra


def test_the_anchor_holds_the_clean_samples_bn_inputs_and_its_hooks_go(tiny):
    model, clean = tiny
    delta = torch.full((1, 1, 16, 16), 0.3)
    x = clean.float_images()

    def change(student) -> float:
        """What the anchor weighs: the clean samples' BN inputs in a training pass of the student (on the clean
        and the moved samples together, as the unlearning feeds them) against the suspect's (eval mode), relative
        squared difference summed over layers."""
        student = copy.deepcopy(student)  # the training pass would move its running statistics
        with torch.no_grad(), bn_inputs(model) as taught, bn_inputs(student) as learnt:
            model.eval()(x)
            student.train()(torch.cat([x, (x + delta).clamp(0, 1)]))
            return float(sum(((learnt[k][: len(x)] - t) ** 2).mean() / t.pow(2).mean() for k, t in taught.items()))

    free, anchored = copy.deepcopy(model), copy.deepcopy(model)
    unlearn_trigger(free, model, clean, delta, epochs=3)
    unlearn_trigger(anchored, model, clean, delta, epochs=3, anchor=2.0)
    assert change(anchored) < 0.8 * change(free)
    assert all(not bn._forward_hooks for _, bn in running_bns(anchored) + running_bns(model))


def test_the_head_refit_gives_back_the_teachers_clean_predictions_and_moves_only_the_head(tiny):
    model, clean = tiny
    student = copy.deepcopy(model)
    with torch.no_grad():  # a head that no longer matches its features (what an unlearning can leave)
        classifier_head(student).weight.mul_(-1.0)
    teacher = F.softmax(predict_logits(model, clean), 1)

    def divergence(net) -> float:
        return float((teacher * (teacher.log() - F.log_softmax(predict_logits(net, clean), 1))).sum(1).mean())

    before = {k: v.clone() for k, v in student.state_dict().items()}
    far = divergence(student)
    refit_head(student, model, clean, epochs=40, lr=0.05)
    assert divergence(student) < far / 4
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"linear.weight", "linear.bias"}  # the features, BN statistics included, are left alone
    stage = TriggerStage(confirm_share=0.0, restarts=1, steps=5, epochs=1, budget=100.0, head_epochs=0)
    _, extra, _ = stage.run(model, copy.deepcopy(model), clean, clean)
    assert extra["unlearned"] and "head_refit" not in extra


def test_bnp_returns_a_model_that_shows_no_backdoor_unchanged_and_says_why(tiny):
    model, clean = tiny
    quiet = functools.partial(TriggerStage, confirm_share=101.0, pair_share=101.0, restarts=1, steps=5)  # no trigger
    eager = functools.partial(TriggerStage, confirm_share=0.0, pair_share=101.0, kept_share=101.0, restarts=1, steps=5)
    paired = functools.partial(TriggerStage, confirm_share=101.0, pair_share=0.0, restarts=1, steps=5)
    data = DefenseData(clean=clean)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pruning, "TriggerStage", quiet)
        kept, report = BNP.from_options(plot_neurons=0, rule="mad", u=0.5, evidence_z=1e9).run(model, data)
        assert report.num_pruned == 0 and not pruned_channels(kept) and kept is not model
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in kept.state_dict().items())
        evidence = report.extra["evidence"]
        assert evidence["confirmed"] is False and evidence["by"] == [] and evidence["strongest_z"] < 1e9
        assert report.extra["synth"]["confirmed"] is False and len(report.layers) > 0  # the scores are reported
        assert "no evidence of a backdoor" in report.warnings[0] and "returned unchanged" in report.warnings[0]
        assert (
            report.read["trigger"][0].share == evidence["share"] and len(report.read["clean"]) == 39
        )  # less the held-out
        assert "read" not in report.to_dict()  # kept for the witness, never saved
        # the same suspect with a neuron beyond `evidence_z`: pruned on that evidence, the trigger read once
        reads = []
        patch.setattr(TriggerStage, "read", lambda self, m, c, _r=TriggerStage.read: reads.append(1) or _r(self, m, c))
        _, report = BNP.from_options(plot_neurons=0, rule="mad", u=0.5, evidence_z=0.0).run(model, data)
        assert report.extra["evidence"]["by"] == ["neuron"] and report.num_pruned > 0 and len(reads) == 1
        _, report = BNP.from_options(plot_neurons=0, rule="mad", u=0.5, evidence_z=1e9, confirm=False).run(model, data)
        assert report.num_pruned > 0  # confirm=False prunes on the rule's word alone
        patch.setattr(pruning, "TriggerStage", eager)  # a confirmed trigger is evidence whatever the neurons say
        _, report = BNP.from_options(plot_neurons=0, rule="mad", u=0.5, evidence_z=1e9).run(model, data)
        assert report.extra["evidence"]["by"] == ["trigger"] and report.num_pruned > 0
        patch.setattr(pruning, "TriggerStage", paired)  # so is a perturbation that moves classes along one map
        _, report = BNP.from_options(plot_neurons=0, rule="mad", u=0.5, evidence_z=1e9).run(model, data)
        assert report.extra["evidence"]["by"] == ["pairing"] and report.num_pruned > 0


def test_the_strongest_outlier_is_the_largest_robust_z_on_the_defenses_side():
    layers = [NeuronLayer("a", "conv_a", "a", 5), NeuronLayer("b", "conv_b", "b", 5)]
    scored = Scores(layers, {"a": torch.tensor([1.0, 2.0, 3.0, 4.0, 40.0]),
                             "b": torch.tensor([1.0, 1.1, float("nan"), 0.9, -30.0])}, samples=10)  # fmt: skip
    z, layer, channel = pruning.strongest_outlier(scored, "high")
    assert (layer, channel) == ("a", 4) and z == pytest.approx((40.0 - 3.0) / (1.4826 * 1.0))
    z, layer, channel = pruning.strongest_outlier(scored, "low")
    assert (layer, channel) == ("b", 4) and z == pytest.approx((0.9 + 30.0) / (1.4826 * 0.1), rel=1e-4)  # NaN left out
    nothing = Scores(layers[:1], {"a": torch.full((5,), float("nan"))}, samples=10)
    assert math.isnan(pruning.strongest_outlier(nothing, "high")[0])


def test_the_pairing_counts_the_samples_moved_along_one_map_of_classes():
    before = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1])
    all_to_all = torch.tensor([1, 1, 2, 2, 3, 3, 0, 0, 0, 1])  # each class to the next; two samples stay
    assert synthesis.pairing_share(before, all_to_all, 4) == pytest.approx(80.0)
    all_to_one = torch.tensor([2, 2, 2, 2, 2, 2, 2, 2, 2, 2])  # one destination: only its largest source counts
    assert synthesis.pairing_share(before, all_to_one, 4) == pytest.approx(30.0)  # 0 -> 2 (3 samples)
    assert synthesis.pairing_share(before, before, 4) == 0.0
