import math

import pytest
import torch
from torch import nn

from bdprune.attacks import create_attack
from bdprune.metrics import attack_success_rate, backdoor_loss, clean_accuracy, per_class_accuracy


class FixedLogits(nn.Module):
    """Predicts a constant class, or the label hidden in the top-left pixel when `from_pixel`."""

    def __init__(self, classes: int, constant: int | None = None):
        super().__init__()
        self.classes, self.constant = classes, constant
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        if self.constant is not None:
            pred = torch.full((len(x),), self.constant, dtype=torch.long)
        else:
            pred = (x[:, 0, 0, 0] * 255).round().long() % self.classes
        return nn.functional.one_hot(pred, self.classes).float() * 10 + self.dummy


def test_accuracy_of_a_constant_model_is_its_class_frequency(make_imageset):
    data = make_imageset(40, (1, 4, 4), 4)
    assert clean_accuracy(FixedLogits(4, constant=1), data) == pytest.approx(0.25)
    per_class = per_class_accuracy(FixedLogits(4, constant=1), data)
    assert per_class == [0.0, 1.0, 0.0, 0.0]


def test_asr_counts_only_samples_outside_the_target_class(make_imageset):
    data = make_imageset(40, (1, 4, 4), 4)
    attack = create_attack("badnets", image_shape=(1, 4, 4), num_classes=4, size=1, pattern="white", target=3)
    # always predicting the target: ASR is 1 even though a quarter of the test set is the target class
    assert attack_success_rate(FixedLogits(4, constant=3), data, attack) == 1.0
    assert attack_success_rate(FixedLogits(4, constant=0), data, attack) == 0.0


def test_backdoor_loss_is_cross_entropy_to_the_target(make_imageset):
    data = make_imageset(12, (1, 4, 4), 4)
    attack = create_attack("badnets", image_shape=(1, 4, 4), num_classes=4, size=1, pattern="white", target=0)
    loss = backdoor_loss(FixedLogits(4, constant=0), data, attack)
    expected = -math.log(math.exp(10) / (math.exp(10) + 3))
    assert loss == pytest.approx(expected, rel=1e-3)  # float32 logits


def test_metrics_restore_the_training_mode(make_imageset):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).train()
    data = make_imageset(8, (1, 4, 4), 4)
    clean_accuracy(model, data)
    assert model.training
    model.eval()
    clean_accuracy(model, data)
    assert not model.training


def test_empty_set_is_an_error(make_imageset):
    data = make_imageset(8, (1, 4, 4), 4).subset([])
    with pytest.raises(ValueError, match="empty"):
        clean_accuracy(FixedLogits(4, 0), data)
