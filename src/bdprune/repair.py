"""Repair a suspicious model: load it, gather the defender's data, run a defense, evaluate, save everything.

The library behind `bdprune defend`, `evaluate` and `compare`, for a Python user as much as for the command:

    >>> from bdprune import repair
    >>> from bdprune.defenses import BNP
    >>> suspect = repair.load_suspect("runs/badnets")            # or repair.load_foreign(weights, arch=..., dataset=...)
    >>> data, test = repair.defender_data(suspect, BNP.needs, clean_samples=500)
    >>> result = repair.repair(suspect, BNP(u=3), data, test=test, out_dir="runs/badnets-bnp")
    >>> result.metrics["after"]                                   # {"acc": ..., "asr": ...}

The output directory of a repair holds the repaired model (model.safetensors + model.json, whose sidecar
records the defense, its configuration and the pruned neurons), report.json (every neuron's score, the
thresholds, samples used and time), scores.png and neurons.png, and metrics.json (ACC / ASR before and
after, when the attack is known).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Collection

import torch
from torch import nn

from .attacks import Attack
from .card import DefenseRecord, ModelCard
from .checkpoint import METRICS, check_shapes, load_checkpoint, save_checkpoint
from .data import DatasetNotFoundError, ImageSet, get_spec, load_dataset, load_image_folder
from .defenses import Defense, DefenseData, DefenseReport
from .errors import CheckpointError, InvalidInput
from .files import atomic_write_json, check_output_dir, load_state_dict_file, staged_output
from .metrics import evaluate
from .models import create_model, load_weights, model_parameters, weights_of
from .params import convert
from .plots import plot_neurons, plot_scores
from .runs import rebuild_run_data

REPORT = "report.json"


@dataclass
class Suspect:
    """A suspicious model and what is known about it: its sidecar, and the attack it was trained with
    (known only for runs made by `bdprune train`, to measure the ASR)."""

    model: nn.Module
    card: ModelCard
    attack: Attack | None = None
    source: Path | None = None  # the run directory or weights file it came from (never overwritten)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) the model takes, from its attack or its dataset."""
        if self.card.attack is not None:
            return tuple(self.card.attack.image_shape)  # type: ignore[return-value]
        return get_spec(self.card.dataset).image_shape if self.card.dataset else None


def load_suspect(run_dir: str | Path, *, device: str | torch.device = "cpu") -> Suspect:
    """A model saved by bdprune (`bdprune train` or `defend`), with its attack; nothing is unpickled."""
    ckpt = load_checkpoint(run_dir, map_location=device)
    return Suspect(ckpt.model, ckpt.card, ckpt.attack, ckpt.directory)


def load_foreign(weights: str | Path, *, arch: str, dataset: str, model_args: dict[str, Any] | None = None,
                 device: str | torch.device = "cpu") -> Suspect:
    """A state dict from elsewhere (.safetensors, or .pt/.pth read with weights_only) in the architecture
    `arch`, for images of `dataset` (its shape, classes and normalisation)."""
    spec = get_spec(dataset)
    given = convert(f"model {arch!r}", model_parameters(arch), model_args or {})  # strings: parsed by type
    arch_args = {"num_classes": spec.num_classes, "in_channels": spec.image_shape[0], "mean": list(spec.mean),
                 "std": list(spec.std), **given}
    state = load_state_dict_file(weights)
    check_shapes(weights_of(create_model(arch, meta=True, **arch_args)), {k: tuple(v.shape) for k, v in state.items()},
                 weights)
    model = create_model(arch, **arch_args)
    try:
        load_weights(model, state)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not fit {arch}: {str(exc).splitlines()[0]}") from None
    card = ModelCard(architecture=arch, arch_args=arch_args, dataset=dataset,
                     normalization={"mean": list(spec.mean), "std": list(spec.std)}, source_weights=str(weights))
    return Suspect(model.to(device).eval(), card, source=Path(weights))


def load(run_dir: str | Path | None = None, *, weights: str | Path | None = None, arch: str | None = None,
         dataset: str | None = None, model_args: dict[str, Any] | None = None,
         device: str | torch.device = "cpu") -> Suspect:
    """A run directory (`load_suspect`), or a foreign state dict `weights` with its `arch` and `dataset`."""
    if weights is not None:
        if arch is None or dataset is None:
            raise InvalidInput("a foreign weights file needs --arch (e.g. resnet18 or torchvision:resnet18) and --dataset")
        return load_foreign(weights, arch=arch, dataset=dataset, model_args=model_args, device=device)
    if run_dir is None:
        raise InvalidInput("give a run directory, or a foreign model with --weights, --arch and --dataset")
    return load_suspect(run_dir, device=device)


def test_set(suspect: Suspect, data_dir: str | None = None, *, required: bool = True) -> ImageSet | None:
    """The clean test split of the suspect's dataset (None if it is not there and not `required`)."""
    if suspect.card.dataset is None:
        raise InvalidInput("the sidecar names no dataset to evaluate on")
    run = suspect.card.run
    root = data_dir if data_dir is not None else run.config.data_dir if run is not None else None
    try:
        return load_dataset(suspect.card.dataset, root, train=False)
    except DatasetNotFoundError:
        if required:
            raise
        return None


def defender_data(
    suspect: Suspect, needs: Collection[str], *, clean_samples: int = 500, seed: int = 0, data_dir: str | None = None,
    train_dir: str | Path | None = None, clean_dir: str | Path | None = None,
) -> tuple[DefenseData, ImageSet | None]:
    """What the defender has, and the test set to measure the repair on.

    For a run made by `bdprune train`: its mixed training set (for EP) and `clean_samples` clean samples
    drawn with `seed` from its clean reserve (for BNP and the baselines), rebuilt from its record. For a
    foreign model: the training set from `train_dir` (one folder per class), clean samples from `clean_dir`
    or the dataset's training split.

    Args:
        needs: what the defenses need: "train", "clean" (the union of their `needs`).
    """
    image_shape = suspect.image_shape
    if "clean" in needs and not clean_samples >= 1:
        raise InvalidInput(f"the number of clean samples must be at least 1, got {clean_samples}")
    draw = torch.Generator().manual_seed(seed)
    if suspect.card.run is not None:
        run = rebuild_run_data(suspect.card, suspect.attack, data_dir)
        clean = None
        if "clean" in needs:
            if clean_samples > len(run.reserve):
                raise InvalidInput(f"asked for {clean_samples} clean samples; the run's clean reserve holds "
                                   f"{len(run.reserve)}")
            clean = run.reserve.sample(clean_samples, draw)
        train = "train" in needs
        data = DefenseData(clean=clean, train=run.train if train else None,
                           train_poisoned=run.poisoned if train else None, image_shape=image_shape)
        return data, run.test
    dataset = suspect.card.dataset
    if dataset is None:
        if needs:
            raise InvalidInput("a foreign model needs its dataset (--dataset) for its shape, classes and clean samples")
        return DefenseData(), None
    spec = get_spec(dataset)
    data = DefenseData(image_shape=image_shape)
    if "train" in needs:
        if train_dir is None:
            raise InvalidInput("EP needs the (possibly poisoned) training set: pass --train-dir DIR (one folder per class)")
        data.train = _folder(train_dir, spec)
    if "clean" in needs:
        pool = _folder(clean_dir, spec) if clean_dir is not None else load_dataset(dataset, data_dir, train=True)
        if clean_samples > len(pool):
            raise InvalidInput(f"asked for {clean_samples} clean samples; only {len(pool)} are available")
        data.clean = pool.sample(clean_samples, draw)
    return data, test_set(suspect, data_dir, required=False)


def _folder(root: str | Path, spec) -> ImageSet:
    """Images in one folder per class, resized to the dataset's shape; as many classes as the model has."""
    data = load_image_folder(Path(root), grayscale=spec.image_shape[0] == 1, size=spec.image_shape[1:])
    if data.num_classes != spec.num_classes:
        raise InvalidInput(f"{root} has {data.num_classes} class folders, but a {spec.name} model has "
                           f"{spec.num_classes} classes; give one folder per class of the model")
    return data


@dataclass
class RepairResult:
    model: nn.Module
    report: DefenseReport
    metrics: dict[str, Any]
    written: list[str] = field(default_factory=list)  # the files of the output directory


def repair(
    suspect: Suspect,
    defense: Defense,
    data: DefenseData,
    *,
    test: ImageSet | None = None,
    out_dir: str | Path | None = None,
    plots: bool = True,
    before: dict[str, float] | None = None,
) -> RepairResult:
    """Run `defense` on the suspect's model and (optionally) save the results into `out_dir`.

    Args:
        suspect: the suspicious model (not modified) and its sidecar.
        defense: a configured defense.
        data: the defender's data.
        test: when given, ACC (and ASR, when the attack is known) are measured before and after.
        out_dir: where to write the repaired model, report, plots and metrics (None: write nothing).
        plots: write scores.png and neurons.png.
        before: metrics of the suspect measured already (skips measuring them again).
    """
    inputs = [suspect.source] if suspect.source is not None else []
    if out_dir is not None:
        check_output_dir(out_dir, inputs=inputs)  # before the defense runs, not after
    repaired, report = defense.run(suspect.model, data)
    metrics: dict[str, Any] = {"method": defense.name, "pruned": report.num_pruned, "seconds": report.seconds,
                               "samples": report.samples}
    if test is not None:
        metrics["before"] = before if before is not None else evaluate(suspect.model, test, suspect.attack)
        metrics["after"] = evaluate(repaired, test, suspect.attack)
    written: list[str] = []
    if out_dir is not None:
        with staged_output(out_dir, inputs=inputs) as out:  # all or nothing: a killed repair leaves no directory that looks done
            card = replace(suspect.card, provenance=None, weights_sha256=None, attack=None,
                           parent_weights_sha256=suspect.card.weights_sha256,
                           defense=DefenseRecord(method=defense.name, config=report.config, pruned=report.pruned,
                                                 num_pruned=report.num_pruned))
            save_checkpoint(out, repaired, card, attack=suspect.attack)
            if plots:
                defense.add_diagnostics(suspect.model, data, report)
                plot_scores(report, out / "scores.png")
                plot_neurons(report, out / "neurons.png")  # none when no neuron could be scored
            report.save(out / REPORT)
            atomic_write_json(out / METRICS, metrics)
            written = sorted(p.name for p in out.iterdir())
    return RepairResult(repaired, report, metrics, written)
