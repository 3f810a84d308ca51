"""The report of a reproduction: DIR/report.md (Markdown that reads on GitHub) and DIR/figures/*.png.

Tables are laid out like the paper's; an entry is the mean +- sample std over the seeds (the count when
fewer seeds than asked have finished), followed by the paper's number in italics, with a dagger when the
paper's number is for another setting (dataset, model, training) than ours. Everything is read from the
store's records, so the report can be rebuilt at any time, also while cells still run.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from ... import __version__
from ...checkpoint import git_commit
from ...files import atomic_write_bytes
from .cells import Cell
from .experiments import EXPERIMENTS, Experiment
from .figures import figure2, figure7, figure9, figure_samples
from .paper import paper_columns, paper_dataset, paper_value
from .presets import Preset, Setting
from .store import Store

LABELS = {
    "acc": "ACC",
    "asr": "ASR",
    "pruned": "#pruned",
    "seconds": "s",
    "spearman_gain_vs_entropy": "Spearman(sensitivity, entropy)",
    "spearman_gain_vs_kl": "Spearman(sensitivity, KL)",
}


def _number(value: float, metric: str) -> str:
    if math.isnan(value):
        return "NaN"
    return f"{value:.0f}" if metric == "pruned" else f"{value:.2f}"


def entry(records: list[dict[str, Any] | None], metric: str, seeds: int) -> str:
    """mean +- std of one metric over the seeds' records; what is missing, said so."""
    done = [r for r in records if r is not None]
    if not done:
        return "·"
    statuses = {r["status"] for r in done}
    if "diverged" in statuses:
        return "NaN"
    if "no-model" in statuses:
        return "—"
    values = [r.get("metrics", {}).get(metric) for r in done]
    if any(v is None for v in values):
        return "n/r" if any(r.get("note") for r in done) else "—"  # a sweep that never reached its target
    text = _number(statistics.fmean(values), metric)
    if len(values) > 1:
        text += f" ± {_number(statistics.stdev(values), metric)}"
    if len(values) < seeds:
        text += f" (n={len(values)})"
    return text


def _paper(experiment: str, row: str, col: str, metric: str, ours: str | None) -> str:
    value = paper_value(experiment, row, col, metric)
    if value is None:
        return ""
    mark = "" if paper_dataset(experiment, row, col) == ours else "†"
    return f" *({_number(value, metric)}{mark})*"


def grid_table(experiment: Experiment, cells: list[Cell], store: Store, seeds: list[int], dataset: str | None) -> str:
    """A Markdown table: a row per cell row, a column group (the experiment's metrics) per cell column."""
    shown = [c for c in cells if c.kind != "train"]
    rows = list(dict.fromkeys(c.row for c in shown))
    cols = list(dict.fromkeys(c.col for c in shown))
    cols += [c for c in paper_columns(experiment.name) if c not in cols]  # columns only the paper has
    at: dict[tuple[str, str], list[dict[str, Any] | None]] = {}
    for c in shown:
        at.setdefault((c.row, c.col), []).append(store.get(c.key))
    metrics = experiment.metrics
    header = [
        "",
        *(
            f"{col} {LABELS[m]}" if len(metrics) > 1 or experiment.name != "table3" else col
            for col in cols
            for m in metrics
        ),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|"]
    for row in rows:
        values = []
        for col in cols:
            for metric in metrics:
                records = at.get((row, col))
                text = entry(records, metric, len(seeds)) if records is not None else "not run"
                values.append(text + _paper(experiment.name, row, col, metric, dataset))
        lines.append("| " + " | ".join([row, *values]) + " |")
    return "\n".join(lines) + "\n"


def _figure(name: str, cells: list[Cell], store: Store, figures: Path) -> str:
    """Draw an experiment's figure from its records; the Markdown that shows it (or says what is missing)."""
    done = [(c, store.get(c.key)) for c in cells if c.kind != "train"]
    done = [(c, r) for c, r in done if r is not None and r["status"] == "ok"]
    if not done:
        return "_No finished cell yet._\n"
    path = figures / f"{name}.png"
    if name == "fig2":
        figure2(done[0][1], path)
    elif name == "fig7":
        figure7({c.row: r for c, r in done if c.seed == done[0][0].seed}, path)
    elif name == "fig9":
        curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for c, r in done:
            curves.setdefault((c.row, c.col), []).append(r)
        figure9(curves, path)
    elif name == "samples":
        points: dict[str, dict[int, list[dict[str, float]]]] = {}
        for c, r in done:
            points.setdefault(c.col, {}).setdefault(int(c.row), []).append(r["metrics"])
        figure_samples(points, path)
    return f"![{name}](figures/{path.name})\n"


def status_line(cells: list[Cell], store: Store) -> str:
    done = sum(store.done(c.key) for c in cells)
    failed = [c for c in cells if not store.done(c.key) and store.error(c.key) is not None]
    seconds = sum((store.get(c.key) or {}).get("seconds", 0.0) for c in cells)
    text = f"{done} of {len(cells)} cells finished ({seconds / 60:.1f} min of cell time)"
    if failed:
        text += f"; {len(failed)} failed (tracebacks in errors/: {', '.join(c.key for c in failed[:5])})"
    return text


def _defense_options(settings: dict[str, Setting]) -> str:
    """EP's and BNP's options in the first setting, e.g. "EP: rule zscore, u 3.0; BNP: the library's defaults"."""
    first = next(iter(settings.values()), None)
    if first is None:
        return ""
    return "; ".join(
        f"{m.upper()}: "
        + (
            ", ".join(f"{k} {v}" for k, v in first.defenses[m].items())
            if first.defenses.get(m)
            else "the library's defaults"
        )
        for m in ("ep", "bnp")
    )


def write_report(
    store: Store,
    preset: Preset,
    settings: dict[str, Setting],
    plan: dict[str, list[Cell]],
    seeds: dict[str, list[int]],
    history: list[dict[str, Any]] | None = None,
) -> Path:
    """Write DIR/report.md (and DIR/figures/) for the experiments of `plan` (experiment -> its cells)."""
    figures = store.root / "figures"
    out = [
        '# Reproducing "Pre-activation Distributions Expose Backdoor Neurons" (NeurIPS 2022)\n',
        f"Preset **{preset.name}**: {preset.about}.\n",
    ]
    for role, setting in settings.items():
        if any(EXPERIMENTS[name].role == role for name in plan):
            out.append(
                f"- {'CIFAR-10' if role == 'main' else 'Tiny-ImageNet'} experiments of the paper run on: "
                f"{setting.describe()}."
            )
    out += [
        "",
        f"bdprune {__version__}, commit {git_commit() or 'unknown'}; report written {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "Entries: mean ± std over seeds (n = finished seeds when fewer than asked); *(italic)*: the paper's "
        "number, † when it is for another setting than ours (dataset, model, training), so it is a reference, "
        "not a target. `·` not finished yet, `NaN` training diverged, `n/r` the target was not reached, "
        "`not run` not part of this grid. The defender's data (clean samples, held-out samples) always comes "
        "from the run's clean reserve, held out from training; no cell reads the test set to choose anything.",
        "",
        f"EP and BNP rows run with the setting's options ({_defense_options(settings)}); rows marked *paper's rule* use the paper's z-score rule (mean -/+ u std per layer), as do the u "
        "sweeps of Table 7 and Figure 9. The paper's numbers are for its rule.",
        "",
    ]
    versions: dict[str, int] = {}
    for key in {c.key for cells in plan.values() for c in cells}:
        code = (store.get(key) or {}).get("code")
        if code:
            dirty = " (uncommitted changes)" if code.get("git_dirty") else ""
            label = f"{(code.get('git_commit') or 'unknown')[:10]}{dirty}"
            versions[label] = versions.get(label, 0) + 1
    if versions:
        out += [
            "Cells computed by: " + "; ".join(f"commit {v}: {n} cells" for v, n in sorted(versions.items())) + ".",
            "",
        ]
    if history:
        last = history[-1]
        ended = " (interrupted)" if last.get("finished") == "interrupted" else ""
        out += [
            f"Last command: `{last['command']}`, {last['executor']} executor, {last['cells_run']} cells run in "
            f"{last['seconds'] / 60:.1f} min wall clock{ended} ({last['failed']} failed or skipped).",
            "",
        ]
    for name, cells in plan.items():
        experiment = EXPERIMENTS[name]
        setting = settings[experiment.role]
        out += [
            f"## {experiment.title}",
            "",
            f"Seeds {', '.join(map(str, seeds[name]))}; {status_line(cells, store)}.",
            "",
        ]
        if experiment.note:
            out += [experiment.note, ""]
        if experiment.metrics and name not in ("fig2",):
            out.append(grid_table(experiment, cells, store, seeds[name], setting.paper_dataset))
        if name in ("fig2", "fig7", "fig9", "samples"):
            out.append(_figure(name, cells, store, figures))
    path = atomic_write_bytes(store.root / "report.md", ("\n".join(out) + "\n").encode())
    return path
