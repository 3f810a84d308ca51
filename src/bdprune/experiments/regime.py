"""The regime study (is it the training regime or the method?): one trained run -> EP and BNP under given
rules, their ACC / ASR on the full test set, and the concentration diagnostic (k*, pruning curves).

`analyze_run` measures one run directory made by `bdprune train` and writes `analysis.json` and
`concentration.png`; `regime_table` gathers many such analyses into one table. Decisions about defaults
must come from the defenses' own numbers on development seeds; k* and the curves read the test set and the
poisoned flags and only describe the model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..defenses import DefenseReport, Scores, bnp_scores, create_defense, ep_scores
from ..defenses.ep import entropies
from ..diagnostics.concentration import (
    DEFAULT_KS,
    TARGET_ASR,
    ConcentrationReport,
    plot_concentration,
    pruning_curve,
    report_order,
    separation_order,
)
from ..files import atomic_write_bytes, atomic_write_json
from ..metrics import evaluate
from ..neurons.entropy import EXACT
from ..neurons.separation import auc, shift
from ..repair import defender_data, load_suspect

CLEAN_SAMPLES = 500
# (label, method, options): the library defaults, both under the paper's rule (z-score, u = 3), and BNP
# under the MAD rule (u = 6) without the guard.
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("ep", "ep", {}),
    ("bnp", "bnp", {}),
    ("ep-paper", "ep", {"rule": "zscore", "u": 3.0, "then": "none", "max_harm": None}),
    ("bnp-paper", "bnp", {"rule": "zscore", "u": 3.0, "then": "none", "max_harm": None}),
    ("bnp-mad", "bnp", {"rule": "mad", "u": 6.0}),
)


def _rule_details(report: DefenseReport) -> dict[str, Any]:
    """What a rule with passes of its own decided, for analysis.json (without the long per-neuron lists)."""
    details = {}
    if "consensus" in report.extra:
        details["consensus"] = {k: v for k, v in report.extra["consensus"].items() if k != "candidates"}
    if "guard" in report.extra:
        guard = report.extra["guard"]
        details["guard"] = {
            **{k: v for k, v in guard.items() if k != "trace"},
            "spared": [[t["layer"], t["channel"], t["changed"]] for t in guard["trace"] if not t["pruned"]],
        }
    return details


def run_setting(card) -> dict[str, Any]:
    """The regime of a run from its sidecar: attack, width, epochs, augmentation, seed, training samples."""
    config = card.run.config
    return {
        "attack": config.attack,
        "mode": config.mode,
        "width": config.model_args.get("base_width"),
        "model": config.model,
        "epochs": config.train.epochs,
        "augment": config.augment,
        "seed": config.seed,
        "train_subset": config.train_subset,
        "rate": config.rate,
    }


def analyze_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    variants: Sequence[tuple[str, str, dict[str, Any]]] = VARIANTS,
    curve_samples: int = 2000,
    curves_for: Sequence[str] | None = None,
    ks=DEFAULT_KS,
    seed: int = 0,
    test_samples: int | None = None,
    device: str | torch.device = "cpu",
    data_dir: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """EP / BNP results and the concentration diagnostic of one run.

    The statistics are gathered once (one pass over the training set, whose poisoned/benign groups give
    both EP's histograms and the separation scores; one pass over the clean samples for BNP) with EP's and
    BNP's own scoring functions, and every variant's rule decides on them (`PruningDefense.decide`); a rule
    that reads more than the scores (consensus, guarded) runs its defense whole.

    Args:
        run_dir: a run made by `bdprune train` (its sidecar records the poisoned samples).
        out_dir: where analysis.json and concentration.png go (default: `run_dir`/analysis).
        variants: (label, method, options), method "ep" or "bnp", options their constructor arguments. EP
            reads the mixed training set, BNP `CLEAN_SAMPLES` clean samples of the run's reserve drawn
            with `seed`.
        curve_samples: test samples (drawn with `seed`) for the pruning curves; the defenses' own ACC / ASR
            use the whole test set.
        curves_for: labels of variants whose score order gets a pruning curve (default: all).
        test_samples: measure the defenses on this many test samples drawn with `seed` (default: all).
    """
    start = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "analysis"
    suspect = load_suspect(run_dir, device=device)
    if suspect.attack is None:
        raise ValueError(f"{run_dir} is a clean run: there is no backdoor to measure")
    data, test = defender_data(suspect, {"train", "clean"}, clean_samples=CLEAN_SAMPLES, seed=seed, data_dir=data_dir)
    model, attack = suspect.model, suspect.attack
    if test_samples is not None and test_samples < len(test):
        test = test.sample(test_samples, torch.Generator().manual_seed(seed + 1))
    before = evaluate(model, test, attack)
    # One pass over the training set with the poisoned/benign groups: EP's scores and the separation (AUCs).
    ep_scored = ep_scores(model, data.train, groups=data.train_poisoned.long(), progress=progress)
    layers, sketches = ep_scored.layers, ep_scored.cache
    separation = {name: (auc(s).cpu(), shift(s).cpu()) for name, s in sketches.items()}
    scored: dict[tuple, Scores] = {}
    results: dict[str, Any] = {}
    reports = {}
    for label, method, options in variants:
        defense = create_defense(method, **options)
        if defense.rule.needs:  # reads the model or the data beyond its scores: run it whole
            repaired, report = defense.run(model, data)
            details = _rule_details(report)
        else:  # score once per scoring (the diagnostic pass serves EP's histogram scores), then the rule
            key = (method, getattr(defense, "estimator", None), getattr(defense, "bin_width", None))
            if key not in scored and method == "bnp":
                scored[key] = bnp_scores(model, data.clean)
            elif key not in scored and defense.estimator != EXACT:
                scored[key] = replace(ep_scored, scores=entropies(sketches, defense.estimator, defense.bin_width))
            elif key not in scored:
                scored[key] = defense.score(model, data)
            repaired, report = defense.decide(model, data, scored[key])
            details = {}
        after = evaluate(repaired, test, attack)
        results[label] = {
            "method": method,
            "options": options,
            "acc": after["acc"],
            "asr": after["asr"],
            "pruned": report.num_pruned,
            "pruned_neurons": report.pruned,
            **details,
            "seconds": report.seconds,
        }
        del repaired
        if curves_for is None or label in curves_for:
            reports[label] = (report, defense.side)
    curve_test = test.sample(min(curve_samples, len(test)), torch.Generator().manual_seed(seed))
    curves = {
        "separation": pruning_curve(
            model, separation_order(separation), curve_test, attack, layers, label="separation", ks=ks
        )
    }
    for label, (report, side) in reports.items():
        curves[label] = pruning_curve(
            model, report_order(report, side), curve_test, attack, layers, label=label, ks=ks, rule_k=report.num_pruned
        )
        results[label]["k_star_in_own_order"] = curves[label].k_star
    conc = ConcentrationReport(
        target_asr=TARGET_ASR,
        curves=curves,
        layers=[
            {
                "name": l.name,
                "channels": l.channels,
                "auc": separation[l.name][0].tolist(),
                "shift": separation[l.name][1].tolist(),
            }
            for l in layers
        ],
        samples={"data": len(data.train), "poisoned": int(data.train_poisoned.sum()), "test": len(curve_test)},
        seconds=time.perf_counter() - start,
    )
    summary = {
        "run": str(run_dir),
        "setting": run_setting(suspect.card),
        "before": before,
        "defenses": results,
        "k_star": conc.k_star,
        "k_star_layers": conc.layer_counts(),
        "curves": {label: {"k_star": c.k_star, "rule_k": c.rule_k, "points": c.points} for label, c in curves.items()},
        "top_neurons": conc.top(max(conc.k_star or 0, 10)),
        "curve_test_samples": len(curve_test),
        "seconds": time.perf_counter() - start,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "analysis.json", summary)
    conc.save(out / "concentration.json")
    setting = summary["setting"]
    plot_concentration(
        conc,
        out / "concentration.png",
        title=f"{setting['attack']} width {setting['width']}, {setting['epochs']} epochs, {setting['augment']}, "
        f"seed {setting['seed']}: k* = {conc.k_star}",
    )
    return summary


def regime_table(analyses: Sequence[dict[str, Any]], labels: Sequence[str] = ("ep", "bnp")) -> list[dict[str, Any]]:
    """One row per analysed run: setting, ACC / ASR before, k*, and each defense's ACC / ASR / pruned."""
    rows = []
    for a in analyses:
        s = a["setting"]
        row = {
            "attack": s["attack"] + ("-a2a" if s["mode"] == "all-to-all" else ""),
            "width": s["width"],
            "epochs": s["epochs"],
            "augment": s["augment"],
            "seed": s["seed"],
            "ACC": a["before"]["acc"],
            "ASR": a["before"]["asr"],
            "k*": a["k_star"],
        }
        for label in labels:
            d = a["defenses"].get(label)
            if d is not None:
                row[f"{label} ACC"], row[f"{label} ASR"], row[f"{label} n"] = d["acc"], d["asr"], d["pruned"]
                row[f"{label} k*"] = d.get("k_star_in_own_order")
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def regime_markdown(analyses: Sequence[dict[str, Any]], labels: Sequence[str] = ("ep", "bnp")) -> str:
    """The regime table as Markdown: one row per run, ACC / ASR / pruned of each defense, k* per order."""
    rows = regime_table(analyses, labels)
    head = ["attack", "width", "epochs", "augment", "seed", "ACC", "ASR", "k*"]
    for label in labels:
        head += [f"{label} ACC", f"{label} ASR", f"{label} n", f"{label} k*"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(h)) for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def analyze_runs(runs: Sequence[str | Path], out_dir: str | Path, **options: Any) -> str:
    """`analyze_run` on each run (into `out_dir`/<run name>/), and the regime table of all of them, written to
    `out_dir`/regime.md and returned."""
    out = Path(out_dir)
    analyses = [analyze_run(run, out / Path(run).resolve().name, **options) for run in runs]
    labels = [label for label, _, _ in options.get("variants", VARIANTS)]
    table = regime_markdown(analyses, labels)
    atomic_write_bytes(out / "regime.md", table.encode())
    return table
