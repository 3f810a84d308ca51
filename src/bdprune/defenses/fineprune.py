"""FP: fine-pruning (Liu, Dolan-Gavitt and Garg, RAID 2018), a baseline of section 5.1.

Backdoor behaviour tends to hide in neurons that clean inputs leave dormant. Fine-pruning ranks the
channels of the last convolutional layer by their mean activation on clean data, prunes them in
increasing order (dormant first) while clean accuracy holds, then fine-tunes on the clean data.

Choices, and why:

* "The last convolutional layer" is read where the classifier sees it: the input of the network's last
  `nn.Linear` (for our ResNets, the pooled output channels of the last stage, after the residual sum and
  ReLU; BackdoorBench's FP reads the same tensor). Pruning a channel zeroes its column of the classifier,
  which removes it exactly; during fine-tuning the column is kept at zero.
* The stopping rule uses only the defender's clean samples: channels are pruned one at a time, in order,
  as long as the accuracy on those samples stays within `tolerance` (relative, default 0.1 as in
  BackdoorBench's `acc_ratio`) of the unpruned accuracy; the first step that breaks it stops the pruning.
  BackdoorBench measures this accuracy (and logs ASR) on the test set; a defender has neither.
  Pruning does not train, so the same samples are unseen by the pruned model when the rule is applied.
* Because only the classifier changes, the features are computed once and every pruning step is
  evaluated on them exactly, at no extra cost.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import iterate_batches
from ..errors import InvalidInput
from ..models import model_device
from ..models.device import evaluating
from ..params import param
from .base import DefenseData, DefenseReport, register_defense
from .tuning import FineTuned, fine_tune, threshold_report


def last_linear(model: nn.Module, example: torch.Tensor) -> str:
    """The dotted name of the last `nn.Linear` the forward pass runs (the classifier)."""
    names = {m: n for n, m in model.named_modules()}
    seen: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, _i, _o: seen.append(names[mod]))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        with evaluating(model):
            model(example)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise InvalidInput(
            "fine-pruning needs a final nn.Linear classifier whose input channels it can prune; this model has none"
        )
    return seen[-1]


def classifier_inputs(model: nn.Module, name: str, data, batch_size: int) -> torch.Tensor:
    """The input (N, C) of module `name` on every sample of `data`, on the CPU."""
    module = dict(model.named_modules())[name]
    out: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, inputs: out.append(inputs[0].detach().float().cpu()))
    try:
        with evaluating(model):
            for images, _, _ in iterate_batches(data, batch_size, device=model_device(model)):
                model(images)
    finally:
        handle.remove()
    features = torch.cat(out)
    if features.ndim != 2:
        raise InvalidInput(f"the input of {name} has shape {tuple(features.shape[1:])}; fine-pruning expects (N, C)")
    return features


def pruning_curve(
    features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, order: torch.Tensor
) -> torch.Tensor:
    """Accuracy of the classifier after pruning the first k channels of `order`, for k = 0 .. C.

    Args:
        features: (N, C) classifier inputs; labels: (N,); weight: (K, C); bias: (K,) or None.
        order: (C,) channels in pruning order.
    Returns:
        (C + 1,) accuracies in [0, 1].
    """
    features, weight = features.double(), weight.double().cpu()
    logits = features @ weight.T + (bias.double().cpu() if bias is not None else 0.0)  # (N, K)
    accs = [(logits.argmax(1) == labels).double().mean()]
    for c in order.tolist():
        logits = logits - features[:, c : c + 1] * weight[:, c][None, :]  # remove channel c's contribution
        accs.append((logits.argmax(1) == labels).double().mean())
    return torch.stack(accs)


@register_defense
@dataclass(eq=False, kw_only=True)
class FP(FineTuned):
    """Fine-pruning.

    Args:
        tolerance: largest relative drop of the clean-sample accuracy allowed while pruning.
        max_ratio: never prune more than this fraction of the channels.
        epochs, lr, train_batch_size, weight_decay, augment: the fine-tuning after pruning (epochs 0: none).
        seed: seed of the fine-tuning's shuffling and augmentation.
        batch_size: samples per forward pass when reading activations.
        progress: show a progress bar.

    Example:
        >>> repaired, report = FP().run(model, DefenseData(clean=clean_500))
        >>> report.pruned  # {"linear": [dormant channels ...]}
    """

    name = "fp"

    tolerance: float = param(0.1, ge=0.0, lt=1.0)
    max_ratio: float = param(0.95, ge=0.0, le=1.0)

    def run(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        start = time.perf_counter()
        clean = data.require("clean", "FP")
        device = model_device(model)
        name = last_linear(model, clean.float_images()[:1].to(device))
        head = dict(model.named_modules())[name]
        features = classifier_inputs(model, name, clean, self.batch_size)
        activation = features.double().mean(0)  # (C,) mean activation of each channel on clean data
        order = torch.sort(activation, stable=True).indices  # dormant first
        curve = pruning_curve(
            features,
            clean.labels.cpu(),
            head.weight.detach(),
            head.bias.detach() if head.bias is not None else None,
            order,
        )
        limit = int(self.max_ratio * len(order))
        ok = (curve[0] - curve) <= self.tolerance * curve[0]  # relative drop within tolerance
        count = 0
        while count < limit and bool(ok[count + 1]):
            count += 1
        pruned = order[:count].tolist()

        repaired = copy.deepcopy(model)
        column_mask = torch.ones(head.in_features, device=device)
        column_mask[pruned] = 0.0
        new_head = dict(repaired.named_modules())[name]

        def zero_pruned() -> None:
            with torch.no_grad():
                new_head.weight.mul_(column_mask)

        def masked_loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, _positions) -> torch.Tensor:
            zero_pruned()  # keep the pruned channels out of every step's forward pass
            return F.cross_entropy(net(images), labels)

        zero_pruned()
        history = fine_tune(
            repaired, clean, self.tuning(), seed=self.seed, loss_fn=masked_loss, progress=self.progress, desc="FP"
        )
        zero_pruned()
        repaired.eval()
        threshold = float(activation[order[count - 1]]) if count else None
        layer = threshold_report(
            name,
            None,
            activation,
            threshold,
            pruned,
            note=None if count < limit else f"stopped at max_ratio = {self.max_ratio}",
            extra={"clean_accuracy_curve": curve.tolist(), "order": order.tolist()},
        )
        report = DefenseReport(
            method=self.name,
            config=self.params(),
            layers=[layer],
            samples=len(clean),
            seconds=time.perf_counter() - start,
            extra={
                "history": history,
                "clean_accuracy_before": float(curve[0]),
                "clean_accuracy_pruned": float(curve[count]),
            },
        )
        return repaired, report
