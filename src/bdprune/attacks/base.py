"""The poisoning interface every attack implements, and the attack registry.

An attack is a small object built with its hyperparameters (torchattacks' shape) whose one batched, pure
method `apply(images, labels)` returns poisoned copies: images keep their dtype (uint8 or float [0, 1]),
shape (N, C, H, W) and device, labels become the attack's target labels. Which samples get poisoned is
not the attack's business: `bdprune.attacks.poison` draws those indices from an explicit generator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import KW_ONLY, InitVar, dataclass
from typing import Any, ClassVar

import torch

from ..data.imageset import like_input, to_float
from ..errors import InvalidInput
from ..params import Parameter, check_fields, check_known, param, parameters
from ..registry import Registry

ALL_TO_ONE = "all-to-one"
ALL_TO_ALL = "all-to-all"
Tensors = dict[str, torch.Tensor]


@dataclass(eq=False, repr=False)
class Attack(ABC):
    """Base class of backdoor attacks: hyperparameters are declared fields, the trigger is made in `build`.

    Args:
        image_shape: (C, H, W) of the images the attack will poison.
        num_classes: number of classes of the task.
        target: the target class of an all-to-one attack.
        mode: "all-to-one" (every poisoned sample -> `target`) or "all-to-all" (y -> (y + 1) mod C).
        generator: randomness for random triggers (not kept); the same seed gives the same trigger.
        tensors: saved `state_dict()` of an attack with the same parameters: restores its trigger exactly.

    A subclass declares its hyperparameters as fields (`param(default, ge=..., choices=...)` for bounds):
    they are checked once, here, and `params()` (what the sidecar records) is derived from them. It sets
    `name`, implements `poison_images` on float [0, 1] batches, builds its trigger in `build`, and returns
    the tensors it needs (trigger patterns) from `state_dict()`.
    """

    name: ClassVar[str] = ""
    clean_label: ClassVar[bool] = False  # True: poisons only target-class samples and keeps their labels
    context: ClassVar[tuple[str, ...]] = ("image_shape", "num_classes", "generator", "tensors")  # not hyperparameters

    image_shape: tuple[int, int, int]
    num_classes: int = param(ge=1)
    _: KW_ONLY
    target: int = param(0, ge=0)
    mode: str = param(ALL_TO_ONE, choices=(ALL_TO_ONE, ALL_TO_ALL))
    generator: InitVar[torch.Generator | None] = None
    tensors: InitVar[Tensors | None] = None

    def __post_init__(self, generator: torch.Generator | None, tensors: Tensors | None) -> None:
        self.resolve(generator)
        check_fields(self, self.name or type(self).__name__)
        if self.target >= self.num_classes:
            raise InvalidInput(f"{self.name}: target class {self.target} is outside [0, {self.num_classes})")
        self.build(generator, tensors or {})

    # -- what subclasses provide ---------------------------------------------------------------------
    def resolve(self, generator: torch.Generator | None) -> None:
        """Fill in hyperparameters left to be decided (None) before they are checked."""

    def build(self, generator: torch.Generator | None, tensors: Tensors) -> None:
        """Make the trigger: restore it from `tensors` when they hold it, else draw it from `generator`."""

    @abstractmethod
    def poison_images(self, images: torch.Tensor) -> torch.Tensor:
        """Poison a float32 batch in [0, 1], (N, C, H, W) -> (N, C, H, W); must not modify its input."""

    def state_dict(self) -> Tensors:
        """Tensors the attack needs besides `params` (trigger patterns, fitted generators' weights)."""
        return {}

    @classmethod
    def parameters(cls) -> dict[str, Parameter]:
        """The declared hyperparameters and their defaults (what `bdprune attacks` lists)."""
        return parameters(cls, skip=cls.context)

    def params(self) -> dict[str, Any]:
        """JSON-serialisable hyperparameters; `create_attack(name, **params, tensors=...)` rebuilds the attack."""
        return {name: getattr(self, name) for name in self.parameters()}

    def cross_count(self, poisoned: int) -> int:
        """How many noise-mode ("cross") samples, kept with their true labels, go with `poisoned` poisoned
        samples of a training set (WaNet); 0 for attacks without them."""
        return 0

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
        """Noise-mode ("cross") images for attacks whose `cross_count` is not 0: float [0, 1] in and out."""
        raise NotImplementedError(f"{self.name} has no noise-mode samples")

    def apply_cross(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise-mode copies of a batch (same dtype, shape, device) with their true labels."""
        self._check(images)
        return like_input(self.cross_images(to_float(images)), images), labels.clone()

    def _check(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise InvalidInput(
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
    tensors: Tensors | None = None,
    **params: Any,
) -> Attack:
    """Build a registered attack.

    Args:
        name: registry name ("badnets", "blended", ...).
        image_shape: (C, H, W) of the images.
        num_classes: classes of the task.
        generator: randomness for random triggers; the same seed gives the same trigger.
        tensors: saved tensors (from `Attack.state_dict()`) that restore a trigger exactly.
        **params: the attack's hyperparameters; unknown names are an error.
    """
    cls: type[Attack] = ATTACKS.get(name)  # type: ignore[assignment]
    check_known(f"attack {name!r}", list(params), list(cls.parameters()))
    return cls(image_shape=tuple(image_shape), num_classes=num_classes, generator=generator, tensors=tensors, **params)


def choose_trigger(
    tensors: Tensors, key: str, given: str | torch.Tensor, make: Callable[[str], torch.Tensor]
) -> tuple[torch.Tensor, str]:
    """The trigger of an attack and the kind recorded for it: the saved one (`tensors[key]`), a tensor given
    as `given`, or one made by `make(given)` from its kind ("random", "white", ...)."""
    if key in tensors:  # a saved trigger; keep the recorded kind
        return tensors[key].detach().float().cpu(), given if isinstance(given, str) else "custom"
    if isinstance(given, torch.Tensor):
        return given.detach().float().cpu(), "custom"
    return make(given).detach().float().cpu(), given


def check_trigger(owner: str, trigger: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(trigger.shape) != tuple(shape) or trigger.min() < 0 or trigger.max() > 1:
        raise InvalidInput(
            f"{owner}: the trigger must be a {tuple(shape)} tensor in [0, 1], got {tuple(trigger.shape)}"
        )
