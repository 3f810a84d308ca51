"""CLP: channel Lipschitzness-based pruning (Zheng, Zhang, Wang, Zhao and Li, ECCV 2022), data-free.

A neuron (conv output channel k followed by BN) computes x -> gamma_k / sigma_k * (W_k * x) + const, so
its Lipschitz constant w.r.t. its input is bounded by the channel Lipschitz constant

    UCLC_k = |gamma_k| / sigma_k * || W_k ||_2,

with W_k the filter reshaped to (in_channels, kh * kw) and ||.||_2 its largest singular value. A trigger
must move the output a lot for a small input change, so backdoor neurons have unusually large UCLC. Per
layer, channels above mean + u * std are pruned (u = 3 as in the authors' code and BackdoorBench).

No sample is read: only the weights and BN running statistics. To trace which conv feeds which BN, one
zero image is run through the model; its shape is `image_shape` if given, else the model's input shape
the defender's data records (`DefenseData.image_shape`), else that of its samples (their values are not
read), else (in_channels, 32, 32).
Differences from the authors' code: sigma_k includes the BN's eps (as the network's own normalisation
does, which keeps dead channels finite), conv-BN pairs are found by tracing the forward pass rather than
by module order, and the layer's statistics ignore non-finite scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidInput
from ..models import model_device
from ..neurons.layers import find_neuron_layers
from ..params import param
from .base import DefenseData, DefenseReport, register_defense
from .pruning import PruningDefense
from .scores import Scores

DEFAULT_SIZE = 32


def channel_lipschitz(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """UCLC of every output channel: (C,) float64 = |gamma| / sqrt(running_var + eps) * spectral norm of W_k."""
    weight = conv.weight.detach().double()  # (C, in / groups, kh, kw)
    finite = torch.isfinite(weight).flatten(1).all(1)  # the SVD fails on a filter holding NaN or inf
    spectral = torch.full((weight.shape[0],), float("nan"), dtype=torch.float64, device=weight.device)
    if finite.any():
        spectral[finite] = torch.linalg.matrix_norm(weight[finite].flatten(2), ord=2)  # (C_finite,)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(spectral)
    sigma = (bn.running_var.detach().double() + bn.eps).sqrt()
    return gamma.abs() / sigma * spectral


@register_defense
@dataclass(eq=False, kw_only=True)
class CLP(PruningDefense):
    """Channel Lipschitzness-based pruning (data-free).

    Args:
        rule: "zscore" (the authors' mean + u * std, u = 3; default), "mad", "iterative" or "count", with its
            parameters beside it.
        silence: how a pruned neuron is silenced (the authors zero BN weight and bias: "bn").
        image_shape: (C, H, W) of the model's input, to trace the conv-BN pairs with a zero image.
        batch_size, progress: unused (no data pass); kept for a uniform interface.

    Example:
        >>> repaired, report = create_defense("clp", u=3).run(model, DefenseData())
    """

    name = "clp"
    needs = frozenset()
    side = "high"

    image_shape: tuple[int, int, int] | None = param(None, ge=1)

    def _example(self, model: nn.Module, data: DefenseData) -> torch.Tensor:
        given = data.clean if data.clean is not None else data.train
        if self.image_shape is not None:
            shape = self.image_shape
        elif data.image_shape is not None:
            shape = data.image_shape
        elif given is not None:
            shape = given.image_shape
        else:
            first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
            if first is None:
                raise InvalidInput("CLP needs convolutions followed by BatchNorm; this model has no Conv2d")
            shape = (first.in_channels, DEFAULT_SIZE, DEFAULT_SIZE)
        return torch.zeros(1, *shape, device=model_device(model))  # only the shape: no sample is read

    def score(self, model: nn.Module, data: DefenseData) -> Scores:
        example = self._example(model, data)
        try:
            layers = find_neuron_layers(model, example, require_bn=True)
        except RuntimeError as exc:
            raise InvalidInput(
                f"the model cannot process a zero image of the data's shape "
                f"({str(exc).splitlines()[0]}); pass data of the model's input shape"
            ) from None
        unscored = {
            l.name: "no conv feeds it directly: CLP's bound needs the conv's weights" for l in layers if l.conv is None
        }
        layers = [l for l in layers if l.conv is not None]
        if not layers:
            raise InvalidInput("CLP needs BatchNorm layers fed by convolutions; this model has none")
        modules = dict(model.named_modules())
        scores, warnings = {}, []
        for layer in layers:
            conv, bn = modules[layer.conv], modules[layer.bn]
            if bn.running_var is None:
                raise InvalidInput(f"{layer.bn} keeps no running statistics: CLP cannot scale its filters")
            score = channel_lipschitz(conv, bn).cpu()
            scores[layer.name] = torch.where(torch.isfinite(score), score, float("nan"))
            bad = int((~torch.isfinite(score)).sum())
            if bad:
                warnings.append(f"{layer.name}: {bad} channel(s) with non-finite UCLC (not scored, not pruned)")
        return Scores(layers, scores, samples=0, warnings=warnings, cache=tuple(example.shape[1:]), unscored=unscored)

    def annotate(self, report: DefenseReport, scores: Scores) -> None:
        report.extra["traced_shape"] = list(scores.cache)  # the zero image's (C, H, W)
