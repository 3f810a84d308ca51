"""The `bdprune reproduce` subcommand: its options and what it prints (the work: `bdprune.experiments.reproduce`)."""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from ..errors import InvalidInput
from ..experiments.reproduce import (
    EXPERIMENTS,
    REPRODUCTION_PRESETS,
    Outcome,
    Progress,
    prepare,
    rebuild_report,
    reproduce,
)
from ..experiments.reproduce.cells import Cell
from ..experiments.reproduce.executors import EXECUTORS
from ..experiments.reproduce.store import Store

HELP = "regenerate the paper's tables and figures (resumable; a report with the paper's numbers beside ours)"
DETAILS = (
    f"NAME is one of {', '.join(EXPERIMENTS)}, several separated by commas, or all. Results go into "
    "--out (one record per cell); run the same command again after an interruption and finished cells are "
    "skipped. Presets: smoke (seconds per cell, CI), cpu (the Fashion-MNIST preset of `bdprune train`), "
    "paper (the paper's settings: a GPU's work). A cell uses one torch thread unless --threads says "
    "otherwise: cells are many small jobs, and parallel cells (--executor ray) use the cores better than "
    "threads inside one, which also suffer most on a shared machine."
)
PER_SECOND_DATASETS = ("cifar10", "tiny-imagenet")  # loaders that read DIR/<archive folder>


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="experiment(s): table1 ... table9, fig2, fig7, fig9, samples, all")
    p.add_argument("--preset", required=True, choices=list(REPRODUCTION_PRESETS), help="smoke, cpu or paper")
    p.add_argument("--out", required=True, help="the results directory (records, models, report.md)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0), e.g. 0,1,2 for error bars")
    p.add_argument("--executor", default="local", choices=EXECUTORS, help="local (default) or ray: one task per cell")
    p.add_argument("--ray-address", help="join this Ray cluster (default: start a local instance)")
    p.add_argument(
        "--data-dir",
        action="append",
        metavar="[DATASET=]DIR",
        help="where a dataset lives (repeatable); a bare DIR holds cifar-10-batches-py/ and/or tiny-imagenet-200/",
    )
    p.add_argument("--dry-run", action="store_true", help="print the grid's cells and what is done; run nothing")
    p.add_argument("--report-only", action="store_true", help="rewrite report.md from the records; run nothing")


def data_dirs(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, where = item.partition("=")
        if sep and not name:
            raise InvalidInput(f"--data-dir expects DATASET=DIR or DIR, got {item!r}")
        out.update({name: where} if sep else {n: item for n in PER_SECOND_DATASETS})
    return out


def seeds(text: str) -> list[int]:
    try:
        out = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InvalidInput(f"--seeds expects comma-separated integers, got {text!r}") from None
    if not out:
        raise InvalidInput("--seeds is empty")
    return out


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{max(seconds, 0.0):.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def progress_line(outcome: Outcome, progress: Progress) -> str:
    """One line per finished cell: where the grid is, what the cell gave, the time left."""
    metrics = (outcome.record or {}).get("metrics") or {}
    shown = "  ".join(f"{k.upper()} {v:.2f}" for k, v in metrics.items() if k in ("acc", "asr") and v is not None)
    if "pruned" in metrics and metrics["pruned"] is not None and outcome.cell.kind != "train":
        shown += f"  pruned {metrics['pruned']}"
    status = (outcome.record or {}).get("status", outcome.status)
    what = shown if status == "ok" else f"{status.upper()}: {outcome.error or (outcome.record or {}).get('error')}"
    width = len(str(progress.total))
    return (
        f"[{progress.done:>{width}}/{progress.total}] {outcome.cell.kind:<8} {outcome.cell.title}: {what} "
        f"({duration(outcome.seconds)}); ETA {duration(progress.eta())}"
    )


def run(args: argparse.Namespace, device: torch.device) -> int:
    if args.threads is None:
        torch.set_num_threads(1)  # see DETAILS; the Ray executor gives each task its CPUs' worth
    names = [n.strip() for n in args.name.split(",") if n.strip()]
    dirs = data_dirs(args.data_dir)
    if args.report_only:
        print(f"wrote {rebuild_report(args.out, dirs)}", file=sys.stderr)
        return 0
    if args.dry_run:
        return dry_run(names, args, dirs)
    summary = reproduce(
        names,
        preset=args.preset,
        out=args.out,
        seeds=seeds(args.seeds),
        executor=args.executor,
        device=str(device),
        data_dirs=dirs,
        ray_address=args.ray_address,
        progress=not args.quiet,
        on_done=lambda o, p: print(progress_line(o, p), file=sys.stderr, flush=True),
        command="bdprune " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    print(
        f"{summary.cells} cells: {summary.skipped_done} already done, {len(summary.outcomes)} run in "
        f"{duration(summary.seconds)}, {len(summary.failed)} failed or skipped. Report: {summary.report}"
    )
    for o in summary.failed:
        print(f"  {o.status}: {o.cell.title} ({o.cell.key}): {o.error}", file=sys.stderr)
    return 1 if summary.failed else 0


def dry_run(names: list[str], args: argparse.Namespace, dirs: dict[str, str]) -> int:
    settings, _, grid = prepare(names, args.preset, Store(args.out), seeds(args.seeds), dirs)
    store = Store(args.out)
    pending = store.pending(grid)
    waiting = {c.key for c in pending}
    kinds: dict[str, list[int]] = {}
    for c in grid:
        kinds.setdefault(c.kind, [0, 0])[c.key not in waiting] += 1
    for role, setting in settings.items():
        print(f"{role}: {setting.describe()}")
    for kind, (todo, done) in kinds.items():
        print(f"{kind:<14} {todo + done:>5} cells, {done} done")
    estimate = Progress.of(pending)
    for record in store.records():  # the times of the cells this directory has seen, by class
        estimate.durations.setdefault(Cell.from_dict(record["cell"]).cost_class, []).append(record["seconds"])
    left, seen = estimate.eta(), sum(map(len, estimate.durations.values()))
    print(
        f"time left: {duration(left)} at the mean times of this directory's {seen} finished cells (one at a time)"
        if left is not None
        else "time left: unknown (no finished cell here yet)"
    )
    return 0
