"""A whole label stamped: the clean-label attack that poisons every training sample of its class (EP's setting).

CLA at the paper's 10 % rate poisons a tenth of the training set, and since it may only touch the target class,
that is the whole class: every T-shirt carries the four-corner trigger (and its adversarial noise). Nothing is
relabelled, so the detector of relabelled groups (`bdprune.samples.detector`) names nothing, and the group
the consensus rule finds is a whole class, which it must not prune. On the cpu preset such a model never
predicts the class without the stamp (the development model of seed 30: T-shirt test accuracy 0.0, ACC 83.41
against a clean model's 91.45).

What the training set shows instead: a fixed stamp is the same pixels in every sample of one label, and absent
from the others. `read_stamp`, per label L and pixel, the gap between L's mean and the other labels' mean over
their spreads, |mean_L - mean_rest| / (std_L + std_rest + 0.05); the pixels above `min_z` form the stamp's
mask, L's mean there its pattern. It is confirmed only when the suspect sends at least `confirm_share` percent
of other labels' samples carrying it to L (the trigger's own test, as in BNP's trigger stage).

`StampStage.run` then repairs: the stamp is put on other labels' samples, whose label L is unlearned
(`unlearn_fine_tune`'s forgetting term) while the model is fine-tuned on the training set with the stamp
taken off L's own samples (its pixels set to the other labels' mean there), so L is learnt from what its
samples show; guarded on held-out training samples (stamps taken off too) as EP's unlearning is. The share of
held-out stamped samples still sent to L is the repair's witness, measured without the test set.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..metrics import predict_logits
from .holdout import DEFAULT_BUDGET, first_within_budget, split_holdout
from .unlearning import unlearn_fine_tune

SPREAD_FLOOR = 0.05  # added to the spreads, in image units: a constant background pixel is no stamp
CHUNK = 4096  # samples summed at a time


@dataclass
class Stamp:
    """A pattern carried by every training sample of `label`: its pixels (`mask`, (C, H, W) bool), their values
    there (`pattern`, (C, H, W) float in [0, 1]), the other labels' mean there (`background`), the strongest
    pixel's statistic `z`, and the share of stamped other-label samples the suspect sends to `label`."""

    label: int
    mask: torch.Tensor
    pattern: torch.Tensor
    background: torch.Tensor
    z: float
    share: float | None = None

    def on(self, images: torch.Tensor) -> torch.Tensor:
        """`images` (uint8 or float in [0, 1]) with the stamp put on, in their own dtype."""
        return self._paint(images, self.pattern)

    def off(self, images: torch.Tensor) -> torch.Tensor:
        """`images` with the stamp's pixels set to the other labels' mean there."""
        return self._paint(images, self.background)

    def _paint(self, images: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        values = values.to(images.device)
        if images.dtype == torch.uint8:
            values = (values * 255).round().to(torch.uint8)
        return torch.where(self.mask.to(images.device), values.to(images.dtype), images)

    def carriers(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the images whose stamp pixels lie nearer the pattern than the background (mean distance),
        read `CHUNK` at a time: the samples that carry the stamp."""
        mask = self.mask.flatten()
        pattern, background = self.pattern.flatten()[mask], self.background.flatten()[mask]
        out = []
        for start in range(0, len(images), CHUNK):
            x = images[start : start + CHUNK].cpu().flatten(1)[:, mask].float()
            x = x / 255 if images.dtype == torch.uint8 else x
            out.append((x - pattern).abs().mean(1) < (x - background).abs().mean(1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)

    def to_dict(self) -> dict[str, Any]:
        where = self.mask.any(0).nonzero().tolist()
        return {"label": self.label, "pixels": int(self.mask.sum()), "where": where[:64], "z": self.z,
                "share": self.share}  # fmt: skip


def label_moments(data: ImageSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts (K,), sums (K, C, H, W), sums of squares (K, C, H, W)) of the images in [0, 1] per label, float64,
    read `CHUNK` samples at a time."""
    k = len(data.classes)
    shape = tuple(data.images.shape[1:])
    sums = torch.zeros((k, *shape), dtype=torch.float64)
    squares = torch.zeros_like(sums)
    for start in range(0, len(data), CHUNK):
        x = data.images[start : start + CHUNK].cpu().double()
        x = x / 255 if data.images.dtype == torch.uint8 else x
        y = data.labels[start : start + CHUNK].cpu()
        sums.index_add_(0, y, x)
        squares.index_add_(0, y, x * x)
    counts = torch.bincount(data.labels.cpu(), minlength=k).double()
    return counts, sums, squares


def read_stamp(data: ImageSet, *, min_z: float = 3.0) -> Stamp | None:
    """The label whose samples share pixels no other label has (see the module): the label with the largest
    statistic, if some pixel of it exceeds `min_z`; None otherwise (also for fewer than two labels present)."""
    counts, sums, squares = label_moments(data)
    if int((counts > 1).sum()) < 2:
        return None
    best: Stamp | None = None
    total, total_sq, n = sums.sum(0), squares.sum(0), counts.sum()
    for label in (counts > 1).nonzero().flatten().tolist():
        n_l, n_r = counts[label], n - counts[label]
        mean_l, mean_r = sums[label] / n_l, (total - sums[label]) / n_r
        std_l = (squares[label] / n_l - mean_l**2).clamp(min=0).sqrt()
        std_r = ((total_sq - squares[label]) / n_r - mean_r**2).clamp(min=0).sqrt()
        z = (mean_l - mean_r).abs() / (std_l + std_r + SPREAD_FLOOR)
        top = float(z.max())
        if top > min_z and (best is None or top > best.z):
            mask = z > min_z
            best = Stamp(label, mask, mean_l.float(), mean_r.float(), top)
    return best


def sent_to(model: nn.Module, images: torch.Tensor, label: int, batch_size: int = 512) -> float:
    """Percentage of `images` (uint8 or float) that `model` classifies as `label`."""
    if len(images) == 0:
        return 0.0
    dummy = ImageSet(images, torch.zeros(len(images), dtype=torch.long), ("?",))
    return 100.0 * float((predict_logits(model, dummy, batch_size).argmax(1) == label).float().mean())


@dataclass
class StampStage:
    """Read a whole-label stamp from the training set, confirm it on the suspect, and unlearn it (see the module).

    Args:
        min_z: a pixel's statistic above which it belongs to a stamp (3). Read on the development models of
            seed 30: the stamp's pixels 8.2 to 19.9 on the whole-label CLA model, every other pixel at most 0.65;
            every pixel of the training sets of seven clean and poison-label models at most 1.16
            (docs/results/repair-cpu.md, "A stamp on a whole label").
        confirm_share: percent of stamped other-label samples the suspect must send to the stamp's label (50,
            BNP's trigger confirmation).
        probe: other-label training samples stamped to confirm, and as many held out to witness the repair.
        steps, lr, forget_batch, keep_batch, holdout, budget, seed, anchor: as `UnlearnStage`'s.
    """

    min_z: float = 3.0
    confirm_share: float = 50.0
    probe: int = 2000
    steps: int = 150
    lr: float = 0.003
    keep_batch: int = 128
    forget_batch: int = 64
    holdout: float = 0.05
    budget: float = DEFAULT_BUDGET
    seed: int = 0
    anchor: float = 4.0
    batch_size: int = 512

    def read(self, suspect: nn.Module, train: ImageSet) -> Stamp | None:
        """The stamp of `train`, with the share of stamped other-label samples `suspect` sends to its label, or
        None when no pixel exceeds `min_z`."""
        stamp = read_stamp(train, min_z=self.min_z)
        if stamp is None:
            return None
        others = (train.labels.cpu() != stamp.label).nonzero().flatten()
        pick = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(self.seed))[: self.probe]]
        stamp.share = sent_to(suspect, stamp.on(train.images[pick]), stamp.label, self.batch_size)
        return stamp

    def confirms(self, stamp: Stamp | None) -> bool:
        return stamp is not None and stamp.share is not None and stamp.share >= self.confirm_share

    def run(self, suspect: nn.Module, train: ImageSet, stamp: Stamp) -> tuple[nn.Module, dict, list[str]]:
        """(the repaired model or the suspect's copy, the report's record, warnings)."""
        images = train.images.clone()
        own = (train.labels == stamp.label).to(images.device)
        images[own] = stamp.off(images[own])
        cleaned = train.with_samples(images, train.labels)
        keep, held_out = split_holdout(cleaned, self.holdout, seed=self.seed)
        others = (keep.labels.cpu() != stamp.label).nonzero().flatten()
        order = torch.randperm(len(others), generator=torch.Generator().manual_seed(self.seed + 1))
        pick = others[order[: self.probe]]
        forget = ImageSet(stamp.on(keep.images[pick]), torch.full((len(pick),), stamp.label), keep.classes)
        held_others = held_out.images[(held_out.labels.cpu() != stamp.label).to(held_out.images.device)]
        witness = stamp.on(held_others[: self.probe])
        record: dict[str, Any] = {"stamp": stamp.to_dict(), "held_out_witness_before": sent_to(
            suspect, witness, stamp.label, self.batch_size)}  # fmt: skip

        def attempt(lr: float):
            def repair() -> nn.Module:
                net = copy.deepcopy(suspect)
                history = unlearn_fine_tune(net, keep, forget, steps=self.steps, lr=lr, keep_batch=self.keep_batch,
                                            forget_batch=self.forget_batch, seed=self.seed, anchor=self.anchor)  # fmt: skip
                record.setdefault("history", []).append(history)
                return net

            return repair

        attempts = [(f"stamp unlearned, lr {self.lr:g}", attempt(self.lr)),
                    (f"stamp unlearned, lr {self.lr / 3:g}", attempt(self.lr / 3))]  # fmt: skip
        repaired, outcome = first_within_budget(suspect, attempts, held_out, budget=self.budget)
        record["guard"] = vars(outcome)
        if outcome.chosen is not None:
            record["held_out_witness_after"] = sent_to(repaired, witness, stamp.label, self.batch_size)
        warnings = [outcome.message] if outcome.chosen != 0 else []
        return (copy.deepcopy(suspect).eval() if repaired is suspect else repaired.eval()), record, warnings
