"""The trigger witness (`bdprune.detection.witness`): a trigger read from the suspect, measured on held-out
clean samples through the suspect and the repaired model."""

import pytest
import torch
from torch import nn

from bdprune.data import ImageSet
from bdprune.defenses.synthesis import SynthesisedTrigger, TriggerStage
from bdprune.detection.witness import read_witness, witness_line
from bdprune.errors import InvalidInput
from bdprune.repair import witness_record

LEVELS = torch.tensor([0.1, 0.2, 0.3, 0.4])  # class c: a flat image at LEVELS[c]


def flat_images(n: int) -> ImageSet:
    labels = torch.arange(n) % 4
    images = (LEVELS[labels] * 255).round().to(torch.uint8)[:, None, None, None].expand(n, 1, 6, 6).contiguous()
    return ImageSet(images, labels, ("a", "b", "c", "d"), name="flat")


class ByLevel(nn.Module):
    """Predicts the class whose level is nearest the image's mean; `backdoor`: a mean above 0.55 is class 1."""

    def __init__(self, backdoor: bool):
        super().__init__()
        self.backdoor = backdoor

    def forward(self, x):
        level = x.mean(dim=(1, 2, 3))
        logits = -(level[:, None] - LEVELS.to(x.device)[None]).abs()
        if self.backdoor:
            logits[level > 0.55, 1] = 1.0
        return logits


@pytest.fixture
def brightening(monkeypatch):
    """BNP's trigger search replaced by one that finds +0.5 brightness, sending everything to class 1; the
    samples it was given are recorded."""
    seen = []

    def read(self, suspect, clean):
        seen.append(clean)
        found = SynthesisedTrigger(torch.full((1, 1, 6, 6), 0.5), {}, [0, len(clean), 0, 0], 1, 100.0, self.radius)
        return found, [found]

    monkeypatch.setattr(TriggerStage, "read", read)
    return seen


def test_the_witness_measures_before_and_after_on_samples_the_trigger_was_not_read_from(brightening):
    clean = flat_images(40)
    witness = read_witness(ByLevel(backdoor=True), clean, held_out=100)
    assert witness.samples == 8 and len(brightening[0]) == 32  # a fifth held out, at most `held_out`
    assert witness.confirmed and witness.top == 1 and witness.before == 100.0  # every other label sent to class 1
    assert witness.measure(ByLevel(backdoor=False)) == 0.0 and witness.after == 0.0  # the repair ignores it
    record = witness.to_dict()
    assert record == {"share": 100.0, "top": 1, "confirmed": True, "threshold": 50.0, "samples": 8,
                      "before": 100.0, "after": 0.0}  # fmt: skip
    assert "before 100.0 %, after the repair 0.0 %" in witness_line(record)


def test_a_trigger_under_the_confirmation_share_is_reported_as_saying_nothing(brightening):
    witness = read_witness(ByLevel(backdoor=True), flat_images(40), stage=TriggerStage(confirm_share=101.0))
    assert not witness.confirmed
    assert "no trigger confirmed" in witness_line(witness.to_dict())


def test_a_model_without_bn_statistics_or_too_few_samples_gives_a_reason_not_a_number():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(36, 4))
    record = witness_record(plain, plain, flat_images(40))
    assert set(record) == {"skipped"} and "BN" in record["skipped"]
    assert witness_line(record).startswith("not read: no trigger to read")
    with pytest.raises(InvalidInput, match="at least 5"):
        read_witness(plain, flat_images(4))


def test_a_trigger_the_defense_read_from_the_same_samples_is_reused_not_read_again(brightening):
    clean = flat_images(40)
    first = read_witness(ByLevel(backdoor=True), clean, held_out=100)
    rest = brightening[0]
    dim = SynthesisedTrigger(torch.full((1, 1, 6, 6), -0.5), {}, [40, 0, 0, 0], 0, 70.0, 0.2)  # not the search's
    again = read_witness(ByLevel(backdoor=True), clean, held_out=100, read={"trigger": (dim, [dim]), "clean": rest})
    assert len(brightening) == 1  # no second search
    assert (again.share, again.top, again.before) == (70.0, 0, 100.0)  # darkening sends every other label to 0
    assert first.share == 100.0
    other = flat_images(45)  # another split: the defense's trigger was read from other samples, so it is read again
    read_witness(ByLevel(backdoor=True), other, held_out=100, read={"trigger": (dim, [dim]), "clean": rest})
    assert len(brightening) == 2
