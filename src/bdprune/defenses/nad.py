"""NAD: neural attention distillation (Li, Lyu, Koren, Lyu, Li and Ma, ICLR 2021), a baseline of section 5.1.

A teacher is obtained by fine-tuning the suspicious model on the clean samples; then the suspicious model
(the student) is fine-tuned on the same samples with cross-entropy plus an attention-distillation loss that
pulls its attention maps towards the teacher's at the outputs of the last three stages:

    A(F) = vec(sum_c |F_c|^p) / || vec(sum_c |F_c|^p) ||_2,   L_AT = sum_i beta_i * mean((A(F_i^s) - A(F_i^t))^2)

with p = 2 and beta = (500, 1000, 1000) as in the authors' code (their attention transfer module). The
teacher is trained for 10 epochs (the authors' and BackdoorBench's `te_epochs`), the student for 20 with
the same recipe as FT (SGD lr 0.01, cosine; BackdoorBench runs 100 epochs, the authors 20 at lr 0.1 with
step decay). Nothing is chosen on test data: epochs are fixed, the last student is returned.

The attention layers are found by name: `layer2..layer4` (ResNet, PreAct-ResNet, torchvision ResNets) or
`block1..block3` (WRN); pass `attention_layers` for other models. Their outputs are read by forward hooks.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInput
from ..params import param
from .base import DefenseData, DefenseReport, register_defense
from .tuning import FineTuned, fine_tune

STAGE_NAMES = (("layer2", "layer3", "layer4"), ("block1", "block2", "block3"))


def attention_map(features: torch.Tensor, p: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """(N, C, H, W) -> (N, H * W): sum over channels of |F|^p, L2-normalised per sample."""
    am = features.abs().pow(p).sum(dim=1).flatten(1)  # (N, H * W)
    return am / (am.norm(dim=1, keepdim=True) + eps)


def attention_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], betas: Sequence[float], p: float = 2.0
) -> torch.Tensor:
    """sum_i beta_i * mean squared difference of the attention maps of student and teacher features."""
    if not len(student) == len(teacher) == len(betas):
        raise InvalidInput(f"{len(student)} student and {len(teacher)} teacher feature maps for {len(betas)} betas")
    terms = [b * F.mse_loss(attention_map(s, p), attention_map(t, p)) for s, t, b in zip(student, teacher, betas)]
    return torch.stack(terms).sum()


def find_stages(model: nn.Module) -> list[str]:
    """Dotted names of the last three stages of a ResNet-like model."""
    names = {n for n, _ in model.named_modules()}
    parents = sorted({n.rpartition(".")[0] for n in names}, key=lambda n: n.count("."))
    for stages in STAGE_NAMES:
        for parent in [""] + [p for p in parents if p]:
            full = [f"{parent}.{s}" if parent else s for s in stages]
            if all(f in names for f in full):
                return full
    raise InvalidInput(
        "NAD could not find the stages to distil (layer2..layer4 or block1..block3); pass "
        "attention_layers=[...] with the dotted names of three feature-map modules"
    )


class _Recorder:
    """Forward hooks keeping the latest output of each named module (removed by `close`)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise InvalidInput(f"no module named {missing} in the model")
        self.outputs: dict[str, torch.Tensor] = {}
        self.names = list(names)
        self.handles = [
            modules[n].register_forward_hook(lambda _m, _i, out, n=n: self.outputs.__setitem__(n, out)) for n in names
        ]

    def features(self) -> list[torch.Tensor]:
        return [self.outputs[n] for n in self.names]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@register_defense
@dataclass(eq=False, kw_only=True)
class NAD(FineTuned):
    """Neural attention distillation.

    Args:
        teacher_epochs: fine-tuning epochs of the teacher.
        epochs: distillation epochs of the student.
        lr, train_batch_size, weight_decay, augment: the SGD recipe of both phases.
        betas: weight of the attention loss at each attention layer.
        p: power of the attention map.
        attention_layers: dotted module names whose outputs are distilled (default: found by `find_stages`).
        seed: seed of shuffling and augmentation.
        batch_size: unused (no statistics pass); kept for a uniform interface.
        progress: show a progress bar.

    Example:
        >>> repaired, report = NAD().run(model, DefenseData(clean=clean_500))
    """

    name = "nad"

    teacher_epochs: int = param(10, ge=0)
    betas: tuple[float, ...] = param((500.0, 1000.0, 1000.0), ge=0.0)
    p: float = param(2.0, gt=0.0)
    attention_layers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention_layers is not None and len(self.attention_layers) != len(self.betas):
            raise InvalidInput(f"{len(self.attention_layers)} attention layers but {len(self.betas)} betas")

    def run(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        start = time.perf_counter()
        clean = data.require("clean", "NAD")
        names = list(self.attention_layers or find_stages(model))
        if len(names) != len(self.betas):
            raise InvalidInput(f"{len(names)} attention layers but {len(self.betas)} betas")
        teacher = copy.deepcopy(model)
        teacher_history = fine_tune(
            teacher, clean, self.tuning(self.teacher_epochs), seed=self.seed, progress=self.progress, desc="NAD teacher"
        )
        teacher.eval()
        for weight in teacher.parameters():
            weight.requires_grad_(False)
        student = copy.deepcopy(model)
        seen_teacher, seen_student = _Recorder(teacher, names), _Recorder(student, names)
        parts = {"ce": 0.0, "at": 0.0, "n": 0}

        def distillation_loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, _positions) -> torch.Tensor:
            with torch.no_grad():
                teacher(images)
            ce = F.cross_entropy(net(images), labels)
            at = attention_loss(seen_student.features(), seen_teacher.features(), self.betas, self.p)
            parts["ce"] += ce.item() * len(labels)
            parts["at"] += at.item() * len(labels)
            parts["n"] += len(labels)
            return ce + at

        try:
            history = fine_tune(
                student,
                clean,
                self.tuning(),
                seed=self.seed + 1,
                loss_fn=distillation_loss,
                progress=self.progress,
                desc="NAD student",
            )
        finally:
            seen_teacher.close()
            seen_student.close()
        student.eval()
        report = DefenseReport(
            method=self.name,
            config=self.params(),
            layers=[],
            samples=len(clean),
            seconds=time.perf_counter() - start,
            extra={
                "teacher_history": teacher_history,
                "history": history,
                "attention_layers": names,
                "mean_ce": parts["ce"] / max(parts["n"], 1),
                "mean_attention_loss": parts["at"] / max(parts["n"], 1),
            },
        )
        return student, report
