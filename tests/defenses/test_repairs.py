"""The repairs beyond pruning (issue 23): the unlearning loss, the held-out guard, the recovery's search and
the silenced neurons it keeps silent."""

import copy

import torch
from torch import nn

from bdprune.defenses.anchor import anchor_loss, bn_inputs
from bdprune.defenses.holdout import first_within_budget, split_holdout
from bdprune.defenses.recover import pruned_channels, recover, universal_perturbation
from bdprune.defenses.sam import sam_step
from bdprune.defenses.unlearning import forget_loss, normalised_by_first, unlearn_fine_tune


def test_forget_loss_is_zero_when_the_label_has_no_probability_and_grows_with_it():
    labels = torch.tensor([0, 0])
    away = torch.tensor([[-30.0, 0.0, 0.0], [-30.0, 0.0, 0.0]])
    near = torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    assert forget_loss(away, labels) < 1e-6 < forget_loss(near, labels)
    assert torch.isfinite(forget_loss(torch.tensor([[1e4, 0.0, 0.0]]), torch.tensor([0])))


def test_split_holdout_is_disjoint_complete_and_seeded(images):
    data = images(50)
    used, held = split_holdout(data, 0.2, seed=1)
    assert len(held) == 10 and len(used) == 40
    assert set(used.indices.tolist()).isdisjoint(held.indices.tolist())
    assert torch.equal(split_holdout(data, 0.2, seed=1)[1].indices, held.indices)


def test_guard_backs_off_to_the_model_when_every_attempt_costs_too_much(tiny):
    model, clean = tiny

    def broken() -> nn.Module:
        out = copy.deepcopy(model)
        with torch.no_grad():
            out.linear.weight.zero_()
            out.linear.bias.copy_(torch.tensor([9.0, 0, 0, 0]))  # always class 0: a quarter right
        return out

    kept, outcome = first_within_budget(model, [("broken", broken)], clean, budget=0.0)
    if outcome.before > 25:  # the tiny model beats the constant guess on its own samples
        assert kept is model and outcome.chosen is None and "unchanged" in outcome.message
    same, outcome = first_within_budget(model, [("copy", lambda: copy.deepcopy(model))], clean, budget=0.0)
    assert outcome.chosen == 0 and same is not model


def test_an_attempt_that_diverged_is_a_failed_one_and_the_guard_goes_on(tiny):
    model, clean = tiny

    def diverging() -> nn.Module:
        raise FloatingPointError("the unlearning loss became inf at step 3; lower lr")

    kept, outcome = first_within_budget(model, [("wild", diverging), ("copy", lambda: copy.deepcopy(model))], clean)
    assert outcome.chosen == 1 and kept is not model and "backed off from wild" in outcome.message
    assert "inf at step 3" in outcome.attempts[0]["diverged"]
    kept, outcome = first_within_budget(model, [("wild", diverging)], clean)
    assert kept is model and outcome.chosen is None and "wild diverged" in outcome.message


def test_universal_perturbation_stays_in_its_ball_and_raises_the_loss(tiny):
    model, clean = tiny
    x, y = clean.float_images()[:16], clean.labels[:16]
    delta = universal_perturbation(model, x, y, radius=2.0, steps=3)
    assert delta.shape == (1, *x.shape[1:]) and float(delta.norm()) <= 2.0 + 1e-5
    with torch.no_grad():
        before = nn.functional.cross_entropy(model(x), y)
        after = nn.functional.cross_entropy(model((x + delta).clamp(0, 1)), y)
    assert after > before


def test_recover_keeps_pruned_neurons_silent_and_trains(tiny):
    model, clean = tiny
    pruned = copy.deepcopy(model)
    bn = pruned.layer1[0].bn1
    with torch.no_grad():
        bn.weight[[0, 2]] = 0
        bn.bias[[0, 2]] = 0
    assert pruned_channels(pruned)["layer1.0.bn1"].tolist() == [0, 2]
    history = recover(pruned, clean, epochs=2, radius=0.1, adv_steps=2, batch_size=16)
    assert len(history) == 2 and all(h["adv_loss"] > 0 for h in history)
    assert pruned_channels(pruned)["layer1.0.bn1"].tolist() == [0, 2]
    assert not torch.equal(pruned.layer1[0].conv1.weight, model.layer1[0].conv1.weight)


def test_unlearning_moves_the_forgotten_samples_off_their_label(tiny):
    model, clean = tiny
    forget = clean.subset(torch.arange(8))
    trained = copy.deepcopy(model)
    unlearn_fine_tune(
        trained,
        clean.subset(torch.arange(8, 48)),
        forget,
        steps=30,
        lr=0.05,
        keep_batch=16,
        forget_batch=8,
        augment=None,
    )
    with torch.no_grad():
        p_before = model(forget.float_images()).softmax(1).gather(1, forget.labels[:, None]).mean()
        p_after = trained(forget.float_images()).softmax(1).gather(1, forget.labels[:, None]).mean()
    assert p_after < p_before


def test_sam_step_moves_the_weights_and_restores_the_perturbation(tiny):
    model, clean = tiny
    m = copy.deepcopy(model).train()
    x, y = clean.float_images()[:16], clean.labels[:16]
    opt = torch.optim.SGD(m.parameters(), lr=0.0)  # lr 0: the step must leave the weights exactly as they were
    before = [p.detach().clone() for p in m.parameters()]
    sam_step(m, lambda: nn.functional.cross_entropy(m(x), y), opt, rho=0.5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(before, m.parameters(), strict=True))


def test_the_guard_weighs_every_label_alike():
    from bdprune.data import ImageSet
    from bdprune.defenses.holdout import balanced_accuracy

    class AlwaysZero(nn.Module):
        def forward(self, x):
            return torch.tensor([5.0, 0.0]).expand(len(x), 2)

    data = ImageSet(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.tensor([0] * 9 + [1]), ("a", "b"))
    assert balanced_accuracy(AlwaysZero(), data) == 50.0  # plain accuracy: 90


def test_the_unlearnings_anchor_holds_the_kept_samples_bn_inputs(tiny):
    model, clean = tiny
    keep, forget = clean.subset(torch.arange(8, 48)), clean.subset(torch.arange(8))
    x = keep.float_images()

    def change(student) -> float:
        """What the anchor weighs: the kept samples' BN inputs in a training pass (with the forgotten ones in
        the batch, as the unlearning feeds them) against the model before the unlearning."""
        student = copy.deepcopy(student)  # the training pass would move its running statistics
        with torch.no_grad(), bn_inputs(model) as taught, bn_inputs(student) as learnt:
            model.eval()(x)
            student.train()(torch.cat([x, forget.float_images()]))
            return float(anchor_loss(learnt, taught, len(x)))

    runs = {}
    for anchor in (0.0, 4.0):
        runs[anchor] = copy.deepcopy(model)
        unlearn_fine_tune(runs[anchor], keep, forget, steps=20, lr=0.01, keep_batch=40, forget_batch=8, anchor=anchor)
    assert change(runs[4.0]) < 0.8 * change(runs[0.0])
    assert all(
        not m._forward_hooks and not m._forward_pre_hooks for net in (model, *runs.values()) for m in net.modules()
    )


def test_a_batch_normalised_by_its_first_samples_treats_them_as_a_batch_of_their_own(tiny):
    model, clean = tiny
    x = clean.float_images()[:24]
    alone, mixed, plain = (copy.deepcopy(model).train() for _ in range(3))
    with torch.no_grad():
        expected = alone(x[:16])
        with normalised_by_first(mixed, [16]):
            out = mixed(torch.cat([x[:16], 1 - x[16:]]))  # the last 8 neither shift the first 16 nor the statistics
        with normalised_by_first(plain, [24]):  # the whole batch: plain BN
            same = plain(x)
    assert torch.allclose(out[:16], expected, atol=1e-5)
    assert torch.allclose(same, copy.deepcopy(model).train()(x), atol=1e-5)
    for a, b in zip(alone.modules(), mixed.modules(), strict=True):
        if isinstance(a, nn.BatchNorm2d):
            assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
            assert torch.allclose(a.running_var, b.running_var, atol=1e-5)
            assert a.momentum == b.momentum and "forward" not in vars(b)
            assert not b._forward_hooks and not b._forward_pre_hooks


def test_with_kept_statistics_the_unlearned_group_never_enters_the_bn_statistics(tiny):
    """The group fills part of every batch; with `kept_statistics` what the repaired model is evaluated and
    scanned with does not hold it (by default it does: a 1 % BadNets model, 'no evidence', scanned 'backdoored'
    after EP's unlearning)."""
    model, clean = tiny
    keep = clean.subset(torch.arange(8, 48))
    group = clean.subset(torch.arange(8))

    def statistics(kept: bool) -> list[list[torch.Tensor]]:
        out = []
        for value in (0, 255):  # two groups of the same size that differ only in their pixels
            forget = group.with_samples(torch.full_like(group.images, value), group.labels)
            net = copy.deepcopy(model)
            unlearn_fine_tune(net, keep, forget, steps=3, lr=0.0, keep_batch=16, forget_batch=8, augment=None,
                              kept_statistics=kept)  # fmt: skip
            out.append(
                [b for m in net.modules() if isinstance(m, nn.BatchNorm2d) for b in (m.running_mean, m.running_var)]
            )
        return out

    white, black = statistics(True)
    assert all(torch.allclose(a, b) for a, b in zip(white, black, strict=True))
    white, black = statistics(False)
    assert not all(torch.allclose(a, b) for a, b in zip(white, black, strict=True))
