"""Build poisoned training sets and test-time poisoned sets from an attack.

Which samples are poisoned is explicit data: positions drawn from an explicit `torch.Generator`, returned
to the caller and stored with the run (STYLE.md, point 2).
"""

from __future__ import annotations

import torch

from ..data.imageset import ImageSet
from ..errors import InvalidInput
from .base import Attack

CHUNK = 2048  # poison in chunks so float copies of a large set never need to exist all at once


def choose_poison_positions(
    labels: torch.Tensor, attack: Attack, rate: float, generator: torch.Generator
) -> torch.Tensor:
    """Draw which samples to poison.

    Dirty-label attacks poison round(rate * N) samples drawn from the eligible ones (all-to-one skips the
    target class). Clean-label attacks poison round(rate * N_target) target-class samples: their rate is a
    fraction of the target class, as in Turner et al.

    Returns:
        Sorted int64 positions into `labels`.
    """
    if not 0.0 <= rate <= 1.0:
        raise InvalidInput(f"the poisoning rate must lie in [0, 1], got {rate}")
    eligible = attack.eligible(labels.cpu()).nonzero().flatten()
    count = round(rate * (len(eligible) if attack.clean_label else len(labels)))
    if count > len(eligible):
        raise InvalidInput(
            f"rate {rate} asks for {count} poisoned samples but only {len(eligible)} can be poisoned "
            f"by {attack.name} ({attack.mode}, target {attack.target})"
        )
    pick = torch.randperm(len(eligible), generator=generator)[:count]
    return eligible[pick].sort().values


def _apply_in_chunks(attack: Attack, images: torch.Tensor, labels: torch.Tensor, test: bool):
    outs_x, outs_y = [], []
    for start in range(0, len(images), CHUNK):
        x, y = images[start : start + CHUNK], labels[start : start + CHUNK]
        px, py = attack.apply_test(x, y) if test else attack.apply(x, y)
        outs_x.append(px)
        outs_y.append(py)
    if not outs_x:
        return images.clone(), labels.clone()
    return torch.cat(outs_x), torch.cat(outs_y)


def poison_training_set(
    data: ImageSet, attack: Attack, rate: float, generator: torch.Generator
) -> tuple[ImageSet, torch.Tensor]:
    """A rho-poisoned copy of `data` (section 3.1) and the positions that were poisoned.

    Args:
        data: the clean training set (not modified).
        attack: the attack whose trigger and labels are applied.
        rate: the poisoning rate rho.
        generator: draws the poisoned positions.

    Returns:
        The mixed set (same order and indices as `data`) and the sorted positions of its poisoned samples.

    Noise-mode samples of attacks that have them (WaNet) are a separate, explicit step:
    `choose_cross_positions` then `cross_at`.
    """
    positions = choose_poison_positions(data.labels, attack, rate, generator)
    return poison_at(data, attack, positions), positions


def poison_at(data: ImageSet, attack: Attack, positions: torch.Tensor) -> ImageSet:
    """A copy of `data` whose samples at `positions` are poisoned as for training (trigger and labels)."""
    images, labels = data.images.clone(), data.labels.clone()
    if len(positions):
        px, py = _apply_in_chunks(attack, data.images[positions], data.labels[positions], test=False)
        images[positions], labels[positions] = px, py
    return data.with_samples(images, labels, name=f"{data.name}+{attack.name}")


def poison_test_set(data: ImageSet, attack: Attack) -> ImageSet:
    """The set on which the attack success rate is measured (section 5.1).

    All-to-one: every sample whose true label is not the target, with the trigger and the target label
    (the paper's ASR counts only y != y_t). All-to-all: every sample, labelled (y + 1) mod C.
    """
    keep = (
        (data.labels != attack.target)
        if attack.mode == "all-to-one"
        else torch.ones_like(data.labels, dtype=torch.bool)
    )
    subset = data.subset(keep.nonzero().flatten())
    images, labels = _apply_in_chunks(attack, subset.images, subset.labels, test=True)
    return subset.with_samples(images, labels, name=f"{data.name}+{attack.name}")


def choose_cross_positions(
    labels: torch.Tensor, attack: Attack, poisoned: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Draw the noise-mode ("cross") samples of an attack that has them (WaNet).

    `attack.cross_count(len(poisoned))` samples of any class, disjoint from the poisoned positions; empty
    for attacks without a noise mode.

    Returns:
        Sorted int64 positions into `labels`.
    """
    count = attack.cross_count(len(poisoned))
    if count == 0:
        return torch.empty(0, dtype=torch.int64)
    free = torch.ones(len(labels), dtype=torch.bool)
    free[poisoned] = False
    candidates = free.nonzero().flatten()
    if count > len(candidates):
        raise InvalidInput(
            f"{attack.name} asks for {count} noise-mode samples but only {len(candidates)} samples "
            "are not poisoned; lower its cross_ratio or the rate"
        )
    pick = torch.randperm(len(candidates), generator=generator)[:count]
    return candidates[pick].sort().values


def cross_at(data: ImageSet, attack: Attack, positions: torch.Tensor) -> ImageSet:
    """A copy of `data` whose samples at `positions` become noise-mode samples (true labels kept)."""
    if not len(positions):
        return data
    images = data.images.clone()
    chunks = [
        attack.apply_cross(data.images[positions[s : s + CHUNK]], data.labels[positions[s : s + CHUNK]])[0]
        for s in range(0, len(positions), CHUNK)
    ]
    images[positions] = torch.cat(chunks)
    return data.with_samples(images, data.labels.clone())
