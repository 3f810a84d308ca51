"""A backdoor run: dataset, split, poisoning, model, training, evaluation, and the record that rebuilds it.

The split follows the paper's official code: most of the training file becomes the (mixed) training set,
and a clean reserve that is never poisoned nor trained on is kept for the defender (the paper's 500-image
clean subset is drawn from it). Every random choice comes from a generator seeded from the run's seed,
and every index that matters (reserve, training subset, poisoned samples) is written to the sidecar, so
`rebuild_run_data` reproduces the exact mixed training set a model saw.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import io
from .attacks import Attack, choose_cross_positions, create_attack, cross_at, poison_at, poison_training_set
from .attacks import ATTACKS, LearnedAttack, choose_poison_positions, fit_or_load
from .data import Augment, DatasetSpec, ImageSet, get_spec, load_dataset
from .metrics import attack_success_rate, backdoor_loss, clean_accuracy
from .models import create_model
from .attacks.adaptive import reparameterize_bn
from .train import TrainConfig, train_model


AUGMENTS = ("crop+flip", "crop", "flip", "none")


def augmentation(kind: str, spec: DatasetSpec) -> Augment | None:
    """The training augmentation `kind` for a dataset: its crop padding and its flip rule."""
    crop, flip = "crop" in kind, "flip" in kind and spec.augment.flip
    if not crop and not flip:
        return None
    return Augment(pad=spec.augment.pad if crop else 0, flip=flip)


@dataclass
class RunConfig:
    """Everything that defines a backdoored (or clean) training run."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None  # None: the dataset's usual place
    model: str = "resnet18"
    model_args: dict[str, Any] = field(default_factory=dict)  # e.g. {"base_width": 32}
    attack: str | None = "badnets"  # None: a clean model
    attack_params: dict[str, Any] = field(default_factory=dict)  # e.g. {"size": 3}; target/mode below
    target: int = 0
    mode: str = "all-to-one"
    rate: float = 0.1  # poisoning rate rho
    reserve_fraction: float = 0.05  # clean samples of the training file kept out for the defender
    train_subset: int | None = None  # train on this many samples of the rest (CPU presets)
    augment: str = "crop+flip"  # "crop+flip", "crop", "flip" or "none", with the dataset's padding and flip rule
    seed: int = 0
    fit_budget: str = "paper"  # learned attacks' fitting sizes (IAB, SSBA, CLA): "cpu" (minutes) or "paper"
    adaptive: str | None = None  # appendix G.2 objective: "preact-l2" (Eq. 4) or "ml-mmd"; None: plain CE
    adaptive_params: dict[str, Any] = field(default_factory=dict)  # e.g. {"weight": 0.01}
    bn_reparam: bool = False  # appendix G.1: after training, move BN statistics to benign data (same function)
    train: TrainConfig = field(default_factory=TrainConfig)  # its `augment` is set from the dataset

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if not 0.0 < self.reserve_fraction < 1.0:
            raise ValueError(f"reserve_fraction must lie in (0, 1), got {self.reserve_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown run options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


# CPU presets run on 2 cores in minutes; "paper" presets are the paper's settings (a GPU's work).
# The CPU preset trains without random crops: in 2 to 3 epochs the crop slows convergence badly (ResNet-18
# width 16, 12k Fashion-MNIST samples, 3 epochs: ACC 79.4 / ASR 47.8 with crop + flip, 85.9 / 99.5 with
# flip only, 86.4 / 99.6 with none), while the paper's 150 epochs absorb it.
PRESETS: dict[str, RunConfig] = {
    "cpu": RunConfig(
        dataset="fashion-mnist", model="resnet18", model_args={"base_width": 16}, augment="flip", fit_budget="cpu",
        train=TrainConfig(epochs=2, batch_size=128, lr=0.1),
    ),
    "paper-cifar10": RunConfig(
        dataset="cifar10", model="resnet18", model_args={"base_width": 64},
        train=TrainConfig(epochs=150, batch_size=128, lr=0.1),
    ),
    "paper-tiny-imagenet": RunConfig(
        dataset="tiny-imagenet", model="resnet18", model_args={"base_width": 64}, attack_params={"size": 5},
        train=TrainConfig(epochs=100, batch_size=128, lr=0.1),
    ),
}


def preset(name: str, **overrides: Any) -> RunConfig:
    """A copy of a preset with some fields replaced (unknown fields are an error)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    base = PRESETS[name].to_dict()
    unknown = set(overrides) - set(base)
    if unknown:
        raise ValueError(f"unknown run options {sorted(unknown)}")
    base.update(overrides)
    return RunConfig.from_dict(base)


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
    if getattr(ATTACKS.get(config.attack), "learned", False):
        params.setdefault("budget", config.fit_budget)
    return create_attack(
        config.attack, image_shape=spec.image_shape, num_classes=spec.num_classes,
        generator=_generator(config.seed, 3), target=config.target, mode=config.mode, **params,
    )


def split_training_file(full: ImageSet, config: RunConfig) -> tuple[ImageSet, ImageSet]:
    """(training part, clean reserve) of the training file, by the run's seed."""
    n_reserve = max(1, round(config.reserve_fraction * len(full)))
    n_train = len(full) - n_reserve
    if config.train_subset is not None:
        if not 0 < config.train_subset <= n_train:
            raise ValueError(f"train_subset must lie in [1, {n_train}], got {config.train_subset}")
        n_train = config.train_subset
    reserve, train = full.split([n_reserve, n_train], _generator(config.seed, 1))
    return train, reserve


def prepare_run_data(
    config: RunConfig, *, device: str | torch.device = "cpu", cache_dir: str | Path | None = None,
    progress: bool = False,
) -> RunData:
    """Load, split and poison the data of a run.

    A learned attack (IAB, SSBA, CLA) is first fitted on the clean training part, on `device`, or loaded
    from `cache_dir` (see `bdprune.attacks.fit_or_load`). An attack that trains jointly with the
    classifier (IAB) gets its poisoned positions drawn here but its samples poisoned during training.
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
    if attack is not None and config.rate > 0 and getattr(attack, "trains_jointly", False):
        poisoned[choose_poison_positions(train.labels, attack, config.rate, _generator(config.seed, 2))] = True
    elif attack is not None and config.rate > 0:
        train, positions = poison_training_set(train, attack, config.rate, _generator(config.seed, 2))
        poisoned[positions] = True
        cross_positions = choose_cross_positions(train.labels, attack, positions, _generator(config.seed, 5))
        train = cross_at(train, attack, cross_positions)
        cross[cross_positions] = True
    return RunData(spec=spec, train=train, poisoned=poisoned, reserve=reserve, test=test, attack=attack, cross=cross)


def rebuild_run_data(card: dict[str, Any], attack: Attack | None, data_dir: str | None = None) -> RunData:
    """The exact data of a saved run, from the indices its sidecar records.

    Args:
        card: the run's sidecar.
        attack: the attack loaded with the checkpoint (its trigger tensors are the recorded ones).
        data_dir: where the dataset lives, if not where the run found it.
    """
    run = card.get("run")
    if not run:
        raise io.CheckpointError("this checkpoint has no run record (it was not made by `bdprune train`)")
    config = RunConfig.from_dict(run["config"])
    spec = get_spec(config.dataset)
    root = data_dir if data_dir is not None else config.data_dir
    full = load_dataset(config.dataset, root, train=True)
    test = load_dataset(config.dataset, root, train=False)
    position = {int(i): p for p, i in enumerate(full.indices.tolist())}
    reserve = full.subset([position[i] for i in run["reserve_indices"]])
    if run.get("train_indices") is not None:
        train = full.subset([position[i] for i in run["train_indices"]])
    else:
        keep = torch.ones(len(full), dtype=torch.bool)
        keep[[position[i] for i in run["reserve_indices"]]] = False
        train = full.subset(keep.nonzero().flatten())
    poisoned = torch.zeros(len(train), dtype=torch.bool)
    if attack is not None and run["poisoned_indices"]:
        where = {int(i): p for p, i in enumerate(train.indices.tolist())}
        positions = torch.tensor([where[i] for i in run["poisoned_indices"]], dtype=torch.int64)
        train = poison_at(train, attack, positions)
        poisoned[positions] = True
    cross = torch.zeros(len(train), dtype=torch.bool)
    if attack is not None and run.get("cross_indices"):
        where = {int(i): p for p, i in enumerate(train.indices.tolist())}
        cross_positions = torch.tensor([where[i] for i in run["cross_indices"]], dtype=torch.int64)
        train = cross_at(train, attack, cross_positions)
        cross[cross_positions] = True
    return RunData(spec=spec, train=train, poisoned=poisoned, reserve=reserve, test=test, attack=attack, cross=cross)


def build_model(config: RunConfig, spec: DatasetSpec) -> nn.Module:
    """The run's network, initialised from the run's seed without touching the global RNG state."""
    args = {"num_classes": spec.num_classes, "in_channels": spec.image_shape[0],
            "mean": list(spec.mean), "std": list(spec.std), **config.model_args}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = create_model(config.model, **args)
    model.arch_args = args  # type: ignore[attr-defined]  (recorded in the sidecar)
    return model


def evaluate(model: nn.Module, data: RunData) -> dict[str, float]:
    """ACC on the clean test set and, for a backdoored run, ASR and backdoor loss (in percent / nats)."""
    result = {"acc": 100.0 * clean_accuracy(model, data.test)}
    if data.attack is not None:
        result["asr"] = 100.0 * attack_success_rate(model, data.test, data.attack)
        result["backdoor_loss"] = backdoor_loss(model, data.test, data.attack)
    return result


def run_record(config: RunConfig, data: RunData) -> dict[str, Any]:
    """The part of the sidecar that rebuilds the run's data."""
    subset = config.train_subset is not None
    return {
        "config": config.to_dict(),
        "reserve_indices": data.reserve.indices.tolist(),
        "train_indices": data.train.indices.tolist() if subset else None,
        "poisoned_indices": data.train.indices[data.poisoned].tolist(),
        "cross_indices": data.train.indices[data.cross].tolist() if data.cross is not None else [],
    }


def train_run(
    config: RunConfig, out_dir: str | Path, *, device: str | torch.device = "cpu", progress: bool = True,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Prepare the data, train, evaluate and save a run into `out_dir`; returns its metrics.

    The directory gets model.safetensors, model.json (the sidecar with the run record) and metrics.json
    (and attack.safetensors: the trigger, or a learned attack's fitted networks). `cache_dir` caches the
    fits of learned attacks (None: no cache).
    """
    fit_start = time.perf_counter()
    data = prepare_run_data(config, device=device, cache_dir=cache_dir, progress=progress)
    fit_seconds = time.perf_counter() - fit_start
    model = build_model(config, data.spec).to(device)
    config = replace(config, train=replace(config.train, augment=augmentation(config.augment, data.spec)))
    start = time.perf_counter()
    adaptive = adaptive_loss(config, data)
    if getattr(data.attack, "trains_jointly", False):  # IAB: its generator learns with the classifier
        if adaptive is not None:
            raise ValueError(f"{data.attack.name} trains with its own objective; it cannot be combined with --adaptive")
        history = data.attack.train_jointly(model, data.train, data.poisoned, config.train,  # type: ignore[union-attr]
                                            generator=_generator(config.seed, 4), progress=progress)
        # The mixed set as the model ended up seeing it: backdoor samples with the final trigger.
        data = replace(data, train=poison_at(data.train, data.attack, data.poisoned.nonzero().flatten()))
    else:
        history = train_model(model, data.train, config.train, generator=_generator(config.seed, 4),
                              progress=progress, **({"loss_fn": adaptive} if adaptive is not None else {}))
    if config.bn_reparam:
        model = reparameterize_bn(model, benign_training_samples(data))
    seconds = time.perf_counter() - start
    metrics = {**evaluate(model, data), "train_seconds": seconds, "history": history,
               "train_samples": len(data.train), "poisoned_samples": int(data.poisoned.sum())}
    if data.cross is not None and data.cross.any():
        metrics["cross_samples"] = int(data.cross.sum())
    if isinstance(data.attack, LearnedAttack):
        metrics["attack_fit"] = {**data.attack.fit_log, "seconds_incl_data": fit_seconds}
    if adaptive is not None:
        metrics["adaptive_regularizer_last_batch"] = adaptive.last_regularizer
    card = {
        "architecture": config.model,
        "arch_args": model.arch_args,  # type: ignore[attr-defined]
        "dataset": config.dataset,
        "normalization": {"mean": list(data.spec.mean), "std": list(data.spec.std)},
        "seed": config.seed,
        "run": run_record(config, data),
    }
    io.save_checkpoint(out_dir, model, card, attack=data.attack)
    io.atomic_write_json(Path(out_dir) / io.METRICS, metrics)
    return metrics


def benign_training_samples(data: RunData) -> ImageSet:
    """The training samples that are neither poisoned nor noise-mode: the benign data an attacker holds."""
    altered = data.poisoned | (data.cross if data.cross is not None else torch.zeros_like(data.poisoned))
    return data.train.subset((~altered).nonzero().flatten())


def adaptive_loss(config: RunConfig, data: RunData):
    """The run's appendix-G training objective, or None for plain cross-entropy."""
    from .attacks.adaptive import create_adaptive_loss

    if config.adaptive is None:
        if config.adaptive_params:
            raise ValueError("adaptive_params were given without an adaptive objective (--adaptive NAME)")
        return None
    if data.attack is None or not data.poisoned.any():
        raise ValueError(f"the adaptive objective {config.adaptive!r} hides a backdoor: it needs an attack and rate > 0")
    return create_adaptive_loss(config.adaptive, attack=data.attack, poisoned=data.poisoned, cross=data.cross,
                                **config.adaptive_params)


def with_train(config: RunConfig, **train_overrides: Any) -> RunConfig:
    """A copy of `config` with some training hyperparameters replaced."""
    return replace(config, train=replace(config.train, **train_overrides))
