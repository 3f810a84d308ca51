"""How big the reproduction is: the presets of `bdprune reproduce` and the runs they train.

A preset is a `Setting` per dataset role: "main" (the paper's CIFAR-10 experiments) and "large" (its
Tiny-ImageNet Table 2). A setting names one of `bdprune.config`'s run presets *by reference* (so a change
there, e.g. to the `cpu` preset, carries over here), the fields replaced in it, and the defense
hyperparameters it changes; EP and BNP always run with the library's defaults except where the paper itself
states a setting (u = 4 on Tiny-ImageNet). The `paper` preset lists candidate settings: the paper's dataset
when its files are there, else the same training recipe on Fashion-MNIST.

* `smoke`: seconds per cell (a few hundred Fashion-MNIST images, ResNet-18 of width 4, one epoch, tiny
  fits of the learned attacks, a few steps of the fine-tuning defenses). Numbers mean nothing; the
  plumbing is what it tests (CI runs it).
* `cpu`: `bdprune.config`'s `cpu` preset (Fashion-MNIST, 2 CPU cores), library defaults for every defense
  (EP's consensus rule, BNP's guarded MAD rule), with rows for the paper's rule beside them in Tables 1 and 2.
* `paper`: the paper's settings (ResNet-18 width 64, 150 epochs, crop + flip; EP and BNP with the paper's
  z-score rule, u = 3, u = 4 and 5000 clean samples on Tiny-ImageNet), on CIFAR-10 / Tiny-ImageNet when
  present: a GPU's work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ...attacks import ATTACKS
from ...config import RunConfig
from ...config import preset as run_preset
from ...data import DatasetNotFoundError, get_spec, load_dataset
from ...errors import UnknownName

# The paper's attacks (section 5.1) as run options; "rate" is the paper's rho, a fraction of the training set.
ATTACK_RUNS: dict[str, dict[str, Any]] = {
    "BadNets (A2O)": {"attack": "badnets"},
    "BadNets (A2A)": {"attack": "badnets", "mode": "all-to-all"},
    "CLA": {"attack": "cla"},
    "WaNet": {"attack": "wanet"},
    "Blended": {"attack": "blended"},
    "Refool": {"attack": "refool"},
    "IAB": {"attack": "iab"},
    "SSBA": {"attack": "ssba"},
    "WB": {"attack": "wb"},  # Table 9 only (appendix G.2)
}
# Small fits of the learned attacks (smoke): applied to the attacks that declare them.
SMOKE_FITS = {
    "width": 4,
    "bits": 8,
    "fit_steps": 5,
    "mask_epochs": 1,
    "mask_subset": 200,
    "adv_width": 2,
    "adv_epochs": 1,
    "adv_steps": 1,
    "adv_subset": 200,
    "steps": 2,
}


@dataclass(frozen=True)
class Setting:
    """One dataset's runs and defenses within a preset.

    Attributes:
        base: a run preset of `bdprune.config` (`cpu`, `paper-cifar10`, ...), read when the runs are built.
        fields: RunConfig fields replaced in it (e.g. a training subset).
        train: TrainConfig fields replaced in it.
        attack_params: attack hyperparameters, applied to each attack that declares them (smoke's small fits).
        defenses: per defense, hyperparameters replacing the library's defaults.
        clean_samples: clean samples the defender has (the paper: 500 on CIFAR-10, 5000 on Tiny-ImageNet).
        paper_dataset: the dataset of the paper's numbers this setting reproduces exactly, if it does.
        paper_u: u of the paper's rule (3; 4 on Tiny-ImageNet), used by the `paper` preset, the rows "EP / BNP
            (paper's rule)" and the u sweeps (Table 7, Figure 9).
    """

    base: str
    fields: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    attack_params: dict[str, Any] = field(default_factory=dict)
    defenses: dict[str, dict[str, Any]] = field(default_factory=dict)
    clean_samples: int = 500
    paper_dataset: str | None = None
    paper_u: float = 3.0

    @property
    def paper_rule(self) -> dict[str, Any]:
        """EP's and BNP's options for the paper's own rule (mean -/+ u * std per layer, no held-out check, as in
        the paper); the u sweeps use it."""
        return {"rule": "zscore", "u": self.paper_u, "max_harm": None, "then": "none"}

    def dataset(self) -> str:
        return run_preset(self.base, **self.fields).dataset

    def describe(self) -> str:
        c = self.run_config("badnets", 0)
        width = c.model_args.get("base_width", "")
        subset = f", {c.train_subset} training samples" if c.train_subset else ""
        return (
            f"{c.dataset}, {c.model} width {width}, {c.train.epochs} epochs, batch {c.train.batch_size}, "
            f"augment {c.augment}{subset}, {self.clean_samples} clean samples (`bdprune.config` preset "
            f"`{self.base}`)"
        )

    def run_config(
        self,
        attack: str | None,
        seed: int,
        *,
        rate: float | None = None,
        attack_fields: dict[str, Any] | None = None,
        **fields: Any,
    ) -> RunConfig:
        """The RunConfig of one run: the base preset, this setting's fields, then the run's own.

        Args:
            attack: a registered attack, or None for a clean model.
            seed: the run's seed.
            rate: the paper's poisoning rate rho (a fraction of the training set); for a clean-label attack,
                whose rate counts the target class only, it becomes rho * classes (capped at 1).
            attack_fields: more run fields of the attack (its mode).
            fields: other RunConfig fields (model, model_args, adaptive, adaptive_params, bn_reparam).
        """
        config = run_preset(self.base, **{**self.fields, **(attack_fields or {}), **fields}, attack=attack, seed=seed)
        config = config.with_train(**self.train)
        if attack is None:
            config.attack_params = {}
            return config
        cls = ATTACKS.get(attack)
        declared = cls.parameters()
        # the base's attack options (a 5x5 patch on Tiny-ImageNet) apply to the attacks that have them
        given = {**config.attack_params, **self.attack_params}
        config.attack_params = {k: v for k, v in given.items() if k in declared}
        rho = config.rate if rate is None else rate
        config.rate = min(1.0, rho * get_spec(config.dataset).num_classes) if cls.clean_label else rho
        return config

    def defense_params(self, method: str, **given: Any) -> dict[str, Any]:
        return {**self.defenses.get(method, {}), **given}


@dataclass(frozen=True)
class Preset:
    """A named size of the reproduction.

    Attributes:
        name: `smoke`, `cpu` or `paper`.
        about: one line for the report.
        roles: dataset role ("main", "large") -> candidate settings, the first whose data is present wins.
        val_samples: reserve samples (never the defender's clean ones) for choosing u in Table 7.
        test_samples: evaluate on this many test samples (a fixed draw), None: all of them.
        probe_samples: held-out samples for Figure 2 (pre-activation distributions).
        sensitivity_samples: held-out samples for Figure 7 (one forward pass over them per neuron).
        sample_counts: clean-sample counts of the BNP ablation (section 5.3).
        u_grid: thresholds u swept by Table 7 (EP, BNP; each measured on the held-out samples only).
        curve_grid: thresholds u of Figure 9 (each measured on the whole test set).
        anp_thresholds: mask thresholds swept for ANP in Table 7.
        gpu: a task asks the executor for a GPU.
    """

    name: str
    about: str
    roles: dict[str, tuple[Setting, ...]]
    val_samples: int = 1000
    test_samples: int | None = None
    probe_samples: int = 1000
    sensitivity_samples: int = 250
    sample_counts: tuple[int, ...] = (10, 20, 50, 100, 200, 500)
    u_grid: tuple[float, ...] = (
        8.0,
        7.0,
        6.0,
        5.0,
        4.5,
        4.0,
        3.75,
        3.5,
        3.25,
        3.0,
        2.75,
        2.5,
        2.25,
        2.0,
        1.75,
        1.5,
        1.25,
        1.0,
        0.75,
        0.5,
    )
    curve_grid: tuple[float, ...] = (6.0, 5.0, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0)
    anp_thresholds: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    gpu: bool = False

    def setting(self, role: str, available: Callable[[str], bool]) -> Setting:
        """The first candidate setting of `role` whose dataset `available` says is present."""
        candidates = self.roles[role]
        for candidate in candidates:
            if available(candidate.dataset()):
                return candidate
        return candidates[-1]  # training will say where the files are expected and how to get them


SMOKE = Setting(
    base="cpu",
    fields={"train_subset": 400, "model_args": {"base_width": 4}},
    train={"epochs": 1},
    attack_params=SMOKE_FITS,
    clean_samples=100,
    defenses={
        "ft": {"epochs": 1},
        "fp": {"epochs": 1},
        "nad": {"teacher_epochs": 1, "epochs": 1},
        "anp": {"iterations": 5},
        "ft-sam": {"epochs": 1},
    },
)
CPU = Setting(base="cpu")
PAPER_FALLBACK_FIELDS = {"dataset": "fashion-mnist", "augment": "crop+flip"}


def _paper_defenses(u: float = 3.0) -> dict[str, dict[str, Any]]:
    """The paper preset's defense options: ANP's 2000 iterations, EP and BNP under the paper's rule at `u` (the
    library's defaults are the cpu preset's)."""
    return {"anp": {"iterations": 2000}, **{m: {"rule": "zscore", "u": u, "then": "none"} for m in ("ep", "bnp")}}


PAPER_CIFAR = Setting(base="paper-cifar10", paper_dataset="cifar10", defenses=_paper_defenses())
PAPER_TINY = Setting(
    base="paper-tiny-imagenet",
    paper_dataset="tiny-imagenet",
    clean_samples=5000,
    paper_u=4.0,
    defenses=_paper_defenses(4.0),
)
PAPER_FASHION = Setting(base="paper-cifar10", fields=PAPER_FALLBACK_FIELDS, defenses=_paper_defenses())

REPRODUCTION_PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        "smoke",
        "tiny runs (400 Fashion-MNIST images, width 4, 1 epoch): tests the plumbing, the numbers mean nothing",
        {"main": (SMOKE,), "large": (SMOKE,)},
        val_samples=200,
        test_samples=500,
        probe_samples=200,
        sensitivity_samples=50,
        sample_counts=(10, 50, 100),
        u_grid=(6.0, 4.0, 3.0, 2.0, 1.0),
        curve_grid=(4.0, 3.0, 2.0),
        anp_thresholds=(0.1, 0.2, 0.5, 0.9),
    ),
    "cpu": Preset(
        "cpu",
        "bdprune.config's `cpu` preset on Fashion-MNIST (2 CPU cores), library defaults",
        {"main": (CPU,), "large": (CPU,)},
    ),
    "paper": Preset(
        "paper",
        "the paper's settings (CIFAR-10 / Tiny-ImageNet when present, else Fashion-MNIST): a GPU's work",
        {"main": (PAPER_CIFAR, PAPER_FASHION), "large": (PAPER_TINY, PAPER_FASHION)},
        sensitivity_samples=1000,
        gpu=True,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in REPRODUCTION_PRESETS:
        raise UnknownName(f"unknown reproduce preset {name!r}; known: {', '.join(REPRODUCTION_PRESETS)}")
    return REPRODUCTION_PRESETS[name]


def dataset_available(data_dirs: dict[str, str]) -> Callable[[str], bool]:
    """available(dataset): its test split loads from `data_dirs[dataset]` or its usual place."""
    cache: dict[str, bool] = {}

    def available(name: str) -> bool:
        if name not in cache:
            try:
                load_dataset(name, data_dirs.get(name), train=False)
                cache[name] = True
            except DatasetNotFoundError:
                cache[name] = False
        return cache[name]

    return available


def with_data_dir(setting: Setting, data_dirs: dict[str, str]) -> Setting:
    """The setting with the user's directory of its dataset (not part of any run's identity)."""
    where = data_dirs.get(setting.dataset())
    return replace(setting, fields={**setting.fields, "data_dir": where}) if where else setting


def run_key(config: RunConfig) -> str:
    """A run's identity: the hash of its configuration (where the data lies is not part of it)."""
    values = {k: v for k, v in config.to_dict().items() if k != "data_dir"}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]
