"""Apply a defense to a saved model: gather the defender's data, run, evaluate, and save everything.

The output directory of a repair holds the repaired model (model.safetensors + model.json, whose sidecar
records the defense, its configuration and the pruned neurons), report.json (every neuron's score, the
thresholds, samples used and time), scores.png and neurons.png, and metrics.json (ACC / ASR before and
after, when the attack is known).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import io
from .attacks import Attack
from .data import ImageSet
from .defenses import BNP, Defense, DefenseData, DefenseReport
from .metrics import attack_success_rate, clean_accuracy

REPORT = "report.json"


@dataclass
class RepairResult:
    model: nn.Module
    report: DefenseReport
    metrics: dict[str, Any]


def evaluate_model(model: nn.Module, test: ImageSet | None, attack: Attack | None) -> dict[str, float]:
    """ACC (and ASR when the attack is known) in percent; empty without a test set."""
    if test is None:
        return {}
    out = {"acc": 100.0 * clean_accuracy(model, test)}
    if attack is not None:
        out["asr"] = 100.0 * attack_success_rate(model, test, attack)
    return out


def repair(
    model: nn.Module,
    defense: Defense,
    data: DefenseData,
    *,
    card: dict[str, Any],
    out_dir: str | Path | None = None,
    test: ImageSet | None = None,
    attack: Attack | None = None,
    plots: bool = True,
    before: dict[str, float] | None = None,
) -> RepairResult:
    """Run `defense` on `model` and (optionally) save the results into `out_dir`.

    Args:
        model: the suspicious model (not modified).
        defense: a configured defense.
        data: the defender's data.
        card: the model's sidecar; the repaired model's sidecar extends it with the defense record.
        out_dir: where to write the repaired model, report, plots and metrics (None: write nothing).
        test, attack: when given, ACC and ASR are measured before and after.
        plots: write scores.png and neurons.png.
        before: metrics of `model` measured already (skips measuring them again).
    """
    repaired, report = defense.run(model, data)
    metrics: dict[str, Any] = {"method": defense.name, "pruned": report.num_pruned, "seconds": report.seconds,
                               "samples": report.samples}
    if test is not None:
        metrics["before"] = before if before is not None else evaluate_model(model, test, attack)
        metrics["after"] = evaluate_model(repaired, test, attack)
    if out_dir is not None:
        out = Path(out_dir)
        new_card = copy.deepcopy(card)
        new_card.pop("provenance", None)
        new_card["parent_weights_sha256"] = card.get("weights_sha256")
        new_card["defense"] = {"method": defense.name, "config": report.config, "pruned": report.pruned,
                               "num_pruned": report.num_pruned}
        io.save_checkpoint(out, repaired, new_card, attack=attack)
        if plots:
            from .plots import plot_neurons, plot_scores

            if isinstance(defense, BNP) and data.clean is not None:
                defense.add_value_histograms(model, data.clean, report)
            plot_scores(report, out / "scores.png")
            plot_neurons(report, out / "neurons.png")
        report.save(out / REPORT)
        io.atomic_write_json(out / io.METRICS, metrics)
    return RepairResult(repaired, report, metrics)


def defender_data_from_run(
    card: dict[str, Any], attack: Attack | None, *, method_needs: set[str], clean_samples: int, seed: int,
    data_dir: str | None = None,
):
    """The defender's data for a run made by `bdprune train`: its mixed training set (for EP) and
    `clean_samples` clean samples drawn with `seed` from its clean reserve (for BNP and the baselines).

    Returns:
        (DefenseData, test set)
    """
    from .runs import rebuild_run_data

    run = rebuild_run_data(card, attack, data_dir)
    clean = None
    if "clean" in method_needs:
        if clean_samples > len(run.reserve):
            raise ValueError(f"asked for {clean_samples} clean samples; the run's clean reserve holds {len(run.reserve)}")
        clean = run.reserve.sample(clean_samples, torch.Generator().manual_seed(seed))
    data = DefenseData(
        clean=clean,
        train=run.train if "train" in method_needs else None,
        train_poisoned=run.poisoned if "train" in method_needs else None,
    )
    return data, run.test
