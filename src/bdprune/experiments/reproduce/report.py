"""The report of a reproduction: DIR/report.md (Markdown that reads on GitHub) and DIR/figures/*.png.

Tables are laid out like the paper's; an entry is the mean +- sample std over the seeds (the count when
fewer seeds than asked have finished), followed by the paper's number in italics, with a dagger when the
paper's number is for another setting (dataset, model, training) than ours. A table too wide for a page is
split into parts (by attack family where the experiment groups its columns), and a cell that failed is marked
with a note that says why. Everything is read from the store's records (and failures), so the report can be
rebuilt at any time, also while cells still run.
"""

from __future__ import annotations

import math
import re
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
# value columns of one Markdown table that fits a page (4 attacks with ACC and ASR, 3 columns of 3 metrics)
PART_COLUMNS = 9


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


def error_line(text: str) -> str:
    """What a stored failure says went wrong, in one line: the exception line of its (last) traceback, else its
    first line; terminal colours removed, long lines cut."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip() for line in text.splitlines()]
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    after = [line for line in lines[frames[-1] + 1 :] if line and not line[0].isspace()] if frames else []
    line = after[0] if after else next((line.strip() for line in lines if line.strip()), "no message")
    return line if len(line) <= 200 else line[:199] + "…"


def failure(cell: Cell, store: Store) -> str | None:
    """Why `cell` has no record, if it failed: its own last error, or the failed training of its model."""
    if store.done(cell.key):
        return None
    error = store.error(cell.key)
    if error is not None:
        return f"{cell.row} | {cell.col}, seed {cell.seed}: {error_line(error['error'])}"
    for run in cell.needs:
        error = None if store.done(f"run-{run}") else store.error(f"run-{run}")
        if error is not None:
            model = error["cell"]
            return (
                f"{model['row']} | {model['col']}, seed {model['seed']} failed to train, so its cells did not run: "
                f"{error_line(error['error'])}"
            )
    return None


def column_parts(experiment: Experiment, cols: list[str]) -> list[tuple[str, list[str]]]:
    """The columns of a table cut into parts of at most PART_COLUMNS value columns, as (heading, columns): one
    part when they fit, else the experiment's column groups (in their order; columns of none last), each cut
    into as few runs of about equal length as fit."""
    width = max(1, PART_COLUMNS // max(1, len(experiment.metrics)))
    if len(cols) <= width:
        return [("", cols)]
    grouped = {c for _, members in experiment.column_groups for c in members}
    groups = [(name, [c for c in cols if c in members]) for name, members in experiment.column_groups]
    groups.append(("", [c for c in cols if c not in grouped]))
    parts = []
    for name, group in groups:
        if not group:
            continue
        size = math.ceil(len(group) / math.ceil(len(group) / width))
        for i in range(0, len(group), size):
            run = group[i : i + size]
            parts.append((f"{name}: {', '.join(run)}" if name else ", ".join(run), run))
    return parts


def grid_table(experiment: Experiment, cells: list[Cell], store: Store, seeds: list[int], dataset: str | None) -> str:
    """Markdown tables: a row per cell row, a column group (the experiment's metrics) per cell column; a table
    wider than PART_COLUMNS value columns is split into parts (`column_parts`), each with a heading and every
    row. A failed cell is marked ✗n, and under its part the n-th note says which cell failed and why."""
    shown = [c for c in cells if c.kind != "train"]
    rows = list(dict.fromkeys(c.row for c in shown))
    cols = list(dict.fromkeys(c.col for c in shown))
    cols += [c for c in paper_columns(experiment.name) if c not in cols]  # columns only the paper has
    at: dict[tuple[str, str], list[dict[str, Any] | None]] = {}
    failures: dict[tuple[str, str], list[str]] = {}
    for c in shown:
        at.setdefault((c.row, c.col), []).append(store.get(c.key))
        why = failure(c, store)
        if why is not None:
            failures.setdefault((c.row, c.col), []).append(why)
    notes: list[str] = []  # numbered through all parts: one note for every cell of a model that failed to train
    metrics = experiment.metrics
    parts = column_parts(experiment, cols)
    out = []
    for heading, part in parts:
        header = [
            "",
            *(
                f"{col} {LABELS[m]}" if len(metrics) > 1 or experiment.name != "table3" else col
                for col in part
                for m in metrics
            ),
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|"]
        marked: set[int] = set()
        for row in rows:
            values = []
            for col in part:
                numbers = []
                for why in dict.fromkeys(failures.get((row, col), [])):
                    if why not in notes:
                        notes.append(why)
                    numbers.append(notes.index(why) + 1)
                marked.update(numbers)
                mark = "✗" + ",".join(map(str, numbers)) if numbers else ""
                for metric in metrics:
                    records = at.get((row, col))
                    text = entry(records, metric, len(seeds)) if records is not None else "not run"
                    if mark:
                        text = mark if text == "·" else f"{text} {mark}"
                    values.append(text + _paper(experiment.name, row, col, metric, dataset))
            lines.append("| " + " | ".join([row, *values]) + " |")
        if len(parts) > 1:
            out += [f"### {heading}", ""]
        out.append("\n".join(lines) + "\n")
        if marked:
            out.append("\n".join(f"- ✗{n} {notes[n - 1]}" for n in sorted(marked)) + "\n")
    return "\n".join(out)


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
        "not a target. `·` not finished yet, `✗n` failed (note n under the table says why), `NaN` training "
        "diverged, `—` nothing to measure (e.g. its model's training diverged), `n/r` the target was not reached, "
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
