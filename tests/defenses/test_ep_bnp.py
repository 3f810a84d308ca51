"""EP and BNP end to end on a small network with one planted backdoor neuron, and on bad input."""

import json
import math

import pytest
import torch
from torch import nn

from bdprune.attacks import create_attack, poison_training_set
from bdprune.data import ImageSet
from bdprune.defenses import BNP, EP, DefenseData, DefenseReport, create_defense

PLANTED = ("bn1", 5)  # the backdoor neuron: layer, channel


SIZE = 12


CHECKER = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])


class Planted(nn.Module):
    """conv-BN-ReLU twice, then a linear head. Channel 5 of the first conv is a matched filter of the
    checkerboard trigger; the other filters are random and zero-sum."""

    def __init__(self, channels: int = 32, bn: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(channels) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(channels) if bn else nn.Identity()
        self.fc = nn.Linear(channels, 2)
        with torch.no_grad():
            w = torch.randn(channels, 1, 3, 3, generator=g)
            w -= w.mean(dim=(1, 2, 3), keepdim=True)
            w[5, 0] = CHECKER
            self.conv1.weight.copy_(w)
            self.conv2.weight.copy_(torch.randn(self.conv2.weight.shape, generator=g) * 0.1)
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g) * 0.1)  # not from the global RNG:
            for bias in (self.conv1.bias, self.conv2.bias, self.fc.bias):  # the same model whatever ran before
                if bias is not None:
                    bias.zero_()

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def dark_images(n: int, seed: int) -> ImageSet:
    """Dim noise with one bright 3x3 blob at a random place: every filter meets strong edges on benign
    images too, so only the checkerboard's matched filter singles out the trigger."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, SIZE, SIZE, generator=g) * 0.25
    rows = torch.randint(0, SIZE - 6, (n,), generator=g)
    cols = torch.randint(0, SIZE - 6, (n,), generator=g)
    for i in range(n):
        images[i, :, rows[i] : rows[i] + 3, cols[i] : cols[i] + 3] = 1.0
    return ImageSet(
        (images * 255).round().to(torch.uint8), torch.randint(0, 2, (n,), generator=g), ("a", "b"), name="dark"
    )


@pytest.fixture(scope="module")
def scenario(with_bn_statistics):
    attack = create_attack(
        "badnets", image_shape=(1, SIZE, SIZE), num_classes=2, size=3, pattern="checkerboard", target=0
    )
    clean_pool = dark_images(1500, seed=1)
    mixed, positions = poison_training_set(clean_pool, attack, 0.1, torch.Generator().manual_seed(2))
    poisoned = torch.zeros(len(mixed), dtype=torch.bool)
    poisoned[positions] = True
    model = with_bn_statistics(Planted(), mixed)
    return model, DefenseData(clean=dark_images(200, seed=3), train=mixed, train_poisoned=poisoned)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# The planted model's head is random: it has a backdoor neuron but no backdoor behaviour, so EP's default rule
# ("consensus", which prunes only until the model stops giving the poisoned group its labels) has nothing to
# remove; the paper's rule tests the entropy score itself.
# The held-out check (max_harm) has its own tests (tests/defenses/test_harm.py): here the rules alone decide.
# EP's stage after the pruning is off (then="none"): with no backdoor behaviour, the pruning cannot change what
# the model gives the poisoned group, and the stage rightly drops a pruning that did not act on the shortcut
# (tests/defenses/test_unlearn_stage.py).
@pytest.mark.parametrize(
    "method, options", [("ep", {"rule": "zscore", "then": "none"}), ("bnp", {}), ("bnp", {"rule": "zscore"})]
)
def test_the_planted_backdoor_neuron_is_found_and_pruned(scenario, method, options):
    model, data = scenario
    before = state(model)
    repaired, report = create_defense(method, max_harm=None, **options).run(model, data)
    layer, channel = PLANTED
    by_name = {l.name: l for l in report.layers}
    assert channel in by_name[layer].pruned
    z = torch.tensor([v if v is not None else math.nan for v in by_name[layer].z])
    assert int(z.nan_to_num(0).abs().argmax()) == channel, "the planted neuron is the most extreme of its layer"
    assert repaired.bn1.weight[channel] == 0 and repaired.bn1.bias[channel] == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the input model was modified"
    assert report.samples == (len(data.train) if method == "ep" else len(data.clean))
    assert report.seconds > 0 and report.method == method


def test_ep_histograms_separate_benign_from_poisoned(scenario):
    model, data = scenario
    _, report = EP().run(model, data)
    top = report.extra["histograms"][0]
    assert (top["layer"], top["channel"]) == PLANTED and top["groups"] == ["benign", "poisoned"]
    assert sum(top["counts"][1]) == int(data.train_poisoned.sum())


@pytest.mark.parametrize("method", ["ep", "bnp"])
def test_one_batch_of_n_equals_n_batches_of_one(scenario, method):
    model, data = scenario
    small = DefenseData(clean=data.clean.subset(range(40)), train=data.train.subset(range(300)))
    _, whole = create_defense(method, batch_size=1000).run(model, small)
    _, single = create_defense(method, batch_size=1).run(model, small)
    for a, b in zip(whole.layers, single.layers):
        assert a.pruned == b.pruned
        # The network's own float32 arithmetic differs slightly with the batch size; the statistics add no more.
        sa, sb = torch.tensor(a.scores, dtype=torch.float64), torch.tensor(b.scores, dtype=torch.float64)
        assert torch.allclose(sa, sb, rtol=1e-4, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("method", ["ep", "bnp"])
def test_a_model_in_train_mode_keeps_its_mode_and_running_statistics(scenario, method):
    model, data = scenario
    model.train()
    try:
        before = state(model)
        create_defense(method).run(model, data)
        assert model.training
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    finally:
        model.eval()


def test_report_round_trips_through_json_without_nan(scenario, tmp_path):
    model, data = scenario
    _, report = BNP().run(model, data)
    path = report.save(tmp_path / "report.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    again = DefenseReport.load(path)
    assert again.pruned == report.pruned and again.num_pruned == report.num_pruned
    assert json.loads(text)["num_pruned"] == report.num_pruned


def test_plots_are_written(scenario, tmp_path):
    from bdprune.plots import plot_neurons, plot_scores

    model, data = scenario
    for defense in (EP(), BNP()):
        _, report = defense.run(model, data)
        if isinstance(defense, BNP):
            defense.add_diagnostics(model, data, report)
            assert "values" in report.extra["gaussians"][0]
        for path in (
            plot_scores(report, tmp_path / f"{report.method}-s.png"),
            plot_neurons(report, tmp_path / f"{report.method}-n.png"),
        ):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- bad input -------------------------------------------------------------------------------------------
def test_bnp_on_a_model_without_bn_says_what_to_use_instead(scenario):
    _, data = scenario
    with pytest.raises(ValueError, match="has none. Use EP"):
        BNP().run(Planted(bn=False), data)


def test_ep_works_on_a_model_without_bn_by_reading_conv_outputs(scenario):
    _, data = scenario
    model = Planted(bn=False).eval()
    repaired, report = EP.from_options(rule="zscore", then="none").run(model, data)  # the score itself
    assert 5 in report.pruned.get("conv1", [])
    assert repaired.conv1.weight[5].abs().sum() == 0 and repaired.conv1.bias[5] == 0
    # the default's stage sees that pruning too (zeroed conv filters, no BN): the head is random (see above), so
    # the pruning leaves the named group's shortcut as it was and is dropped before the unlearning
    repaired, report = EP.from_options(rule="zscore").run(model, data)
    assert report.extra["unlearn"]["pruning_dropped"] and report.num_pruned == 0
    assert repaired.conv1.weight[5].abs().sum() > 0


def test_dead_and_nan_channels_are_reported_not_silent(scenario, with_bn_statistics):
    _model, data = scenario
    broken = Planted()
    with torch.no_grad():
        broken.conv1.weight[7] = 0.0  # a dead neuron: constant zero pre-activation, zero running variance
    with_bn_statistics(broken, data.train)
    with torch.no_grad():
        broken.conv1.weight[9, 0, 0, 0] = float("nan")  # NaN spreads to every channel of the next layer
    for defense in (EP.from_options(rule="zscore", then="none"), BNP(then="none"), BNP()):
        repaired, report = defense.run(broken, data)
        first = report.layers[0]
        assert 5 in first.pruned, "the planted neuron is still found"
        assert 9 not in first.pruned and 7 not in first.pruned
        assert first.threshold is not None and math.isfinite(first.threshold)
        assert any("NaN" in w for w in report.warnings)
        assert all(torch.isfinite(p).all() for n, p in repaired.named_parameters() if n != "conv1.weight")
        second = report.layers[1]
        assert second.threshold is None and second.pruned == []
    _, ep_report = EP(then="none").run(broken, data)
    assert 7 in ep_report.layers[0].extra["no_entropy"]


def test_too_few_clean_samples_and_wrong_shapes_are_clear_errors(scenario):
    model, data = scenario
    with pytest.raises(ValueError, match="at least 2 clean samples"):
        BNP().run(model, DefenseData(clean=data.clean.subset([0])))
    with pytest.raises(ValueError, match="needs a set of clean samples"):
        BNP().run(model, DefenseData(train=data.train))
    rgb = ImageSet(torch.zeros(4, 3, SIZE, SIZE, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), ("a", "b"))
    with pytest.raises(ValueError, match="cannot process images of shape"):
        EP().run(model, DefenseData(train=rgb))


def test_bnp_warns_below_ten_samples(scenario):
    model, data = scenario
    _, report = BNP(max_harm=None).run(model, DefenseData(clean=data.clean.subset(range(5))))
    assert any("only 5 clean samples" in w for w in report.warnings)
