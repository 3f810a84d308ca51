"""Sharpness-aware minimisation steps: SAM (Foret et al., ICLR 2021) and its adaptive form ASAM (Kwon et al.,
ICML 2021), the optimiser FT-SAM fine-tunes with (Zhu et al., "Enhancing Fine-Tuning Based Backdoor Defense
with Sharpness-Aware Minimization", ICCV 2023).

One step: the gradient g at w; the ascent perturbation e = rho T^2 g / ||T g|| with T = |w| + eta for ASAM
(T = 1 for SAM, so e = rho g / ||g||); the gradient at w + e is applied at w by the base optimiser. FT-SAM's
argument is that e falls hardest on the large-norm weights the backdoor relies on, so minimising the loss
under it pushes those weights down while the clean loss stays low.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def sam_step(
    model: nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    rho: float,
    adaptive: bool = True,
    eta: float = 0.01,
) -> torch.Tensor:
    """One (A)SAM update of `model`'s trainable parameters; `loss_fn()` runs the forward pass of the batch.

    Returns the loss at w (before the step), detached.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    with torch.no_grad():
        scaled = []  # T g per parameter
        for p in params:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            scaled.append(((p.abs() + eta) * g) if adaptive else g)
        norm = torch.norm(torch.stack([s.norm() for s in scaled])).clamp_min(1e-12)
        shifts = []
        for p, s in zip(params, scaled, strict=True):
            e = (p.abs() + eta) * s * (rho / norm) if adaptive else s * (rho / norm)  # T^2 g rho / ||T g||
            p.add_(e)
            shifts.append(e)
    optimizer.zero_grad(set_to_none=True)
    loss_fn().backward()
    with torch.no_grad():
        for p, e in zip(params, shifts, strict=True):
            p.sub_(e)
    optimizer.step()
    return loss.detach()
