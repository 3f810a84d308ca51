"""Neural Cleanse (the baseline of issue 25) on a hand-set model with a planted trigger: the reversed trigger of
the target is the smallest and sits where the trigger is; the anomaly index flags the target; the defense
unlearns it."""

import math

import pytest
import torch
from torch import nn

from bdprune.data import ImageSet
from bdprune.defenses import DefenseData, create_defense
from bdprune.defenses.trigger_reversal import anomaly_indices, reverse_all
from bdprune.detection import scan

SIZE, CLASSES = 12, 10


class Rows(nn.Module):
    """Class k (1..9) is read from the brightness of row k - 1 (12 pixels); class 0, the backdoor's target,
    from the 2 x 2 bottom-right corner (4 pixels): its trigger is far smaller than any other class's."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.full((CLASSES,), 10.0))  # something for the unlearning to train

    def forward(self, x):
        rows = x[:, 0, : CLASSES - 1].mean(2)  # (N, 9): each row's brightness
        corner = x[:, 0, -2:, -2:].mean((1, 2))[:, None]
        return self.gain * (torch.cat([corner, rows], 1) - 0.5)


def clean_images(n: int = 200, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, SIZE, SIZE, generator=g) * 0.2
    labels = torch.randint(1, CLASSES, (n,), generator=g)
    images[torch.arange(n), 0, labels - 1] = 0.9  # the label's row is bright
    return ImageSet(images, labels, tuple(str(i) for i in range(CLASSES)))


@pytest.fixture(scope="module")
def reversed_triggers():
    return reverse_all(Rows(), clean_images(), steps=150, batch_size=16)


def test_the_target_needs_the_smallest_trigger_and_it_sits_on_the_corner(reversed_triggers):
    norms = [t.norm for t in reversed_triggers]
    assert min(range(CLASSES), key=lambda y: norms[y]) == 0
    target = reversed_triggers[0]
    assert target.success >= 0.99 and target.norm < 6
    assert target.mask[0, -2:, -2:].sum() > 0.7 * target.mask.sum(), "the mask lies on the trigger's corner"
    assert all(norms[y] > 8 for y in range(1, CLASSES)), "a row takes about 12 pixels"


def test_anomaly_index_flags_the_target_only(reversed_triggers):
    index = anomaly_indices([t.norm for t in reversed_triggers])
    assert index[0] > 2 and all(i <= 2 for i in index[1:])
    assert math.isnan(anomaly_indices([3.0, 10.0, 10.0, 10.0, 10.0])[0])  # a MAD of 0: undefined, no division
    assert anomaly_indices([1.0, 2.0, 3.0])[0] == pytest.approx(1 / 1.4826)


def test_scan_method_nc_gives_the_verdict_and_the_suspected_target():
    result = scan(Rows(), clean_images(), method="nc", nc_options={"steps": 150, "batch_size": 16})
    assert result.verdict == "backdoored" and result.statistic == "anomaly_index" and result.threshold == 2.0
    assert result.suspects[0]["target"] == 0


def test_the_defense_flags_the_target_and_unlearns_its_trigger():
    model, clean = Rows(), clean_images()
    repaired, report = create_defense(
        "nc", iterations=150, reverse_batch_size=16, epochs=30, lr=1.0, augment=False
    ).run(model, DefenseData(clean=clean))
    assert report.extra["flagged"] == [0] and report.extra["history"]
    stamped = clean.float_images().clone()
    stamped[:, :, -2:, -2:] = 1.0  # the real trigger, on samples of other classes
    before = (model(stamped).argmax(1) == 0).float().mean()
    after = (repaired(stamped).argmax(1) == 0).float().mean()
    assert before == 1.0 and after < 0.5
    assert torch.equal(model.gain, torch.full((CLASSES,), 10.0)), "the input model is untouched"
