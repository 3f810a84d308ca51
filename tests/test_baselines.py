"""The baseline defenses (FT, FP, l-inf, NAD, ANP, CLP) on tiny models: shared properties, the data they
read, and one test of each one's core mechanism."""

import json
import math

import pytest
import torch
from torch import nn

import bdprune.data
from bdprune.data import ImageSet
from bdprune.defenses import ANP, CLP, FP, FT, NAD, DefenseData, DefenseReport, LInf, create_defense
from bdprune.defenses.clp import channel_lipschitz
from bdprune.defenses.nad import attention_loss, attention_map, find_stages
from bdprune.models import create_model

FAST = {  # enough to exercise every code path in well under a second each
    "ft": {"epochs": 2},
    "fp": {"epochs": 1},
    "nad": {"teacher_epochs": 1, "epochs": 1},
    "anp": {"iterations": 5},
    "linf": {},
    "clp": {},
    "ep": {},
    "bnp": {},
}
BASELINES = ["ft", "fp", "linf", "nad", "anp", "clp"]


def images(n: int = 48, size: int = 16, seed: int = 0, classes: int = 4) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    return ImageSet(data, torch.arange(n) % classes, tuple(f"c{i}" for i in range(classes)), name="tiny")


def with_bn_statistics(model: nn.Module, data: ImageSet) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(data.float_images())
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    clean = images()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("resnet18", base_width=4, num_classes=4, in_channels=1)
    return with_bn_statistics(model, images(96, seed=1)), clean


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- shared properties ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(FAST))
def test_same_architecture_input_untouched_and_report_is_json(tiny, method, tmp_path):
    model, clean = tiny
    model.train()  # even a model handed over in train mode keeps its mode and BN statistics
    try:
        before = state(model)
        repaired, report = create_defense(method, **FAST[method]).run(
            model, DefenseData(clean=clean, train=images(64, seed=2)))
        assert model.training
        after = model.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before.items()), "the input model was modified"
    finally:
        model.eval()
    assert type(repaired) is type(model) and repaired is not model
    shapes = {k: v.shape for k, v in repaired.state_dict().items()}
    assert shapes == {k: v.shape for k, v in before.items()}
    assert all(torch.isfinite(v.float()).all() for v in repaired.state_dict().values())
    assert torch.isfinite(repaired.eval()(clean.float_images()[:4])).all()
    assert report.method == method and report.seconds > 0
    path = report.save(tmp_path / "r.json")
    again = DefenseReport.load(path)
    assert again.num_pruned == report.num_pruned == json.loads(path.read_text())["num_pruned"]


class Tripwire:
    """Stands for data a defense must not read: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the defense read .{name} of data it was not meant to use")

    def __len__(self):
        raise AssertionError("the defense read data it was not meant to use")


class Watched(ImageSet):
    """An ImageSet that records every read of its images."""

    reads: list = []

    def __getattribute__(self, name):
        if name == "images":
            Watched.reads.append(object.__getattribute__(self, "name"))
        return object.__getattribute__(self, name)


@pytest.mark.parametrize("method", ["ft", "fp", "linf", "nad", "anp"])
def test_clean_sample_defenses_read_only_the_clean_samples(tiny, method, monkeypatch):
    model, clean = tiny

    def no_loading(*args, **kwargs):
        raise AssertionError("a defense tried to load a dataset from disk")

    monkeypatch.setattr(bdprune.data, "load_dataset", no_loading)
    monkeypatch.setattr(bdprune.data.datasets, "load_dataset", no_loading)
    marked = Watched(clean.images, clean.labels, clean.classes, name="MARKER")
    Watched.reads = []
    _, report = create_defense(method, **FAST[method]).run(
        model, DefenseData(clean=marked, train=Tripwire(), train_poisoned=Tripwire()))
    assert Watched.reads and set(Watched.reads) == {"MARKER"}
    assert report.samples == len(clean)


def test_clp_reads_no_sample_at_all(tiny):
    model, _ = tiny
    repaired, report = CLP(image_shape=(1, 16, 16)).run(model, DefenseData(clean=Tripwire(), train=Tripwire()))
    assert report.samples == 0 and type(repaired) is type(model)
    _, without_any = CLP().run(model, DefenseData())  # no data, no shape: a 32 x 32 zero image traces the model
    assert [l.scores for l in without_any.layers] == [l.scores for l in report.layers]


def test_unknown_and_invalid_options_are_clear_errors():
    with pytest.raises(TypeError, match="defense 'anp'"):
        create_defense("anp", u=3)
    with pytest.raises(ValueError, match="scope"):
        LInf(scope="first")
    with pytest.raises(ValueError, match="needs a set of clean samples"):
        FT().run(nn.Linear(2, 2), DefenseData())


# -- core mechanisms -----------------------------------------------------------------------------------------
def test_ft_lowers_the_clean_loss_and_changes_the_weights(tiny):
    model, clean = tiny
    repaired, report = FT(epochs=6, lr=0.05, augment=False).run(model, DefenseData(clean=clean))
    losses = [h["loss"] for h in report.extra["history"]]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert not torch.equal(repaired.conv1.weight, model.conv1.weight)


class Head(nn.Module):
    """conv -> BN -> ReLU -> global average -> linear: the classifier reads one value per channel."""

    def __init__(self, channels: int = 8, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_fp_prunes_the_dormant_channels_first_and_keeps_them_pruned():
    torch.manual_seed(0)
    model, clean = Head().eval(), images(60, seed=3, classes=3)
    with torch.no_grad():
        model.bn.bias.fill_(1.0)
        model.bn.bias[[2, 5]] = -50.0  # channels 2 and 5 never fire on any input: dormant
    repaired, report = FP(tolerance=0.0, epochs=2).run(model, DefenseData(clean=clean))
    layer = report.layers[0]
    assert layer.name == "fc"
    order = layer.extra["order"]
    assert set(order[:2]) == {2, 5} and layer.scores[2] == layer.scores[5] == 0.0
    assert {2, 5} <= set(layer.pruned) and sorted(order[: len(layer.pruned)]) == layer.pruned
    curve = layer.extra["clean_accuracy_curve"]
    assert curve[1] == curve[2] == curve[0], "pruning a dormant channel cannot change any prediction"
    assert repaired.fc.weight[:, layer.pruned].abs().sum() == 0, "pruned columns stay zero through fine-tuning"
    assert report.extra["history"], "the pruned model was fine-tuned"


def test_fp_stops_when_clean_accuracy_drops_beyond_tolerance():
    torch.manual_seed(1)
    model, clean = Head().eval(), images(60, seed=4, classes=3)
    _, strict = FP(tolerance=0.0, epochs=0).run(model, DefenseData(clean=clean))
    _, loose = FP(tolerance=0.5, max_ratio=1.0, epochs=0).run(model, DefenseData(clean=clean))
    for report, tol in ((strict, 0.0), (loose, 0.5)):
        curve = report.layers[0].extra["clean_accuracy_curve"]
        k = len(report.layers[0].pruned)
        assert all(curve[0] - a <= tol * curve[0] + 1e-12 for a in curve[: k + 1])
        if k < len(curve) - 1 and k < int(report.config["max_ratio"] * 8):
            assert curve[0] - curve[k + 1] > tol * curve[0], "stopped before the first step that broke the rule"
    assert len(loose.layers[0].pruned) >= len(strict.layers[0].pruned)


def test_linf_prunes_the_neuron_with_outlying_activation_peaks():
    torch.manual_seed(0)
    model, clean = Head(channels=32).eval(), images(40, seed=5, classes=3)
    with torch.no_grad():
        model.bn.weight[7] = 25.0  # channel 7's activation map peaks far above the others'
    repaired, report = LInf().run(model, DefenseData(clean=clean))
    assert report.layers[0].pruned == [7]
    assert int(torch.tensor(report.layers[0].scores).argmax()) == 7
    assert repaired.bn.weight[7] == 0 and repaired.bn.bias[7] == 0 and model.bn.weight[7] == 25.0


def test_nad_attention_loss_is_zero_for_identical_teacher_and_student():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(4, 8, 6, 6, generator=g), torch.randn(4, 16, 3, 3, generator=g)]
    assert attention_loss(feats, [f.clone() for f in feats], [500.0, 1000.0]).item() == 0.0
    other = [f + torch.randn(f.shape, generator=g) for f in feats]
    assert attention_loss(feats, other, [500.0, 1000.0]).item() > 0.0
    am = attention_map(feats[0])  # (N, H * W), unit L2 norm per sample
    assert am.shape == (4, 36) and torch.allclose(am.norm(dim=1), torch.ones(4), atol=1e-5)


def test_nad_distils_the_last_three_stages(tiny):
    model, clean = tiny
    assert find_stages(model) == ["layer2", "layer3", "layer4"]
    _, report = NAD(teacher_epochs=1, epochs=1).run(model, DefenseData(clean=clean))
    assert report.extra["attention_layers"] == ["layer2", "layer3", "layer4"]
    assert report.extra["mean_attention_loss"] > 0  # the teacher moved, so the student is pulled towards it


def test_anp_masks_move_under_perturbation_and_stay_in_the_unit_interval(tiny):
    model, clean = tiny
    _, perturbed = ANP(iterations=20, eps=0.4).run(model, DefenseData(clean=clean))
    _, natural = ANP(iterations=20, eps=0.0).run(model, DefenseData(clean=clean))

    def masks(report):
        return torch.cat([torch.tensor(m) for m in report.extra["masks"].values()])

    m_pert, m_nat = masks(perturbed), masks(natural)
    assert ((m_pert >= 0) & (m_pert <= 1)).all()
    assert (m_pert < 1).any(), "the adversarial perturbation moves some masks"
    assert (1 - m_pert).sum() > (1 - m_nat).sum(), "masks move further under perturbation than without it"
    pruned = {l.name: l.pruned for l in perturbed.layers}
    for name, values in perturbed.extra["masks"].items():
        assert pruned[name] == [i for i, v in enumerate(values) if v < 0.2]


def test_anp_prunes_by_zeroing_the_bn_weight(tiny):
    model, clean = tiny
    _, report = ANP(iterations=5, threshold=1.01).run(model, DefenseData(clean=clean))  # every mask < 1.01
    repaired, _ = ANP(iterations=5, threshold=1.01).run(model, DefenseData(clean=clean))
    assert report.num_pruned == sum(l.channels for l in report.layers)
    assert repaired.bn1.weight.abs().sum() == 0 and torch.equal(repaired.bn1.bias, model.bn1.bias)


def test_clp_score_is_the_largest_singular_value_of_the_bn_scaled_filter():
    g = torch.Generator().manual_seed(0)
    conv, bn = nn.Conv2d(5, 6, 3, bias=False), nn.BatchNorm2d(6)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        bn.weight.copy_(torch.randn(6, generator=g))
        bn.running_var.copy_(torch.rand(6, generator=g) + 0.1)
    scores = channel_lipschitz(conv, bn)
    for k in range(6):
        w = conv.weight[k].double().reshape(5, 9) * bn.weight[k].double() / math.sqrt(bn.running_var[k].double().item() + bn.eps)
        assert scores[k].item() == pytest.approx(torch.linalg.svdvals(w).max().item(), rel=1e-10)


def test_clp_prunes_a_channel_with_an_outlying_lipschitz_constant():
    torch.manual_seed(0)
    model = Head(channels=32).eval()
    with torch.no_grad():
        model.conv.weight[11] *= 30.0
    repaired, report = CLP().run(model, DefenseData(clean=images(4, classes=3)))
    assert report.layers[0].pruned == [11]
    assert repaired.bn.weight[11] == 0 and repaired.bn.bias[11] == 0


# -- command line --------------------------------------------------------------------------------------------
from conftest import requires_fashion_mnist  # noqa: E402


@requires_fashion_mnist
def test_compare_and_defend_on_a_tiny_saved_run(tmp_path, capsys):
    from bdprune.cli import main

    run = tmp_path / "run"
    assert main(["train", "--attack", "badnets", "--width", "4", "--epochs", "1", "--train-subset", "400",
                 "--seed", "2", "--out", str(run), "--quiet", "--device", "cpu"]) == 0
    capsys.readouterr()
    fast = ["ft.epochs=1", "fp.epochs=1", "nad.teacher_epochs=1", "nad.epochs=1", "anp.iterations=3"]
    args = ["compare", str(run), "--methods", "ft,fp,linf,nad,anp,clp,ep,bnp", "--clean-samples", "40",
            "--test-samples", "300", "--out", str(tmp_path / "cmp"), "--quiet", "--device", "cpu"]
    for item in fast:
        args += ["--defense-arg", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]
    assert [r["defense"] for r in rows] == ["none", "ft", "fp", "linf", "nad", "anp", "clp", "ep", "bnp"]
    for row in rows:
        assert 0 <= row["ACC %"] <= 100 and 0 <= row["ASR %"] <= 100
        assert row["defense"] in out
    assert all(r["time s"] > 0 for r in rows[1:])
    assert {r["defense"]: r["samples"] for r in rows}["ep"] == 400
    assert {r["defense"]: r["samples"] for r in rows}["anp"] == 40
    assert (tmp_path / "cmp" / "comparison.md").read_text().startswith("| defense |")
    assert (tmp_path / "cmp" / "reports" / "anp.json").is_file()

    assert main(["defend", str(run), "--method", "clp", "--out", str(tmp_path / "clp"), "--quiet", "--no-plots"]) == 0
    assert json.loads((tmp_path / "clp" / "metrics.json").read_text())["samples"] == 0
    capsys.readouterr()
    assert main(["defend", str(run), "--method", "ft", "--u", "3", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "--u does not apply to ft" in capsys.readouterr().err
    assert main(["compare", str(run), "--methods", "ft,magic", "--quiet"]) == 2
    assert "unknown method" in capsys.readouterr().err
