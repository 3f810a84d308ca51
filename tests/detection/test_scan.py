"""The scan (issue 25): the statistic on a planted backdoor neuron, the record, the command's exit statuses and
its one-line refusals of bad input."""

import json
import math

import pytest
import torch
from torch import nn

import bdprune
from bdprune.cli import main
from bdprune.data import ImageSet
from bdprune.detection import BACKDOORED, DEFAULT_STATISTIC, NO_EVIDENCE, ScanResult, scan
from bdprune.detection.record import verdict_of
from bdprune.detection.statistic import robust_z
from bdprune.errors import InvalidInput

CHANNELS, SIZE, PLANTED = 24, 10, 5
CHECKER = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])


class Net(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU, linear head; random zero-sum filters, channel 5 of the first conv a
    matched filter of a 3x3 checkerboard (the trigger, pasted in the corner)."""

    def __init__(self, bn: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(1, CHANNELS, 3, padding=1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(CHANNELS) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(CHANNELS) if bn else nn.Identity()
        self.fc = nn.Linear(CHANNELS, 3)
        with torch.no_grad():
            w = torch.randn(CHANNELS, 1, 3, 3, generator=g)
            w -= w.mean(dim=(1, 2, 3), keepdim=True)
            w[PLANTED, 0] = CHECKER  # a matched filter: large only on the checkerboard
            self.conv1.weight.copy_(w)
            self.conv2.weight.copy_(torch.randn(self.conv2.weight.shape, generator=g) * 0.1)
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g) * 0.1)
            for b in (self.conv1.bias, self.conv2.bias, self.fc.bias):
                if b is not None:
                    b.zero_()

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def dim_images(n: int, seed: int, poisoned: float = 0.0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, SIZE, SIZE, generator=g) * 0.3
    images[: int(n * poisoned), :, -3:, -3:] = (CHECKER + 1) / 2  # the first share carries the trigger
    return ImageSet((images * 255).round().to(torch.uint8), torch.randint(0, 3, (n,), generator=g), ("a", "b", "c"))


@pytest.fixture(scope="module")
def models(with_bn_statistics):
    backdoored = with_bn_statistics(Net(), dim_images(800, seed=1, poisoned=0.2))
    benign = with_bn_statistics(Net(), dim_images(800, seed=1))
    return backdoored, benign, dim_images(200, seed=3)


def test_the_planted_neuron_leads_and_the_backdoored_model_scores_higher(models):
    backdoored, benign, clean = models
    bad, good = scan(backdoored, clean), scan(benign, clean)
    assert (bad.suspects[0]["layer"], bad.suspects[0]["channel"]) == ("bn1", PLANTED)
    # log KL and the variance ratio (in this toy the benign KLs are all near 0: their MAD is tiny, their z noisy)
    for statistic in ("logkl_layer_max", "lvr_layer_max", "lvr_model_max"):
        assert bad.statistics[statistic] > good.statistics[statistic] + 1.5, statistic
    threshold = (bad.score + good.score) / 2
    assert scan(backdoored, clean, threshold=threshold).verdict == BACKDOORED
    assert scan(benign, clean, threshold=threshold).verdict == NO_EVIDENCE
    assert bdprune.scan is scan


def test_the_input_model_is_untouched_and_keeps_its_mode(models):
    backdoored, _, clean = models
    before = {k: v.clone() for k, v in backdoored.state_dict().items()}
    backdoored.train()
    try:
        scan(backdoored, clean)
        assert backdoored.training
    finally:
        backdoored.eval()
    assert all(torch.equal(v, backdoored.state_dict()[k]) for k, v in before.items())


def test_a_silenced_neuron_does_not_count(models, with_bn_statistics):
    backdoored, _, clean = models
    pruned = with_bn_statistics(Net(), dim_images(800, seed=1, poisoned=0.2))
    with torch.no_grad():
        pruned.bn1.weight[PLANTED] = 0.0  # how BNP and EP prune ("bn" silencing)
        pruned.bn1.bias[PLANTED] = 0.0
    after = scan(pruned, clean)
    assert all((s["layer"], s["channel"]) != ("bn1", PLANTED) for s in after.suspects)
    assert after.score < scan(backdoored, clean).score
    # a pruned model's verdict carries the warning that its BN statistics are partly stale; an unpruned one's not
    assert any(w.startswith("1 neuron of this model is silenced") for w in after.warnings)
    assert not any("silenced" in w for w in scan(backdoored, clean).warnings)


def test_training_set_adds_ep_evidence_and_the_suspected_samples(models):
    backdoored, _, clean = models
    train = dim_images(800, seed=1, poisoned=0.2)
    result = scan(backdoored, clean, train=train)
    assert result.evidence["train_samples"] == 800
    suspected = set(result.suspected_samples)
    assert len(suspected & set(range(160))) >= 0.9 * 160  # the poisoned samples are the first 160
    assert len(suspected - set(range(160))) <= 0.1 * 160


def test_record_is_one_json_object_without_nan_and_gives_the_exit_status(models):
    backdoored, _, clean = models
    result = scan(backdoored, clean, threshold=0.0)
    record = json.loads(result.to_json())
    assert record["verdict"] == BACKDOORED and record["exit_status"] == 1 and record["threshold"] == 0.0
    assert record["samples"] == len(clean) and record["suspects"][0]["layer"] == "bn1"
    empty = ScanResult(verdict=NO_EVIDENCE, score=math.nan, threshold=1.0, method="bnp", statistic="kl_model_max")
    assert json.loads(empty.to_json())["score"] is None and empty.exit_status == 0
    assert verdict_of(math.nan, 1.0) == NO_EVIDENCE and verdict_of(2.0, 1.0) == BACKDOORED
    assert verdict_of(1.0, 1.0) == NO_EVIDENCE


def test_robust_z_ignores_nan_and_a_layer_too_small_to_judge():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 100.0, math.nan])
    z = robust_z(x)
    assert math.isnan(z[-1]) and z[-2] > 30 and abs(float(z[4]) - 0.0) < 0.5
    assert torch.isnan(robust_z(torch.tensor([1.0, 2.0, 50.0]))).all()


def test_bad_input_is_refused(models):
    backdoored, _, clean = models
    with pytest.raises(InvalidInput, match="needs clean samples"):
        scan(backdoored, None)
    with pytest.raises(InvalidInput, match="needs clean samples"):
        scan(backdoored, clean.subset(torch.arange(0)))
    with pytest.raises(InvalidInput, match="no BatchNorm layer"):
        scan(Net(bn=False).eval(), clean)
    rgb = ImageSet(torch.zeros(8, 3, SIZE, SIZE, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), ("a", "b", "c"))
    with pytest.raises(InvalidInput, match="cannot process images"):
        scan(backdoored, rgb)
    with pytest.raises(InvalidInput, match="unknown statistic"):
        scan(backdoored, clean, statistic="mean")
    with pytest.raises(InvalidInput, match="unknown scan method"):
        scan(backdoored, clean, method="strip")


@pytest.mark.fashion_mnist
def test_the_command_prints_json_and_exits_with_the_verdict(tiny_run, capsys):
    status = main(["scan", str(tiny_run), "--json", "--clean-samples", "30", "--threads", "1"])
    record = json.loads(capsys.readouterr().out)
    assert status == record["exit_status"] == {NO_EVIDENCE: 0, BACKDOORED: 1}[record["verdict"]]
    assert record["samples"] == 30 and record["method"] == "bnp" and record["evidence"] is None
    witness = record["trigger_witness"]  # beside the verdict: read from the model, measured on 6 held-out samples
    assert witness["samples"] == 6 and witness["after"] is None and 0.0 <= witness["before"] <= 100.0
    forced = main(["scan", str(tiny_run), "--json", "--clean-samples", "30", "--threshold=-1e9"])
    assert forced == 1 and json.loads(capsys.readouterr().out)["verdict"] == BACKDOORED
    assert main(
        ["scan", str(tiny_run), "--clean-samples", "30", "--threads", "1", "--use-train", "--train-samples", "300"]
    ) in (0, 1)
    out = capsys.readouterr().out
    assert out.startswith("verdict: ") and "suspected samples:" in out
    assert "trigger witness (not part of the verdict): a trigger read from" in out


@pytest.mark.fashion_mnist
def test_the_command_refuses_bad_input_in_one_line(tiny_run, tmp_path, capsys):
    assert main(["scan", str(tiny_run), "--clean-samples", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bdprune scan: error:")
    assert main(["scan", str(tmp_path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.fashion_mnist
@pytest.mark.parametrize("method", ["bnp", "ep"])
def test_defend_reports_the_verdict_before_and_after_repair(tiny_run, tmp_path, method, capsys):
    out = tmp_path / method
    args = ["defend", str(tiny_run), "--method", method, "--out", str(out), "--quiet", "--no-plots"]
    assert main([*args, "--clean-samples", "60", "--rule", "mad" if method == "bnp" else "zscore"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for when in ("scan_before", "scan_after"):  # EP needs no clean samples; a run brings them for the scan
        assert metrics[when]["verdict"] in (BACKDOORED, NO_EVIDENCE) and metrics[when]["statistic"] == DEFAULT_STATISTIC
    witness = metrics["trigger_witness"]  # read from the suspect, measured on held-out clean samples
    assert witness["samples"] == 12 and 0.0 <= witness["before"] <= 100.0 and 0.0 <= witness["after"] <= 100.0
    printed = capsys.readouterr().out
    assert "scan" in printed.splitlines()[0] and "trigger %" in printed.splitlines()[0]
    assert "trigger witness: a trigger read from the suspect's BN statistics" in printed
