"""The main job: train a BadNets model on Fashion-MNIST, then repair it with EP and BNP, and tabulate.

Defaults are the CPU preset (`bdprune.runs.PRESETS["cpu"]`). Each defense runs twice: with the paper's
rule (z-score, u = 3, the library default) and with the iterative z-score rule at the `u` in `VARIANTS`.
That variant and its u were chosen on development models (other seeds, BadNets and Blended, widths 16
and 32), judged on held-out clean and poisoned samples of the *training* file, never on the test set; see
`VARIANTS`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..defenses import create_defense
from ..files import atomic_write_json, staged_output
from ..repair import defender_data, load_suspect, repair
from ..runs import preset, train_run
from ..table import format_table
from ..train import option

CLEAN_SAMPLES = 500  # the paper's clean subset on CIFAR-10

# (label, method, options). On small CPU-trained models many neurons per layer are outliers at once, and
# together they inflate the layer's standard deviation so that the paper's one-shot rule stops short; the
# iterative rule re-applies it to the neurons left (see `bdprune.neurons.threshold`).
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("EP", "ep", {}),
    ("EP iterative", "ep", {"rule": "iterative", "u": 3.5}),
    ("BNP", "bnp", {}),
    ("BNP iterative", "bnp", {"rule": "iterative", "u": 3.5}),
)


@dataclass
class DemoConfig:
    out: str = option("runs/demo", "output directory (default runs/demo)")
    seed: int = option(0, "seed of the run and of the clean samples (default 0)")
    epochs: int | None = option(None, "training epochs (default: the CPU preset's)")
    width: int | None = option(None, "ResNet-18 base width (default: the CPU preset's)")
    train_subset: int | None = option(None, "train on this many samples only (a faster, rougher demo)")
    data_dir: str | None = option(None, "Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)")


def run_demo(config: DemoConfig, *, device: torch.device | str = "cpu", progress: bool = True,
             stream=None) -> dict[str, Any]:
    """Train, repair with EP and BNP, print a table, and write `summary.json` into `config.out` (the whole
    directory appears only when the demo is complete)."""
    with staged_output(config.out) as out:
        return _run_demo(config, out, device, progress, stream if stream is not None else sys.stdout)


def _run_demo(config: DemoConfig, out: Path, device: torch.device | str, progress: bool, stream) -> dict[str, Any]:
    run = preset("cpu", attack="badnets", seed=config.seed, train_subset=config.train_subset, data_dir=config.data_dir)
    if config.width is not None:
        run.model_args = {**run.model_args, "base_width": config.width}
    if config.epochs is not None:
        run.train.epochs = config.epochs
    print(f"[1/{len(VARIANTS) + 1}] training ResNet-18 (width {run.model_args['base_width']}) on Fashion-MNIST with BadNets "
          f"(3x3, rate {run.rate}, target {run.target}), {run.train.epochs} epochs", file=sys.stderr)
    start = time.perf_counter()
    trained = train_run(run, out / "backdoored", device=device, progress=progress)
    train_seconds = time.perf_counter() - start

    suspect = load_suspect(out / "backdoored", device=device)
    rows = [{"model": "backdoored", "rule": "", "ACC %": trained["acc"], "ASR %": trained["asr"], "pruned": 0,
             "time s": train_seconds, "samples": trained["train_samples"]}]
    before = {"acc": trained["acc"], "asr": trained["asr"]}
    # the configuration as trained (its augmentation resolved for the dataset), as model.json records it
    summary: dict[str, Any] = {"config": asdict(config), "run": suspect.card.run.config.to_dict(), "backdoored": trained,
                               "defenses": {}}
    for step, (label, method, options) in enumerate(VARIANTS, start=2):
        defense = create_defense(method, progress=progress, **options)
        data, test = defender_data(suspect, defense.needs, clean_samples=CLEAN_SAMPLES, seed=config.seed,
                                   data_dir=config.data_dir)
        what = "the poisoned training set" if method == "ep" else f"{CLEAN_SAMPLES} clean samples"
        print(f"[{step}/{len(VARIANTS) + 1}] {label} ({defense.rule}, u = {defense.u:g}) on {what}", file=sys.stderr)
        key = label.lower().replace(" ", "-")
        result = repair(suspect, defense, data, test=test, out_dir=out / key, before=before)
        after = result.metrics["after"]
        rows.append({"model": label, "rule": f"{defense.rule} u={defense.u:g}", "ACC %": after["acc"],
                     "ASR %": after["asr"], "pruned": result.report.num_pruned, "time s": result.report.seconds,
                     "samples": result.report.samples})
        summary["defenses"][key] = result.metrics
    summary["table"] = rows
    atomic_write_json(out / "summary.json", summary)

    print("\n" + format_table(rows, ["model", "rule", "ACC %", "ASR %", "pruned", "time s", "samples"]), file=stream)
    print(f"\n(time s: training for the backdoored model, the whole defense, statistics included, for the others). Results, reports and "
          f"plots in {config.out}/", file=stream)
    return summary
