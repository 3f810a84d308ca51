"""A stamp on a whole label (CLA at the paper's rate): read from the training images, confirmed on the suspect,
unlearned by EP's default where no relabelled group is named."""

import pytest
import torch

from bdprune.data.imageset import ImageSet
from bdprune.defenses import EP, DefenseData
from bdprune.defenses import stamp as stamp_module
from bdprune.defenses import unlearn as unlearn_module
from bdprune.defenses.stamp import StampStage, read_stamp
from bdprune.models import create_model
from bdprune.samples.result import SuspectedSamples

LABEL = 2
CORNER = (slice(0, 2), slice(0, 2))  # a 2x2 white square in the top-left corner


def dataset(n=240, stamped=1.0, seed=0):
    """Dim random 16x16 images of four labels; `stamped` of label 2's samples carry the white corner square."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, 16, 16, generator=g) * 0.4 * 255).to(torch.uint8)
    labels = torch.arange(n) % 4
    own = (labels == LABEL).nonzero().flatten()
    carry = own[: round(stamped * len(own))]
    images[carry, :, CORNER[0], CORNER[1]] = 255
    return ImageSet(images, labels, ("a", "b", "c", "d"))


def test_a_stamp_on_every_sample_of_a_label_is_read_with_its_pixels():
    found = read_stamp(dataset())
    assert found is not None and found.label == LABEL
    expected = torch.zeros(1, 16, 16, dtype=torch.bool)
    expected[:, CORNER[0], CORNER[1]] = True
    assert torch.equal(found.mask, expected)
    assert torch.allclose(found.pattern[found.mask], torch.ones(4))
    assert found.z > 3


@pytest.mark.parametrize("stamped", [0.0, 0.5])
def test_no_stamp_or_one_on_half_a_label_is_not_a_whole_label_stamp(stamped):
    assert read_stamp(dataset(stamped=stamped)) is None


def test_the_stamp_goes_on_and_off_and_names_the_samples_that_carry_it():
    data = dataset()
    found = read_stamp(data)
    carriers = found.carriers(data.images)
    assert torch.equal(carriers, data.labels == LABEL)
    on = found.on(data.images)
    assert on.dtype == torch.uint8 and bool(found.carriers(on).all())
    off = found.off(data.images)
    assert not bool(found.carriers(off).any())
    assert torch.equal(off[:, ~found.mask], data.images[:, ~found.mask])  # nothing else is touched


@pytest.fixture
def no_relabelled_group(monkeypatch):
    found = SuspectedSamples("planted", torch.zeros(0, dtype=torch.long), torch.zeros(0))
    monkeypatch.setattr(unlearn_module, "detect_poisoned", lambda model, train, batch_size, features=None: found)


@pytest.fixture
def suspect_sends(monkeypatch):
    """Fix the share of stamped samples the suspect sends to the stamp's label (before the repair)."""

    def send(share):
        real = stamp_module.sent_to
        calls = []

        def fake(model, images, label, batch_size=512):
            calls.append(1)
            return share if len(calls) == 1 else real(model, images, label, batch_size)

        monkeypatch.setattr(stamp_module, "sent_to", fake)

    return send


@pytest.fixture
def small_model(with_bn_statistics):
    """A ResNet-18 of width 4 whose BN statistics were read on the data (an untrained one's diverge)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("resnet18", base_width=4, num_classes=4, in_channels=1)
    return with_bn_statistics(model, dataset(seed=1)).eval()


def test_eps_default_unlearns_a_confirmed_stamp_and_names_its_carriers(no_relabelled_group, suspect_sends, small_model):
    data = dataset()
    suspect_sends(90.0)
    ep = EP(batch_size=64)
    ep_stage = ep.stamp_stage()
    ep.stamp_stage = lambda: StampStage(steps=3, probe=50, budget=100.0, batch_size=64)  # short, always accepted
    assert ep_stage is not None
    model = small_model
    repaired, report = ep.run(model, DefenseData(train=data))
    record = report.extra["stamp"]
    assert record["stamp"]["label"] == LABEL and record["stamp"]["share"] == 90.0
    assert record["guard"]["chosen"] == 0 and "held_out_witness_after" in record
    assert report.extra["unlearn"]["suspected_indices"] == (data.labels == LABEL).nonzero().flatten().tolist()
    assert "the stamp unlearned" in report.warnings[0] and report.num_pruned == 0
    assert "60 of label 2's 60 samples carry a stamp of 4 pixels (0 of other labels' do" in report.warnings[0]
    assert not torch.equal(repaired.conv1.weight, model.conv1.weight)


def test_an_unconfirmed_stamp_leaves_the_model_unchanged_and_says_what_was_read(
    no_relabelled_group, suspect_sends, small_model
):
    data = dataset()
    suspect_sends(10.0)
    model = small_model
    repaired, report = EP(batch_size=64).run(model, DefenseData(train=data))
    assert report.extra["stamp"]["share"] == 10.0 and "no backdoor is confirmed" in report.warnings[0]
    assert all(
        torch.equal(a, b) for a, b in zip(repaired.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_stamp_off_or_pruning_only_never_looks_for_one():
    assert EP(stamp=False).stamp_stage() is None and EP(then="none").stamp_stage() is None
