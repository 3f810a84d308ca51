"""Every table and figure of the paper as one resumable command (`bdprune reproduce NAME --preset P --out DIR`).

    >>> from bdprune.experiments.reproduce import reproduce
    >>> summary = reproduce(["table1"], preset="smoke", out="runs/repro-smoke")   # minutes on 2 cores
    >>> summary.report                                                             # runs/repro-smoke/report.md

The pieces: `presets` (how big), `experiments` (each table / figure as a grid of cells), `cells` (a unit of
work and its identity), `work` (what a cell does), `store` (one record per finished cell), `executors` (here,
or one Ray task per cell), `report` and `figures` (Markdown and PNG from the records), `paper` (the
published numbers). Trained runs are keyed by the hash of their configuration and shared by every
experiment that needs them; a finished cell is never done again in the same directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import InvalidInput
from ...files import atomic_write_json
from . import detection_work  # noqa: F401  (registers the detection experiments' cell kind)
from .cells import Cell
from .executors import EXECUTORS, Outcome, Progress, run_local, run_ray
from .experiments import EXPERIMENTS, build_grid, get_experiment
from .presets import REPRODUCTION_PRESETS, Preset, Setting, dataset_available, get_preset, with_data_dir
from .report import write_report
from .store import Store
from .work import Context

__all__ = [
    "EXPERIMENTS",
    "REPRODUCTION_PRESETS",
    "Outcome",
    "Progress",
    "Summary",
    "plan",
    "rebuild_report",
    "reproduce",
]


@dataclass
class Summary:
    """What one `reproduce` call did."""

    cells: int  # cells of the grid
    skipped_done: int  # finished before this call
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    report: Path | None = None

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != "done"]


def expand(names: Sequence[str]) -> list[str]:
    """Experiment names, "all" expanded, each checked."""
    out: list[str] = []
    for name in names:
        for n in EXPERIMENTS if name == "all" else [name]:
            get_experiment(n)
            if n not in out:
                out.append(n)
    return out


def _settings(preset: Preset, manifest: dict[str, Any], data_dirs: dict[str, str]) -> tuple[dict[str, Setting], dict]:
    """The setting of each role: the manifest's choice when it has one (a directory keeps its settings),
    else the first candidate whose data is present."""
    chosen = dict(manifest.get("settings", {}))
    available = dataset_available(data_dirs)
    settings = {}
    for role, candidates in preset.roles.items():
        if role not in chosen:
            chosen[role] = candidates.index(preset.setting(role, available))
        settings[role] = with_data_dir(candidates[chosen[role]], data_dirs)
    return settings, chosen


def prepare(
    names: Sequence[str], preset: str, store: Store, seeds: Sequence[int], data_dirs: dict[str, str]
) -> tuple[dict[str, Setting], dict[str, int], list[Cell]]:
    """The settings (those the store's manifest chose, else by the data present), which candidate each role
    took, and the grid of cells."""
    chosen, manifest = get_preset(preset), store.manifest() or {}
    if manifest.get("preset", preset) != preset:
        raise InvalidInput(
            f"{store.root} holds a reproduction with preset {manifest['preset']!r}; give another "
            f"--out for preset {preset!r}"
        )
    settings, picks = _settings(chosen, manifest, data_dirs)
    return settings, picks, build_grid(expand(names), settings, chosen, list(seeds))


def plan(
    store: Store, data_dirs: dict[str, str] | None = None
) -> tuple[Preset, dict[str, Setting], dict[str, list[Cell]], dict[str, list[int]]]:
    """From a store's manifest: the preset, the settings, each experiment's cells and its seeds."""
    manifest = store.manifest()
    if manifest is None:
        raise InvalidInput(f"{store.root} holds no reproduction (no manifest.json); run `bdprune reproduce` first")
    preset = get_preset(manifest["preset"])
    dirs = {**manifest.get("data_dirs", {}), **(data_dirs or {})}
    settings, _ = _settings(preset, manifest, dirs)
    cells, seeds = {}, {}
    for name, entry in manifest["experiments"].items():
        seeds[name] = entry["seeds"]
        cells[name] = build_grid([name], settings, preset, entry["seeds"])
    return preset, settings, cells, seeds


def rebuild_report(out: str | Path, data_dirs: dict[str, str] | None = None) -> Path:
    """(Re)write DIR/report.md from the records in the store."""
    store = Store(out)
    preset, settings, cells, seeds = plan(store, data_dirs)
    return write_report(store, preset, settings, cells, seeds, (store.manifest() or {}).get("history"))


def reproduce(
    names: Sequence[str],
    *,
    preset: str,
    out: str | Path,
    seeds: Sequence[int] = (0,),
    executor: str = "local",
    device: str = "cpu",
    data_dirs: dict[str, str] | None = None,
    ray_address: str | None = None,
    ray_init: dict[str, Any] | None = None,
    progress: bool = False,
    on_done: Callable[[Outcome, Progress], None] | None = None,
    command: str | None = None,
) -> Summary:
    """Run (or resume) the cells of experiments `names` that `out` does not hold yet, then write the report.

    Args:
        names: experiment names (see `EXPERIMENTS`) or "all".
        preset: "smoke", "cpu" or "paper" (one per directory).
        out: the store's directory.
        seeds: the seeds (each a training run and a draw of the defender's data).
        executor: "local" (this process, in order) or "ray" (one task per cell).
        device: the device of a local run ("cpu", "cuda"); Ray tasks choose theirs ("auto").
        data_dirs: dataset name -> its directory, where not in the usual place.
        ray_address: a Ray cluster to join (None: start a local instance).
        ray_init: more arguments of `ray.init` for a local instance (e.g. num_cpus).
        progress: progress bars inside cells.
        on_done: called after every cell with its outcome and the grid's progress (ETA).
        command: how this was invoked, for the report (default: a description of the call).
    """
    if executor not in EXECUTORS:
        raise InvalidInput(f"unknown executor {executor!r}; choose one of {EXECUTORS}")
    if not seeds:
        raise InvalidInput("give at least one seed")
    names, chosen, store, data_dirs = expand(names), get_preset(preset), Store(out), dict(data_dirs or {})
    _settings, picks, grid = prepare(names, preset, store, seeds, data_dirs)
    manifest = store.register(chosen.name, names, list(seeds), data_dirs)
    manifest["settings"] = picks
    atomic_write_json(store.root / "manifest.json", manifest)
    todo = store.pending(grid)
    summary = Summary(cells=len(grid), skipped_done=len(grid) - len(todo))
    start = time.perf_counter()
    finished = "interrupted"

    def done(outcome: Outcome, grid_progress: Progress) -> None:  # kept as they come: an interruption loses none
        summary.outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome, grid_progress)

    try:
        if executor == "local":
            context = Context(str(store.root), device, data_dirs, progress)
            run_local(todo, context, done)
        else:
            context = Context(str(Path(store.root).resolve()), "auto", data_dirs, progress)
            run_ray(
                todo, context, done, address=ray_address, gpus_per_task=1 if chosen.gpu else 0, init_options=ray_init
            )
        finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    finally:  # also after Ctrl-C: the report shows what is done
        summary.seconds = time.perf_counter() - start
        manifest = store.manifest() or manifest
        manifest.setdefault("history", []).append(
            {
                "command": command or f"reproduce({names}, preset={preset!r}, seeds={list(seeds)})",
                "experiments": names,
                "seeds": list(seeds),
                "executor": executor,
                "cells_run": len(summary.outcomes),
                "failed": len(summary.failed),
                "seconds": summary.seconds,
                "finished": finished,
            }
        )
        atomic_write_json(store.root / "manifest.json", manifest)
        summary.report = rebuild_report(out, data_dirs)
    return summary
