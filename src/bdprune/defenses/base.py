"""The shape every defense shares: `defense.run(model, data) -> (repaired_model, report)`.

The report is plain data (per-layer scores, thresholds, pruned neurons, samples used, time) that
serialises to JSON, so a defense run can be inspected, plotted and compared later without the model.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..files import atomic_write_json, jsonable, read_json
from ..params import Parameter, check_fields, convert, param, parameters
from ..registry import Registry


@dataclass
class DefenseData:
    """What the defender has.

    Attributes:
        clean: a small set of clean samples (the paper: 500 on CIFAR-10), for BNP and the baselines.
        train: the (possibly poisoned) training set, for EP.
        train_poisoned: (len(train),) bool, which training samples are known to be poisoned. Only
            diagnostics (plots of benign vs. poisoned pre-activations) read it; no decision does.
        image_shape: (C, H, W) the model takes, when known: the samples must have it, and data-free
            defenses (CLP) trace the model with a zero image of it.
    """

    clean: ImageSet | None = None
    train: ImageSet | None = None
    train_poisoned: torch.Tensor | None = None
    image_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.image_shape is None:
            return
        self.image_shape = tuple(int(s) for s in self.image_shape)  # type: ignore[assignment]
        for what, data in (("clean samples", self.clean), ("training set", self.train)):
            if data is not None and tuple(data.image_shape) != self.image_shape:
                raise InvalidInput(
                    f"the {what} ({data.name or 'given'}) have images of shape {tuple(data.image_shape)}, "
                    f"but the model takes {self.image_shape}; give images of the model's input shape"
                )

    def but(self, **changes: Any) -> DefenseData:
        """A copy with some fields replaced, without checking again what the defense may not read."""
        out = copy.copy(self)
        for name, value in changes.items():
            setattr(out, name, value)
        return out

    def require(self, what: str, defense: str) -> ImageSet:
        data = getattr(self, what)
        if data is None:
            needs = {
                "clean": "a set of clean samples (e.g. --clean-samples 500)",
                "train": "the (possibly poisoned) training set",
            }[what]
            raise InvalidInput(f"{defense} needs {needs}")
        return data


@dataclass
class LayerReport:
    """One layer's part of a pruning report.

    Attributes:
        name: neuron layer (BN) name; conv: the conv feeding it; channels: its neuron count.
        scores: each neuron's score (entropy, KL, ...); NaN where a neuron has none.
        z: each neuron's standardised score under the rule used.
        center, scale, threshold: the rule's statistics and the score threshold (None if undefined).
        pruned: indices of pruned neurons.
        note: why nothing could be pruned here, or another caveat.
        extra: method-specific per-layer data (e.g. counts of degenerate or non-finite neurons).
    """

    name: str
    conv: str | None
    channels: int
    scores: list[float]
    z: list[float]
    center: float | None
    scale: float | None
    threshold: float | None
    pruned: list[int]
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DefenseReport:
    """What a defense run did, as plain data (`unscored`: BN layers left out, name -> reason)."""

    method: str
    config: dict[str, Any]
    layers: list[LayerReport]
    samples: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    unscored: dict[str, str] = field(default_factory=dict)
    # what the defense read that a later measurement may reuse rather than read again (BNP: the trigger read from
    # the suspect's BN statistics, and the clean samples it was read from); never saved
    read: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def pruned(self) -> dict[str, list[int]]:
        return {l.name: l.pruned for l in self.layers if l.pruned}

    @property
    def num_pruned(self) -> int:
        return sum(len(l.pruned) for l in self.layers)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, read=None))
        del out["read"]
        out["num_pruned"] = self.num_pruned
        return jsonable(out)

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> DefenseReport:
        raw = read_json(path)
        raw.pop("num_pruned", None)
        raw["layers"] = [LayerReport(**l) for l in raw["layers"]]
        return cls(**raw)


@dataclass(eq=False, kw_only=True)
class Defense(ABC):
    """Base class: a defense is built with its hyperparameters and run on a model and the defender's data.

    A subclass sets `name` and `needs` (what the defender must provide), declares its hyperparameters as
    dataclass fields (`bdprune.params.param` for bounds and choices: checked once, here, and listed by
    `parameters()`), and implements `run`.

    Args:
        batch_size: samples per forward pass.
        progress: show a progress bar.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset({"clean"})  # "clean" samples, the "train"ing set; {}: data-free

    batch_size: int = param(256, ge=1)
    progress: bool = False

    def __post_init__(self) -> None:
        check_fields(self, f"defense {self.name!r}")

    @abstractmethod
    def run(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        """Return a repaired copy of `model` (the input is never modified) and a report."""

    def add_diagnostics(self, model: nn.Module, data: DefenseData, report: DefenseReport) -> None:
        """Add data for the report's plots that the decision does not need (it may cost another pass)."""

    @classmethod
    def parameters(cls) -> dict[str, Parameter]:
        """The declared hyperparameters, with their defaults and types."""
        return parameters(cls)

    @classmethod
    def from_options(cls, **params: Any) -> Defense:
        """The defense from options given by name (command-line strings are parsed by the declared types)."""
        return cls(**convert(f"defense {cls.name!r}", cls.parameters(), params))

    def params(self) -> dict[str, Any]:
        """The hyperparameters as given (what reports record)."""
        return {name: getattr(self, name) for name in self.parameters()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"


DEFENSES: Registry[Defense] = Registry("defense")


def register_defense(cls: type[Defense]) -> type[Defense]:
    DEFENSES.register(cls.name)(cls)
    return cls


def create_defense(name: str, **params: Any) -> Defense:
    """Build a registered defense; unknown hyperparameters, and values of the wrong type, are an error.
    String values (the command line's KEY=VALUE) are parsed by the declared types."""
    cls: type[Defense] = DEFENSES.get(name)  # type: ignore[assignment]
    return cls.from_options(**params)


def list_defenses(pattern: str = "*") -> list[str]:
    return DEFENSES.names(pattern)
