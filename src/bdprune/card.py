"""The sidecar (model.json) of a saved model as typed records: what the model is, how it was made, and
what was done to it.

`ModelCard` is what `bdprune.checkpoint` writes beside the weights and reads back; `RunRecord` is the part
written by `bdprune train` that rebuilds the run's exact data; `AttackRecord` and `DefenseRecord` record the
attack it was trained with and the defense that repaired it. Reading checks every field's type, so a
hand-edited or forged sidecar fails with a message that names the field.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from .config import RunConfig
from .errors import BdpruneError, CheckpointError
from .params import check_value

FORMAT_VERSION = 1
LEGACY_RUN_OPTIONS = {"fit_budget": "budget"}  # bdprune 0.1.0 (format 1) name -> current name


@dataclass
class AttackRecord:
    """The attack a model was trained with (or the trigger a user named to measure a foreign model's ASR):
    `create_attack(name, image_shape=..., num_classes=..., **params)` and, when it has any, its tensors in
    attack.safetensors (their SHA-256 here); `seed`, when known, rebuilds its random parts from scratch."""

    name: str
    params: dict[str, Any]
    image_shape: list[int]
    num_classes: int
    tensors_sha256: str | None = None
    seed: int | None = None


@dataclass
class RunRecord:
    """What rebuilds a run's data: its configuration and every index that matters (positions in the dataset's
    training file)."""

    config: RunConfig
    reserve_indices: list[int]  # the defender's clean reserve, never trained on
    train_indices: list[int] | None  # the training subset, or None: every sample outside the reserve
    poisoned_indices: list[int]
    cross_indices: list[int] = field(default_factory=list)  # noise-mode samples (WaNet), true labels kept


@dataclass
class DefenseRecord:
    """The defense that made a repaired model from its parent."""

    method: str
    config: dict[str, Any]
    pruned: dict[str, list[int]]
    num_pruned: int


@dataclass
class ModelCard:
    """The sidecar of a saved model.

    Attributes:
        architecture, arch_args: the model registry entry and its keyword arguments (rebuild the network).
        dataset, normalization: the task it classifies and its input statistics.
        seed: the run's seed.
        run: the run record (models made by `bdprune train`).
        attack: the attack it was trained with, if any.
        defense, parent_weights_sha256: for a repaired model, the defense and the weights it repaired.
        source_weights: for a foreign model, the file its weights came from.
        weights_sha256: SHA-256 of model.safetensors (written by `save_checkpoint`).
        format, provenance: the sidecar's format version; bdprune and torch versions, git commit.
    """

    architecture: str
    arch_args: dict[str, Any]
    dataset: str | None = None
    normalization: dict[str, Any] | None = None
    seed: int | None = None
    run: RunRecord | None = None
    attack: AttackRecord | None = None
    defense: DefenseRecord | None = None
    parent_weights_sha256: str | None = None
    source_weights: str | None = None
    weights_sha256: str | None = None
    format: int = FORMAT_VERSION
    provenance: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; fields that are None are left out, as bdprune has always written them."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if self.run is not None:
            out["run"]["config"] = self.run.config.to_dict()
        return out

    @classmethod
    def from_dict(cls, raw: Any, where: str = "model.json") -> ModelCard:
        """Read a sidecar's JSON, checking every field; `CheckpointError` names the file and field."""
        if isinstance(raw, dict) and raw.get("format") != FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: unsupported sidecar format {raw.get('format')!r} (this bdprune reads "
                f"format {FORMAT_VERSION}); re-save the model with a matching bdprune version"
            )
        return _record(cls, raw, where)


def _record(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where} must be a JSON object, got {type(raw).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise CheckpointError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CheckpointError(f"{where}: the field {f.name!r} is missing")
            continue
        values[f.name] = _value(raw[f.name], hints[f.name], f"{where}: {f.name}")
    return cls(**values)


def _value(value: Any, annotation: Any, where: str) -> Any:
    members = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, type(int | None))
        else (annotation,)
    )
    if value is None and type(None) in members:
        return None
    if RunConfig in members:
        if not isinstance(value, dict):
            raise CheckpointError(f"{where} must be a JSON object, got {type(value).__name__}")
        value = {LEGACY_RUN_OPTIONS.get(k, k): v for k, v in value.items()}
        try:
            return RunConfig.from_dict(value)
        except (BdpruneError, TypeError) as exc:
            raise CheckpointError(f"{where}: {exc}") from None
    for t in members:
        if dataclasses.is_dataclass(t):
            return _record(t, value, where)
    try:
        return check_value(where, value, annotation)
    except BdpruneError as exc:
        raise CheckpointError(str(exc)) from None
