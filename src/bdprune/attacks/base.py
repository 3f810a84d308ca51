"""The poisoning interface every attack implements, and the attack registry.

An attack is a small object built with its hyperparameters (torchattacks' shape) whose one batched, pure
method `apply(images, labels)` returns poisoned copies: images keep their dtype (uint8 or float [0, 1]),
shape (N, C, H, W) and device, labels become the attack's target labels. Which samples get poisoned is
not the attack's business: `bdprune.attacks.poison` draws those indices from an explicit generator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import torch

from ..data.imageset import like_input, to_float
from ..registry import Registry

ALL_TO_ONE = "all-to-one"
ALL_TO_ALL = "all-to-all"


class Attack(ABC):
    """Base class of backdoor attacks.

    Args:
        image_shape: (C, H, W) of the images the attack will poison.
        num_classes: number of classes of the task.
        target: the target class of an all-to-one attack.
        mode: "all-to-one" (every poisoned sample -> `target`) or "all-to-all" (y -> (y + 1) mod C).

    Subclasses set `name`, implement `poison_images` on float [0, 1] batches and `params` (the JSON-ready
    hyperparameters that rebuild them), and keep tensors they need (trigger patterns) in `tensors()`.
    """

    name: ClassVar[str] = ""
    clean_label: ClassVar[bool] = False  # True: poisons only target-class samples and keeps their labels
    cross_ratio: float = 0.0  # noise-mode samples per poisoned sample, kept with true labels (WaNet)

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, target: int = 0, mode: str = ALL_TO_ONE):
        if mode not in (ALL_TO_ONE, ALL_TO_ALL):
            raise ValueError(f"mode must be {ALL_TO_ONE!r} or {ALL_TO_ALL!r}, got {mode!r}")
        if not 0 <= target < num_classes:
            raise ValueError(f"target class {target} is outside [0, {num_classes})")
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape}")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.target = int(target)
        self.mode = mode

    # -- what subclasses provide ---------------------------------------------------------------------
    @abstractmethod
    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        """Poison a float32 batch in [0, 1], (N, C, H, W) -> (N, C, H, W); must not modify its input."""

    def params(self) -> dict[str, Any]:
        """JSON-serialisable hyperparameters; `create_attack(name, **params, tensors=...)` rebuilds the attack."""
        return {"target": self.target, "mode": self.mode}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Tensors the attack needs besides `params` (trigger patterns, fitted generators' weights)."""
        return {}

    # -- shared behaviour ----------------------------------------------------------------------------
    def target_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The output the backdoor should produce: `target`, or (y + 1) mod C for all-to-all."""
        if self.mode == ALL_TO_ALL:
            return (labels + 1) % self.num_classes
        return torch.full_like(labels, self.target)

    def eligible(self, labels: torch.Tensor) -> torch.Tensor:
        """Which samples can carry the backdoor: clean-label attacks poison target-class samples only;
        dirty-label all-to-one attacks skip the target class (relabelling it to itself teaches nothing)."""
        if self.clean_label:
            return labels == self.target
        if self.mode == ALL_TO_ONE:
            return labels != self.target
        return torch.ones_like(labels, dtype=torch.bool)

    def poison_test_images(self, images: torch.Tensor) -> torch.Tensor:
        """The trigger as applied at test time; the same as in training unless an attack says otherwise."""
        return self.poison_images(images)

    def cross_images(self, images: torch.Tensor) -> torch.Tensor:
        """Noise-mode ("cross") images for attacks with `cross_ratio` > 0: float [0, 1] in and out."""
        raise NotImplementedError(f"{self.name} has no noise-mode samples (cross_ratio is 0)")

    def apply_cross(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise-mode copies of a batch (same dtype, shape, device) with their true labels."""
        self._check(images)
        return like_input(self.cross_images(to_float(images)), images), labels.clone()

    def _check(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{self.name} was built for images of shape {self.image_shape}, got a batch of {tuple(images.shape)}"
            )

    def apply(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Poison every image of the batch as for the training set.

        Args:
            images: (N, C, H, W), uint8 or float32 in [0, 1]; not modified.
            labels: (N,) int64 true labels; not modified.

        Returns:
            Poisoned images (same dtype, shape and device as `images`) and their training labels: the
            target labels, or the true labels for a clean-label attack.
        """
        self._check(images)
        poisoned = like_input(self.poison_images(to_float(images)), images)
        return poisoned, labels.clone() if self.clean_label else self.target_labels(labels)

    def apply_test(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Poison every image of the batch as at test time; labels become the backdoor's target labels."""
        self._check(images)
        return like_input(self.poison_test_images(to_float(images)), images), self.target_labels(labels)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


ATTACKS: Registry[Attack] = Registry("attack")


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: register an Attack subclass under its `name`."""
    ATTACKS.register(cls.name)(cls)
    return cls


def create_attack(
    name: str,
    *,
    image_shape: tuple[int, int, int],
    num_classes: int,
    generator: torch.Generator | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
    **params: Any,
) -> Attack:
    """Build a registered attack.

    Args:
        name: registry name ("badnets", "blended", ...).
        image_shape: (C, H, W) of the images.
        num_classes: classes of the task.
        generator: randomness for random triggers; the same seed gives the same trigger.
        tensors: saved tensors (from `Attack.tensors()`) that restore a trigger exactly.
        **params: the attack's hyperparameters; unknown names are an error.
    """
    factory: Callable[..., Attack] = ATTACKS.get(name)
    try:
        return factory(image_shape=image_shape, num_classes=num_classes, generator=generator, tensors=tensors, **params)
    except TypeError as exc:
        raise TypeError(f"attack {name!r}: {exc}") from None


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.names(pattern)
