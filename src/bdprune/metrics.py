"""Evaluation metrics of section 5.1: clean accuracy (ACC), attack success rate (ASR), backdoor loss
(Definition 1), per-class accuracy, and `evaluate`, the one place that reports them together.

All run batched under `torch.inference_mode()` on the model's device, and restore `model.training`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attacks.base import Attack
from .attacks.poison import poison_test_set
from .data.batches import iterate_batches
from .data.imageset import ImageSet
from .errors import InvalidInput
from .models.device import evaluating, model_device

EVAL_BATCH = 512


def predict_logits(model: nn.Module, data: ImageSet, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Logits (N, K) of `model` on every image of `data`, on the CPU."""
    device = model_device(model)
    out = []
    with evaluating(model):
        for images, _, _ in iterate_batches(data, batch_size, device=device):
            out.append(model(images).float().cpu())
    return torch.cat(out) if out else torch.empty(0, data.num_classes)


def _check_nonempty(data: ImageSet, what: str) -> None:
    if len(data) == 0:
        raise InvalidInput(f"cannot compute {what} on an empty set")


def clean_accuracy(model: nn.Module, data: ImageSet, batch_size: int = EVAL_BATCH) -> float:
    """ACC: the fraction of `data` classified correctly, in [0, 1]."""
    _check_nonempty(data, "accuracy")
    logits = predict_logits(model, data, batch_size)
    return (logits.argmax(1) == data.labels.cpu()).float().mean().item()


def attack_success_rate(model: nn.Module, data: ImageSet, attack: Attack, batch_size: int = EVAL_BATCH) -> float:
    """ASR: the fraction of triggered test samples classified as the backdoor target, in [0, 1].

    Only samples whose true label is not the target count (the paper's definition); `data` is the clean
    test set, the trigger is applied here.
    """
    poisoned = poison_test_set(data, attack)
    _check_nonempty(poisoned, "the attack success rate (no sample outside the target class)")
    return clean_accuracy(model, poisoned, batch_size)


def backdoor_loss(model: nn.Module, data: ImageSet, attack: Attack, batch_size: int = EVAL_BATCH) -> float:
    """L_bd (Definition 1): mean cross-entropy between the target labels and the model's output on
    triggered inputs, over the same samples as `attack_success_rate`."""
    poisoned = poison_test_set(data, attack)
    _check_nonempty(poisoned, "the backdoor loss")
    logits = predict_logits(model, poisoned, batch_size)
    return F.cross_entropy(logits, poisoned.labels.cpu()).item()


def per_class_accuracy(model: nn.Module, data: ImageSet, batch_size: int = EVAL_BATCH) -> list[float]:
    """Accuracy on the samples of each class (NaN for a class with no sample), in class order."""
    logits = predict_logits(model, data, batch_size)
    labels = data.labels.cpu()
    correct = (logits.argmax(1) == labels).double()
    total = torch.bincount(labels, minlength=data.num_classes).double()
    hits = torch.bincount(labels, weights=correct, minlength=data.num_classes)
    return (hits / total).tolist()  # 0 / 0 -> nan for an absent class


def evaluate(
    model: nn.Module,
    test: ImageSet,
    attack: Attack | None = None,
    *,
    with_backdoor_loss: bool = False,
    per_class: bool = False,
    batch_size: int = EVAL_BATCH,
) -> dict[str, Any]:
    """ACC on the clean test set and, when the attack is known, ASR, in percent (what every report shows).

    Args:
        model: the network (its mode is restored).
        test: the clean test set.
        attack: the backdoor's attack, or None for ACC only.
        with_backdoor_loss: also the backdoor loss L_bd (nats), from the same triggered logits as the ASR.
        per_class: also the accuracy of each class in percent ("per_class_acc").
    """
    out: dict[str, Any] = {"acc": 100.0 * clean_accuracy(model, test, batch_size)}
    if attack is not None:
        poisoned = poison_test_set(test, attack)
        _check_nonempty(poisoned, "the attack success rate (no sample outside the target class)")
        logits = predict_logits(model, poisoned, batch_size)
        labels = poisoned.labels.cpu()
        out["asr"] = 100.0 * (logits.argmax(1) == labels).float().mean().item()
        if with_backdoor_loss:
            out["backdoor_loss"] = F.cross_entropy(logits, labels).item()
    if per_class:
        out["per_class_acc"] = [100.0 * a for a in per_class_accuracy(model, test, batch_size)]
    return out
