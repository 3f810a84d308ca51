"""Attacks with a trained part (IAB's generators, SSBA's encoder, CLA's adversarially trained model).

A learned attack is built like any attack, then `fit(train_set)` trains its networks on the attacker's
training data (never on test data). The fitted weights are the attack's `state_dict()`: `save_checkpoint`
writes them to attack.safetensors next to the model, and `create_attack(..., tensors=...)` rebuilds the
fitted attack from them, so `bdprune evaluate` re-applies exactly the trigger the model was trained with.
`fit_or_load` caches a fit on disk, keyed by the attack's parameters and the bytes of the training data,
so a second run with the same data and settings reuses it.

Fitting sizes come in two budgets: "paper" (the original papers' settings, a GPU's work) and "cpu" (the
same method scaled down to minutes on two cores); explicit parameters override the budget's values.
"""

from __future__ import annotations

import hashlib
import json
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .. import files
from ..data.imageset import ImageSet
from ..errors import CheckpointError, InvalidInput
from ..params import param
from ..train import TrainConfig
from .base import Attack

BUDGETS = ("cpu", "paper")


def seeded_init(module_factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with its initial weights drawn from `seed`, leaving the global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return module_factory()


@dataclass(kw_only=True, eq=False, repr=False)
class LearnedAttack(Attack):
    """Base class of attacks whose trigger comes from trained networks.

    Args:
        image_shape, num_classes, target, mode: as for `Attack`.
        budget: "cpu" or "paper": the fitting sizes (`fit_budgets`) used for those left at None.
        seed: seed of the networks' initialisation and of the fit's randomness (default: drawn from
            `generator`, so the run's seed decides it).
        generator: randomness for `seed`.

    Subclasses build their networks in `build`, return them by name from `networks()`, and train them in
    `_fit`. `state_dict()` holds every network's state dict (prefixed by its name) plus `extra_tensors()`.
    """

    fit_budgets: ClassVar[dict[str, dict[str, Any]]] = {}  # budget -> fitting sizes

    budget: str = param("paper", choices=BUDGETS)
    seed: int | None = None

    def resolve(self, generator: torch.Generator | None) -> None:
        if self.budget not in BUDGETS:
            raise InvalidInput(f"{self.name}: budget must be one of {BUDGETS}, got {self.budget!r}")
        for key, value in self.fit_budgets.get(self.budget, {}).items():  # explicit values take precedence
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.seed is None:
            self.seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        self.fitted = False
        self.fit_log: dict[str, Any] = {}  # what the fit measured (losses, bit accuracy), for reports

    # -- what subclasses provide ---------------------------------------------------------------------
    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """The trained networks by name; their state dicts are the attack's saved tensors."""

    @abstractmethod
    def _fit(self, data: ImageSet, device: torch.device, progress: bool) -> None:
        """Train the networks on `data` (float batches on `device`)."""

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors besides the networks' weights (a trigger patch, a code)."""
        return {}

    # -- shared behaviour ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        out = dict(self.extra_tensors())
        for prefix, net in self.networks().items():
            out.update({f"{prefix}.{key}": value for key, value in net.state_dict().items()})
        return out

    def load_fitted(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore fitted networks from `state_dict()` of a fitted attack with the same parameters."""
        for prefix, net in self.networks().items():
            state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise CheckpointError(
                    f"{self.name}: the saved {prefix!r} weights do not fit the attack's parameters ({exc})"
                ) from None
            net.eval()
        self.fitted = True

    def fit(self, data: ImageSet, *, device: torch.device | str = "cpu", progress: bool = False) -> LearnedAttack:
        """Train the attack's networks on the attacker's (clean) training data; returns self.

        Args:
            data: training images and labels; test data must never be passed here.
            device: where to train; the networks stay there until the next `apply` moves them.
            progress: show progress bars.
        """
        if len(data) == 0:
            raise InvalidInput(f"{self.name}: cannot fit on an empty set")
        if tuple(data.image_shape) != self.image_shape:
            raise InvalidInput(
                f"{self.name} was built for images of shape {self.image_shape}, the fit data has "
                f"{tuple(data.image_shape)}"
            )
        device = torch.device(device)
        for net in self.networks().values():
            net.to(device)
        self._fit(data, device, progress)
        for net in self.networks().values():
            net.eval()
        self.fitted = True
        return self

    def require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(
                f"{self.name} is a learned attack: call attack.fit(train_set) first (bdprune train does), or "
                "rebuild it with the tensors saved with its model (bdprune.checkpoint.load_checkpoint does)"
            )

    def nets_on(self, device: torch.device) -> dict[str, nn.Module]:
        """The networks, moved (in place) to `device` and in eval mode."""
        nets = self.networks()
        for net in nets.values():
            net.to(device).eval()
        return nets

    def fit_key(self, data: ImageSet) -> str:
        """A hash of everything the fit depends on: attack, parameters, image shape and the data's bytes."""
        h = hashlib.sha256()
        h.update(
            json.dumps(
                {
                    "name": self.name,
                    "params": self.params(),
                    "image_shape": list(self.image_shape),
                    "num_classes": self.num_classes,
                },
                sort_keys=True,
            ).encode()
        )
        h.update(data.images.detach().cpu().contiguous().numpy().tobytes())
        h.update(data.labels.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:20]


def fit_or_load(
    attack: LearnedAttack,
    data: ImageSet,
    *,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> LearnedAttack:
    """Fit `attack` on `data`, or load the fit cached in `cache_dir` by an identical earlier call.

    The cache file is `<cache_dir>/<name>-<fit_key>.safetensors` (safetensors through `bdprune.files`,
    never pickle); None disables caching.
    """
    path = Path(cache_dir) / f"{attack.name}-{attack.fit_key(data)}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        attack.load_fitted(files.load_tensors(path))
        meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}
        attack.fit_log = {**meta.get("fit_log", {}), "cached": str(path)}
        return attack
    attack.fit(data, device=device, progress=progress)
    if path is not None:
        files.save_tensors(path, attack.state_dict())
        files.atomic_write_json(
            path.with_suffix(".json"), {"name": attack.name, "params": attack.params(), "fit_log": attack.fit_log}
        )
    return attack


@dataclass(kw_only=True, eq=False, repr=False)
class JointAttack(LearnedAttack):
    """A learned attack whose trigger keeps learning while the classifier trains (IAB, WB).

    `fit` trains what comes before (IAB's mask generator, WB's first trigger); a run then draws only the poisoned positions
    and trains the classifier with `train_jointly`, which poisons those samples on the fly.
    """

    @abstractmethod
    def train_jointly(
        self,
        model: nn.Module,
        data: ImageSet,
        poisoned: torch.Tensor,
        config: TrainConfig,
        *,
        generator: torch.Generator,
        progress: bool = True,
    ) -> list[dict[str, float]]:
        """Train `model` in place on the clean `data`, `poisoned` (bool per sample) being the backdoor
        samples; returns one record per epoch, as `bdprune.train.train_model`."""
