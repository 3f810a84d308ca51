"""Evaluation metrics of section 5.1: clean accuracy (ACC), attack success rate (ASR), backdoor loss
(Definition 1), and per-class accuracy.

All run batched under `torch.inference_mode()` on the model's device, and restore `model.training`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .attacks.base import Attack
from .attacks.poison import poison_test_set
from .data.batches import iterate_batches
from .data.imageset import ImageSet

EVAL_BATCH = 512


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode and under inference mode for the block, then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


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
        raise ValueError(f"cannot compute {what} on an empty set")


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
