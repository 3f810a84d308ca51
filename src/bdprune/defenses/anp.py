"""ANP: adversarial neuron pruning (Wu and Wang, NeurIPS 2021), a baseline of section 5.1.

Backdoor neurons are the ones whose small perturbation most changes the output. Every neuron (a BN
channel) gets a mask m in [0, 1] multiplying its BN weight; the weight and bias are also perturbed
multiplicatively, gamma * (m + d) and beta * (1 + e) with |d|, |e| <= eps. On clean batches ANP alternates

1. one signed-gradient ascent step on (d, e) from a uniform random start, maximising the cross-entropy;
2. one SGD step (lr 0.2, momentum 0.9) on m minimising alpha * CE(unperturbed) + (1 - alpha) * CE(perturbed),
   then clipping m to [0, 1],

and finally prunes the neurons whose mask fell below a threshold. Defaults are the authors' and
BackdoorBench's (eps 0.4, 1 step, alpha 0.2, batch 128, threshold 0.2) except the number of iterations
(500 here, 2000 theirs; see below).

Choices, and why:

* The pruning threshold is the fixed 0.2. BackdoorBench scans thresholds and picks one with test ACC and
  ASR (its issue #35); a defender has neither, so none is scanned.
* As in the authors' code the masked model runs in train mode (BN uses batch statistics), on a private
  copy, so the input's running statistics never change; the masks and noise enter through
  `torch.func.functional_call` with replaced BN parameters, so the model is never rewritten.
* A pruned neuron has its BN weight zeroed (`silence="bn-weight"`), which is exactly mask 0 in ANP's
  parametrisation; `silence="bn"` also zeroes the bias.
* `iterations` defaults to 500, not the authors' 2000: one iteration (three forward and two backward
  passes of 128 images) takes about 0.55 s on one core for the CPU preset's ResNet-18 (width 16), so
  2000 would take about 18 minutes there. Pass `iterations=2000` for the authors' setting (e.g. on a GPU).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

from ..data.batches import iterate_batches
from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..models import model_device
from ..neurons.mask import SILENCE_MODES, ChannelMask, pruned_copy
from ..params import param
from .base import Defense, DefenseData, DefenseReport, register_defense
from .scores import neuron_layers
from .tuning import threshold_report


def _endless(
    data: ImageSet, batch_size: int, device: torch.device, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches forever (a new order each pass), dropping a short last batch when possible."""
    drop_last = len(data) >= batch_size
    while True:
        for images, labels, _ in iterate_batches(
            data, batch_size, device=device, shuffle=True, generator=generator, drop_last=drop_last
        ):
            yield images, labels


@register_defense
@dataclass(eq=False, kw_only=True)
class ANP(Defense):
    """Adversarial neuron pruning.

    Args:
        eps: bound of the multiplicative perturbation of BN weight and bias.
        steps: signed-gradient steps of the perturbation per iteration (step size eps / steps).
        alpha: weight of the unperturbed loss (1 - alpha on the perturbed one).
        iterations: mask updates (the authors: 2000).
        mask_lr: learning rate of the masks' SGD (momentum 0.9).
        threshold: neurons whose final mask is below it are pruned.
        train_batch_size: clean samples per iteration.
        silence: "bn-weight" (ANP's own: mask 0 zeroes gamma), "bn" or "conv".
        seed: seed of batches and random perturbation starts.
        batch_size: samples per forward pass when finding the layers (kept for a uniform interface).
        progress: show a progress bar.

    Example:
        >>> repaired, report = ANP(iterations=2000).run(model, DefenseData(clean=clean_500))
        >>> report.extra["masks"]["layer4.1.bn2"]
    """

    name = "anp"

    eps: float = param(0.4, ge=0.0)
    steps: int = param(1, ge=1)
    alpha: float = param(0.2, ge=0.0, le=1.0)
    iterations: int = param(500, ge=0)
    mask_lr: float = param(0.2, gt=0.0)
    threshold: float = param(0.2, ge=0.0)
    train_batch_size: int = param(128, ge=1)
    silence: str = param("bn-weight", choices=SILENCE_MODES)
    seed: int = 0

    def optimize_masks(self, model: nn.Module, clean: ImageSet, bn_names: dict[str, str]) -> tuple[dict, list]:
        """Run ANP's mask optimisation on a private copy of `model`.

        Args:
            bn_names: neuron-layer name -> dotted BN name.
        Returns:
            (layer name -> (C,) final masks on the CPU, loss record every 100 iterations)
        """
        device = model_device(model)
        work = copy.deepcopy(model).train()  # the authors' code optimises in train mode (batch statistics)
        for weight in work.parameters():
            weight.requires_grad_(False)
        modules = dict(work.named_modules())
        bns = {name: modules[bn] for name, bn in bn_names.items()}
        masks = {n: torch.ones(bn.num_features, device=device, requires_grad=True) for n, bn in bns.items()}
        noise_w = {n: torch.zeros(bn.num_features, device=device, requires_grad=True) for n, bn in bns.items()}
        noise_b = {n: torch.zeros(bn.num_features, device=device, requires_grad=True) for n, bn in bns.items()}
        mask_opt = torch.optim.SGD(list(masks.values()), lr=self.mask_lr, momentum=0.9)
        noise_params = list(noise_w.values()) + list(noise_b.values())
        noise_opt = torch.optim.SGD(noise_params, lr=self.eps / self.steps)
        generator = torch.Generator().manual_seed(self.seed)

        def forward(images: torch.Tensor, perturbed: bool) -> torch.Tensor:
            params = {}
            for n, bn in bns.items():
                scale = masks[n] + noise_w[n] if perturbed else masks[n]
                params[f"{bn_names[n]}.weight"] = bn.weight * scale
                if perturbed and bn.bias is not None:
                    params[f"{bn_names[n]}.bias"] = bn.bias * (1.0 + noise_b[n])
            return functional_call(work, params, (images,))

        log, batches = [], _endless(clean, self.train_batch_size, device, generator)
        with tqdm(total=self.iterations, desc="ANP", unit="it", disable=not self.progress, leave=False) as bar:
            for it in range(self.iterations):
                images, labels = next(batches)
                if self.eps > 0:
                    with torch.no_grad():  # random start in the eps-box, drawn on the CPU generator
                        for tensor in noise_params:
                            start = (torch.rand(tensor.shape, generator=generator) * 2 - 1) * self.eps
                            tensor.copy_(start.to(device))
                    for _ in range(self.steps):
                        noise_opt.zero_grad(set_to_none=True)
                        (-F.cross_entropy(forward(images, True), labels)).backward()
                        with torch.no_grad():
                            for tensor in noise_params:
                                tensor.grad.sign_()
                        noise_opt.step()
                        with torch.no_grad():
                            for tensor in noise_params:
                                tensor.clamp_(-self.eps, self.eps)
                mask_opt.zero_grad(set_to_none=True)
                natural = F.cross_entropy(forward(images, False), labels)
                robust = F.cross_entropy(forward(images, True), labels) if self.eps > 0 else natural.new_zeros(())
                loss = self.alpha * natural + (1 - self.alpha) * robust
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"ANP's loss became {loss.item()} at iteration {it + 1}; lower mask_lr")
                loss.backward()
                mask_opt.step()
                with torch.no_grad():
                    for tensor in masks.values():
                        tensor.clamp_(0.0, 1.0)
                bar.set_postfix(loss=loss.item(), refresh=False)
                bar.update(1)
                if (it + 1) % 100 == 0 or it + 1 == self.iterations:
                    log.append({"iteration": it + 1, "natural": natural.item(), "robust": robust.item()})
        return {n: m.detach().cpu() for n, m in masks.items()}, log

    def run(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        start = time.perf_counter()
        clean = data.require("clean", "ANP")
        layers = neuron_layers(model, clean, require_bn=True)
        modules = dict(model.named_modules())
        layers = [l for l in layers if modules[l.bn].weight is not None]
        if not layers:
            raise InvalidInput("ANP masks BatchNorm weights, and this model has no affine BatchNorm fed by a conv")
        masks, log = self.optimize_masks(model, clean, {l.name: l.bn for l in layers})
        pruned = {l.name: (masks[l.name] < self.threshold).nonzero().flatten().tolist() for l in layers}
        repaired = pruned_copy(model, layers, ChannelMask(pruned), self.silence)
        reports = [threshold_report(l.name, l.conv, masks[l.name], self.threshold, pruned[l.name]) for l in layers]
        report = DefenseReport(
            method=self.name,
            config=self.params(),
            layers=reports,
            samples=len(clean),
            seconds=time.perf_counter() - start,
            extra={"history": log, "masks": {n: m.tolist() for n, m in masks.items()}},
        )
        return repaired, report
