"""Executors: run the cells of a grid here, one after another (`local`, the default, needs nothing), or as one
Ray task per cell (`ray`, `pip install bdprune[ray]`), with a GPU per task when the preset wants one.

Both call the same `work.execute` (which writes each record into the store) and report every finished cell
to a callback, so the store, the progress lines and the report are the same. A cell that fails is written to
the store's errors/ (with its traceback), its dependants are skipped, and the others go on: the run ends
with a list of failures instead of a silent gap, and the next run retries them.

Ray retries a task whose worker process died (killed, out of memory) up to `max_retries` times; the record
of a cell is written only when it completes, so a killed attempt leaves nothing behind but its marker in
running/, which the retry overwrites.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ...errors import InvalidInput
from ...models import choose_device
from .cells import Cell
from .store import Store
from .work import Context, execute

EXECUTORS = ("local", "ray")


@dataclass
class Outcome:
    """What happened to one cell in this run: "done" (record written), "failed" or "skipped"."""

    cell: Cell
    status: str
    seconds: float = 0.0
    record: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class Progress:
    """Counts cells and estimates the time left from the mean duration of each class of cell seen so far
    (`Cell.cost_class`: kind and attack or defense), with `workers` cells running at a time."""

    total: int
    workers: int = 1
    done: int = 0
    durations: dict[str, list[float]] = field(default_factory=dict)
    remaining: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def of(cls, cells: list[Cell], workers: int = 1) -> Progress:
        remaining: dict[str, int] = {}
        for c in cells:
            remaining[c.cost_class] = remaining.get(c.cost_class, 0) + 1
        return cls(total=len(cells), workers=workers, remaining=remaining)

    def finish(self, cost_class: str, seconds: float | None) -> None:
        """Count a cell as finished; `seconds` (None: unknown) feeds the estimate."""
        self.done += 1
        self.remaining[cost_class] -= 1
        if seconds is not None:
            self.durations.setdefault(cost_class, []).append(seconds)

    def eta(self) -> float | None:
        """Seconds left, or None before any cell has finished. A class not seen yet counts at the mean of
        its kind's cells seen, else of all cells seen."""
        if not self.durations:
            return None
        mean = {k: sum(d) / len(d) for k, d in self.durations.items()}
        kinds: dict[str, list[float]] = {}
        for k, d in self.durations.items():
            kinds.setdefault(k.split(":")[0], []).extend(d)
        overall = sum(sum(d) for d in kinds.values()) / sum(len(d) for d in kinds.values())

        def guess(cost_class: str) -> float:
            if cost_class in mean:
                return mean[cost_class]
            same_kind = kinds.get(cost_class.split(":")[0])
            return sum(same_kind) / len(same_kind) if same_kind else overall

        return sum(n * guess(k) for k, n in self.remaining.items()) / max(self.workers, 1)


Callback = Callable[[Outcome, Progress], None]


def _skip(cell: Cell, failed: set[str]) -> str | None:
    missing = [run for run in cell.needs if run in failed]
    return f"its run {missing[0]} failed to train" if missing else None


def run_local(cells: list[Cell], context: Context, on_done: Callback) -> list[Outcome]:
    """Run the cells in order in this process."""
    progress, outcomes, failed = Progress.of(cells), [], set()
    store = Store(context.root)
    for cell in cells:
        start = time.perf_counter()
        reason = _skip(cell, failed)
        if reason is not None:
            outcome = Outcome(cell, "skipped", error=reason)
        else:
            try:
                outcome = Outcome(cell, "done", record=execute(cell, context))
            except Exception as exc:  # recorded in errors/ with its traceback and reported; the grid goes on
                store.fail(cell, exc)
                outcome = Outcome(cell, "failed", error=f"{type(exc).__name__}: {exc}")
                if cell.kind == "train":
                    failed.add(cell.spec["run"])
        outcome.seconds = time.perf_counter() - start
        progress.finish(cell.cost_class, outcome.seconds)
        outcomes.append(outcome)
        on_done(outcome, progress)
    return outcomes


def _remote_execute(cell: dict[str, Any], context: Context, *needed: dict[str, Any]) -> dict[str, Any]:
    """A Ray task: one cell (its needed runs' records are arguments only so that Ray runs it after them)."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))
    # the task is an entry point: it chooses its device (a GPU when it was given one)
    return execute(Cell.from_dict(cell), replace(context, device=str(choose_device(context.device))))


def run_ray(
    cells: list[Cell],
    context: Context,
    on_done: Callback,
    *,
    address: str | None = None,
    cpus_per_task: float = 1,
    gpus_per_task: float = 0,
    max_retries: int = 3,
    init_options: dict[str, Any] | None = None,
) -> list[Outcome]:
    """One Ray task per cell; a cell is submitted with its runs' training tasks as dependencies.

    Args:
        address: a running cluster ("auto", "ray://host:10001"); None starts a local instance.
        cpus_per_task, gpus_per_task: each task's resource request (torch in the task uses that many threads).
        max_retries: retries of a task whose worker died.
        init_options: more keyword arguments of `ray.init` (e.g. num_cpus of a local instance).
    """
    try:
        import ray
    except ImportError:
        raise InvalidInput("the ray executor needs Ray: pip install 'bdprune[ray]' (or use --executor local)") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **(init_options or {}))
    try:
        if gpus_per_task and ray.cluster_resources().get("GPU", 0) < gpus_per_task:
            raise InvalidInput(
                f"this preset asks a GPU per task and the Ray cluster has "
                f"{ray.cluster_resources().get('GPU', 0):g}; join a cluster with GPUs (--ray-address) "
                "or run with --executor local"
            )
        remote = ray.remote(_remote_execute).options(
            num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=max_retries, retry_exceptions=False
        )
        trains = {c.spec["run"]: remote.remote(c.to_dict(), context) for c in cells if c.kind == "train"}
        refs = {
            trains[c.spec["run"]]
            if c.kind == "train"
            else remote.remote(c.to_dict(), context, *[trains[r] for r in c.needs if r in trains]): c
            for c in cells
        }
        slots = int(ray.available_resources().get("CPU", 1) // max(cpus_per_task, 1e-9)) or 1
        store, progress = Store(context.root), Progress.of(cells, workers=slots)
        outcomes, pending, failed = [], list(refs), set()
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            cell = refs[ready[0]]
            try:
                record = ray.get(ready[0])
                outcome = Outcome(cell, "done", record["seconds"], record)
            except ray.exceptions.RayError as exc:  # the cell raised, or its worker died more than max_retries times
                reason = _skip(cell, failed)
                if reason is not None:
                    outcome = Outcome(cell, "skipped", error=reason)
                else:
                    store.fail(cell, str(exc))
                    cause = getattr(exc, "cause", None) or exc
                    first_line = (str(cause).splitlines() or [""])[0]
                    outcome = Outcome(cell, "failed", error=f"{type(cause).__name__}: {first_line}")
                    if cell.kind == "train":
                        failed.add(cell.spec["run"])
            progress.finish(cell.cost_class, outcome.seconds if outcome.status == "done" else None)
            outcomes.append(outcome)
            on_done(outcome, progress)
        return outcomes
    finally:
        if started_here:
            ray.shutdown()
