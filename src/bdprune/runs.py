"""A backdoor run: dataset, split, poisoning, model, training, evaluation, and the record that rebuilds it.

The split follows the paper's official code: most of the training file becomes the (mixed) training set,
and a clean reserve that is never poisoned nor trained on is kept for the defender (the paper's 500-image
clean subset is drawn from it). Every random choice comes from a generator seeded from the run's seed,
and every index that matters (reserve, training subset, poisoned samples) is written to the sidecar, so
`rebuild_run_data` reproduces the exact mixed training set a model saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attacks import (
    ATTACKS,
    Attack,
    JointAttack,
    LearnedAttack,
    choose_cross_positions,
    choose_poison_positions,
    create_attack,
    cross_at,
    fit_or_load,
    poison_at,
    poison_training_set,
)
from .attacks.adaptive import AdaptiveLoss, create_adaptive_loss, reparameterize_bn
from .card import ModelCard, RunRecord
from .checkpoint import METRICS, save_checkpoint
from .config import PRESETS, RunConfig, augmentation, preset  # noqa: F401  (the run's configuration, re-exported)
from .data import DatasetSpec, ImageSet, get_spec, load_dataset
from .errors import CheckpointError, InvalidInput
from .files import atomic_write_json, check_output_dir, staged_output
from .metrics import evaluate
from .models import create_model
from .train import train_model


@dataclass
class RunData:
    """The data of a run: the mixed training set and which of its samples are poisoned, the clean reserve
    for the defender, the clean test set, and the attack."""

    spec: DatasetSpec
    train: ImageSet  # mixed (possibly poisoned) training set
    poisoned: torch.Tensor  # (len(train),) bool: which training samples carry the trigger
    reserve: ImageSet  # clean, never trained on
    test: ImageSet
    attack: Attack | None
    cross: torch.Tensor | None = None  # (len(train),) bool: noise-mode samples (WaNet), true labels kept


def _generator(seed: int, stream: int) -> torch.Generator:
    # Independent streams from one seed: changing the poisoning does not change the split, and so on.
    return torch.Generator().manual_seed(seed * 1000 + stream)


def build_attack(config: RunConfig, spec: DatasetSpec) -> Attack | None:
    if config.attack is None:
        return None
    params = dict(config.attack_params)
    if issubclass(ATTACKS.get(config.attack), LearnedAttack):  # type: ignore[arg-type]
        params.setdefault("budget", config.budget)
    return create_attack(
        config.attack,
        image_shape=spec.image_shape,
        num_classes=spec.num_classes,
        generator=_generator(config.seed, 3),
        target=config.target,
        mode=config.mode,
        **params,
    )


def split_training_file(full: ImageSet, config: RunConfig) -> tuple[ImageSet, ImageSet]:
    """(training part, clean reserve) of the training file, by the run's seed."""
    n_reserve = max(1, round(config.reserve_fraction * len(full)))
    n_train = len(full) - n_reserve
    if config.train_subset is not None:
        if not 0 < config.train_subset <= n_train:
            raise InvalidInput(f"train_subset must lie in [1, {n_train}], got {config.train_subset}")
        n_train = config.train_subset
    reserve, train = full.split([n_reserve, n_train], _generator(config.seed, 1))
    return train, reserve


def prepare_run_data(
    config: RunConfig,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> RunData:
    """Load, split and poison the data of a run.

    A learned attack (IAB, SSBA, CLA, WB) is first fitted on the clean training part, on `device`, or loaded
    from `cache_dir` (see `bdprune.attacks.fit_or_load`). An attack that trains jointly with the
    classifier (IAB, WB) gets its poisoned positions drawn here but its samples poisoned during training.
    """
    spec = get_spec(config.dataset)
    full = load_dataset(config.dataset, config.data_dir, train=True)
    test = load_dataset(config.dataset, config.data_dir, train=False)
    train, reserve = split_training_file(full, config)
    attack = build_attack(config, spec)
    if isinstance(attack, LearnedAttack):
        fit_or_load(attack, train, device=device, cache_dir=cache_dir, progress=progress)
    poisoned = torch.zeros(len(train), dtype=torch.bool)
    cross = torch.zeros(len(train), dtype=torch.bool)
    if isinstance(attack, JointAttack) and config.rate > 0:
        poisoned[choose_poison_positions(train.labels, attack, config.rate, _generator(config.seed, 2))] = True
    elif attack is not None and config.rate > 0:
        train, positions = poison_training_set(train, attack, config.rate, _generator(config.seed, 2))
        poisoned[positions] = True
        cross_positions = choose_cross_positions(train.labels, attack, positions, _generator(config.seed, 5))
        train = cross_at(train, attack, cross_positions)
        cross[cross_positions] = True
    return RunData(spec=spec, train=train, poisoned=poisoned, reserve=reserve, test=test, attack=attack, cross=cross)


def _positions(data: ImageSet, indices: list[int], what: str) -> torch.Tensor:
    """Positions in `data` of samples by their recorded indices; a clear error for an index it lacks."""
    where = {int(i): p for p, i in enumerate(data.indices.tolist())}
    missing = [i for i in indices if i not in where]
    if missing:
        raise CheckpointError(
            f"the run record's {what} name sample {missing[0]}, which {data.name!r} ({len(data)} "
            "samples) does not have: the record and the dataset do not match (check --data-dir)"
        )
    return torch.tensor([where[i] for i in indices], dtype=torch.int64)


def rebuild_run_data(card: ModelCard, attack: Attack | None, data_dir: str | None = None) -> RunData:
    """The exact data of a saved run, from the indices its sidecar records.

    Args:
        card: the run's sidecar.
        attack: the attack loaded with the checkpoint (its trigger tensors are the recorded ones).
        data_dir: where the dataset lives, if not where the run found it.
    """
    run = card.run
    if run is None:
        raise CheckpointError("this checkpoint has no run record (it was not made by `bdprune train`)")
    config = run.config
    spec = get_spec(config.dataset)
    root = data_dir if data_dir is not None else config.data_dir
    full = load_dataset(config.dataset, root, train=True)
    test = load_dataset(config.dataset, root, train=False)
    reserve = full.subset(_positions(full, run.reserve_indices, "reserve_indices"))
    if run.train_indices is not None:
        train = full.subset(_positions(full, run.train_indices, "train_indices"))
    else:
        keep = torch.ones(len(full), dtype=torch.bool)
        keep[_positions(full, run.reserve_indices, "reserve_indices")] = False
        train = full.subset(keep.nonzero().flatten())
    poisoned = torch.zeros(len(train), dtype=torch.bool)
    if attack is not None and run.poisoned_indices:
        positions = _positions(train, run.poisoned_indices, "poisoned_indices")
        train = poison_at(train, attack, positions)
        poisoned[positions] = True
    cross = torch.zeros(len(train), dtype=torch.bool)
    if attack is not None and run.cross_indices:
        cross_positions = _positions(train, run.cross_indices, "cross_indices")
        train = cross_at(train, attack, cross_positions)
        cross[cross_positions] = True
    return RunData(spec=spec, train=train, poisoned=poisoned, reserve=reserve, test=test, attack=attack, cross=cross)


def model_arguments(config: RunConfig, spec: DatasetSpec) -> dict[str, Any]:
    """The keyword arguments of the run's model (what the sidecar records as `arch_args`)."""
    return {
        "num_classes": spec.num_classes,
        "in_channels": spec.image_shape[0],
        "mean": list(spec.mean),
        "std": list(spec.std),
        **config.model_args,
    }


def build_model(config: RunConfig, spec: DatasetSpec) -> nn.Module:
    """The run's network, initialised from the run's seed without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return create_model(config.model, **model_arguments(config, spec))


def run_record(config: RunConfig, data: RunData) -> RunRecord:
    """The part of the sidecar that rebuilds the run's data."""
    subset = config.train_subset is not None
    return RunRecord(
        config=config,
        reserve_indices=data.reserve.indices.tolist(),
        train_indices=data.train.indices.tolist() if subset else None,
        poisoned_indices=data.train.indices[data.poisoned].tolist(),
        cross_indices=data.train.indices[data.cross].tolist() if data.cross is not None else [],
    )


def train_run(
    config: RunConfig,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Prepare the data, train, evaluate and save a run into `out_dir`; returns its metrics.

    The directory gets model.safetensors, model.json (the sidecar with the run record) and metrics.json
    (and attack.safetensors: the trigger, or a learned attack's fitted networks). `cache_dir` caches the
    fits of learned attacks (None: no cache).
    """
    check_output_dir(out_dir)  # before the training, not after
    fit_start = time.perf_counter()
    data = prepare_run_data(config, device=device, cache_dir=cache_dir, progress=progress)
    fit_seconds = time.perf_counter() - fit_start
    model = build_model(config, data.spec).to(device)
    config = config.with_train(augment=augmentation(config.augment, data.spec))
    start = time.perf_counter()
    adaptive = adaptive_loss(config, data)
    if isinstance(data.attack, JointAttack):  # IAB, WB: the generator learns with the classifier
        if adaptive is not None:
            raise InvalidInput(
                f"{data.attack.name} trains with its own objective; it cannot be combined with --adaptive"
            )
        history = data.attack.train_jointly(
            model, data.train, data.poisoned, config.train, generator=_generator(config.seed, 4), progress=progress
        )
        # The mixed set as the model ended up seeing it: backdoor samples with the final trigger.
        data = replace(data, train=poison_at(data.train, data.attack, data.poisoned.nonzero().flatten()))
    else:
        history = train_model(
            model,
            data.train,
            config.train,
            generator=_generator(config.seed, 4),
            progress=progress,
            **({"loss_fn": adaptive} if adaptive is not None else {}),
        )
    if config.bn_reparam:
        model = reparameterize_bn(model, benign_training_samples(data))
    seconds = time.perf_counter() - start
    metrics = {
        **evaluate(model, data.test, data.attack, with_backdoor_loss=True),
        "train_seconds": seconds,
        "history": history,
        "train_samples": len(data.train),
        "poisoned_samples": int(data.poisoned.sum()),
    }
    if data.cross is not None and data.cross.any():
        metrics["cross_samples"] = int(data.cross.sum())
    if isinstance(data.attack, LearnedAttack):
        metrics["attack_fit"] = {**data.attack.fit_log, "seconds_incl_data": fit_seconds}
    if adaptive is not None:
        metrics["adaptive_regularizer_last_batch"] = adaptive.last_regularizer
    card = ModelCard(
        architecture=config.model,
        arch_args=model_arguments(config, data.spec),
        dataset=config.dataset,
        normalization={"mean": list(data.spec.mean), "std": list(data.spec.std)},
        seed=config.seed,
        run=run_record(config, data),
    )
    with staged_output(out_dir) as out:  # all or nothing: a killed run leaves no directory that looks done
        save_checkpoint(out, model, card, attack=data.attack)
        atomic_write_json(out / METRICS, metrics)
    return metrics


def benign_training_samples(data: RunData) -> ImageSet:
    """The training samples that are neither poisoned nor noise-mode: the benign data an attacker holds."""
    altered = data.poisoned | (data.cross if data.cross is not None else torch.zeros_like(data.poisoned))
    return data.train.subset((~altered).nonzero().flatten())


def adaptive_loss(config: RunConfig, data: RunData) -> AdaptiveLoss | None:
    """The run's appendix-G training objective, or None for plain cross-entropy."""
    if config.adaptive is None:
        if config.adaptive_params:
            raise InvalidInput("adaptive_params were given without an adaptive objective (--adaptive NAME)")
        return None
    if data.attack is None or not data.poisoned.any():
        raise InvalidInput(
            f"the adaptive objective {config.adaptive!r} hides a backdoor: it needs an attack and rate > 0"
        )
    return create_adaptive_loss(
        config.adaptive, attack=data.attack, poisoned=data.poisoned, cross=data.cross, **config.adaptive_params
    )
