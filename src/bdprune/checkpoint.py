"""Run directories: a model's weights and its sidecar, saved and loaded without running any code.

A run directory holds::

    model.safetensors   the network's state dict, as its own class names it (for a torchvision or timm
                        network, the wrapped one's: it loads into the user's architecture unchanged)
    model.json          the sidecar (`bdprune.card.ModelCard`): architecture and its arguments, dataset,
                        normalisation, attack and trigger parameters, poisoned indices, split, seed, training
                        config, versions, and the SHA-256 of model.safetensors
    attack.safetensors  the attack's tensors (trigger pattern, fitted generators), when it has any
    metrics.json        what `bdprune train` / `evaluate` measured

This module rebuilds models and attacks from a sidecar; plain file I/O is `bdprune.files`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .attacks import Attack, create_attack
from .card import AttackRecord, ModelCard
from .errors import BdpruneError, CheckpointError
from .files import (
    atomic_write_json,
    check_sha256,
    load_tensors,
    read_bytes,
    read_json,
    safetensors_shapes,
    save_tensors,
    tensors_from_bytes,
)
from .models import create_model, weights_of

WEIGHTS = "model.safetensors"
SIDECAR = "model.json"
ATTACK_TENSORS = "attack.safetensors"
METRICS = "metrics.json"


def git_commit() -> str | None:
    """The commit of the bdprune source tree, if it is a git checkout (None for an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance() -> dict[str, Any]:
    return {"bdprune": __version__, "torch": torch.__version__, "git_commit": git_commit()}


@dataclass
class Checkpoint:
    """A loaded run directory: the model, its sidecar, and the attack it was trained with (if any)."""

    model: nn.Module
    card: ModelCard
    attack: Attack | None
    directory: Path


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    card: ModelCard,
    attack: Attack | None = None,
    *,
    attack_seed: int | None = None,
) -> Path:
    """Write `model` and its sidecar into `directory`.

    Args:
        directory: the run directory (created if needed).
        model: the network; the state dict of `weights_of(model)` is saved (the input normalisation and
            channel repeat of a wrapped network come from the sidecar's architecture arguments).
        card: the sidecar; its architecture and arguments must rebuild `model`.
        attack: the attack the model was trained with; its name, parameters and tensors are recorded.
        attack_seed: the seed its random parts were drawn from, when it was built apart from a run.

    The weights are written first and the sidecar, which carries their SHA-256, last: a reader never
    accepts weights whose sidecar does not vouch for them.
    """
    directory = Path(directory)
    card = replace(card, weights_sha256=save_tensors(directory / WEIGHTS, weights_of(model).state_dict()))
    if attack is not None:
        tensors = attack.state_dict()
        card.attack = AttackRecord(
            name=attack.name,
            params=attack.params(),
            image_shape=list(attack.image_shape),
            num_classes=attack.num_classes,
            tensors_sha256=save_tensors(directory / ATTACK_TENSORS, tensors) if tensors else None,
            seed=attack_seed,
        )
    if card.provenance is None:
        card.provenance = provenance()
    atomic_write_json(directory / SIDECAR, card.to_dict())
    return directory


def read_card(directory: str | Path) -> ModelCard:
    """The sidecar of a run directory, checked field by field."""
    path = Path(directory) / SIDECAR
    if not Path(directory).is_dir():
        raise CheckpointError(f"no run directory {directory}")
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(
            f"missing {path}: {directory} is not a directory bdprune wrote (or its run did not finish)"
        )
    return ModelCard.from_dict(read_json(path), str(path))


def build_model(card: ModelCard, *, meta: bool = False) -> nn.Module:
    """Instantiate the architecture a sidecar names (no weights; `meta`: shapes only, no memory)."""
    try:
        return create_model(card.architecture, meta=meta, **card.arch_args)
    except BdpruneError as exc:
        raise CheckpointError(f"the sidecar's model: {exc}") from None


def check_shapes(
    model: nn.Module, shapes: dict[str, tuple[int, ...]], where: str | Path, what: str = "the declared model"
) -> None:
    """Refuse weights whose names or shapes are not the model's (checked on a shape-only model); the
    message names the first few missing, unexpected and misshapen tensors, and a common cause."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if expected == shapes:
        return
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    misshapen = [
        f"{k} {shapes[k]} (the model's: {expected[k]})" for k in expected if k in shapes and shapes[k] != expected[k]
    ]
    parts = [
        f"{label} ({len(keys)}): {', '.join(keys[:3])}{f' and {len(keys) - 3} more' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", misshapen))
        if keys
    ]
    raise CheckpointError(
        f"{where} does not fit {what}: {len(shapes)} tensors for its {len(expected)}; "
        f"{'; '.join(parts)}{_hint(expected, shapes)}"
    )


def _hint(expected: dict[str, tuple[int, ...]], shapes: dict[str, tuple[int, ...]]) -> str:
    """The likely cause of a mismatch, when it is a common one."""
    heads = {k.split(".", 1)[0] for k in shapes}
    if len(heads) == 1 and "." in next(iter(shapes)):
        head = heads.pop()
        if {k.split(".", 1)[1] for k in shapes} == set(expected):
            return f". Every key of the file starts with '{head}.': save the inner network's state_dict"
    first = next((k for k in expected if k.endswith(".weight") and len(expected[k]) == 4), None)  # the stem conv
    if first in shapes and len(shapes[first]) == 4 and shapes[first][1] != expected[first][1]:
        return (
            f". The file's stem ({first}) takes {shapes[first][1]} channel(s), the model's {expected[first][1]}: set "
            "in_channels (and image_channels=1 for grey images repeated to 3 channels)"
        )
    return ""


def build_attack(card: ModelCard, directory: str | Path) -> Attack | None:
    """Rebuild the attack recorded in a sidecar, with its exact trigger tensors."""
    entry = card.attack
    if entry is None:
        return None
    tensors = None
    if entry.tensors_sha256 is not None:
        tensors = load_tensors(Path(directory) / ATTACK_TENSORS, entry.tensors_sha256)
    try:
        return create_attack(
            entry.name,
            image_shape=tuple(entry.image_shape),
            num_classes=entry.num_classes,
            tensors=tensors,
            **entry.params,
        )
    except CheckpointError:
        raise
    except BdpruneError as exc:
        raise CheckpointError(f"{Path(directory) / SIDECAR}: the recorded attack: {exc}") from None


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a run directory written by `save_checkpoint`; nothing in it is unpickled.

    Raises:
        CheckpointError: a file is missing, corrupt, or the weights do not match the sidecar.
    """
    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    card = read_card(directory)
    if card.weights_sha256 is None:
        raise CheckpointError(
            f"{directory / SIDECAR} records no weights_sha256, which bdprune always writes: the "
            "sidecar was edited or not written by bdprune, so its weights are refused. For weights from "
            "elsewhere use `bdprune defend --weights FILE --arch NAME --dataset NAME`"
        )
    data = read_bytes(directory / WEIGHTS)
    check_sha256(data, card.weights_sha256, directory / WEIGHTS)
    # The declared sizes are checked against the file's header before the model takes any memory. Files
    # written by earlier versions hold a wrapped network's state dict under the wrapper's keys.
    shapes, shell = safetensors_shapes(data, directory / WEIGHTS), build_model(card, meta=True)
    whole = {k: tuple(v.shape) for k, v in shell.state_dict().items()} == shapes
    check_shapes(shell if whole else weights_of(shell), shapes, directory / WEIGHTS)
    model = build_model(card)
    try:
        (model if whole else weights_of(model)).load_state_dict(
            tensors_from_bytes(data, directory / WEIGHTS), strict=True
        )
    except RuntimeError as exc:
        raise CheckpointError(f"{directory / WEIGHTS} does not fit {card.architecture}: {exc}") from None
    model.to(map_location).eval()
    return Checkpoint(model=model, card=card, attack=build_attack(card, directory), directory=directory)
