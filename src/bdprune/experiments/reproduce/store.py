"""The results store of a reproduction: one directory, one JSON record per finished cell.

    DIR/manifest.json         the preset, the experiments asked for and their seeds
    DIR/records/KEY.json      one per finished cell (written atomically: whole or absent)
    DIR/runs/RUNKEY/          trained models (renamed into place when complete), shared by every cell
    DIR/cells/KEY/            what a cell writes beside its record (a defense's report.json)
    DIR/running/KEY.json      cells in progress (host, pid, start), removed when they finish
    DIR/errors/KEY.json       the last failure of a cell (it is retried on the next run)
    DIR/cache/                fits of learned attacks
    DIR/report.md, figures/   the report

A cell is finished exactly when its record exists, so a run that is interrupted and started again skips
what is done and loses nothing; a record is never half-written (`bdprune.files.atomic_write_json`). The records
alone are a store too (they are small and can be committed; the models are not): copied into an empty DIR/records,
they rebuild the report, and a cell still to run gets the model it reads trained again (`Store.pending`).
"""

from __future__ import annotations

import os
import platform
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import InvalidInput
from ...files import atomic_write_json, read_json
from .cells import Cell

FORMAT = 1


class Store:
    """The store in directory `root` (created on first write)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- paths ---------------------------------------------------------------------------------------------
    def record_path(self, key: str) -> Path:
        return self.root / "records" / f"{key}.json"

    def run_dir(self, run: str) -> Path:
        return self.root / "runs" / run

    def cell_dir(self, cell: Cell) -> Path:
        return self.root / "cells" / cell.key

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    # -- records -------------------------------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        path = self.record_path(key)
        return read_json(path) if path.is_file() else None

    def done(self, key: str) -> bool:
        return self.record_path(key).is_file()

    def put(self, record: dict[str, Any]) -> Path:
        path = atomic_write_json(self.record_path(record["key"]), record)
        (self.root / "errors" / f"{record['key']}.json").unlink(missing_ok=True)
        return path

    def pending(self, grid: list[Cell]) -> list[Cell]:
        """The cells of `grid` still to run, in its order: those without a record, and a training whose record is
        here but whose model is not (a store rebuilt from committed records: models stay out of git) when a cell
        still to run reads that model. Such a training runs again and its record is rewritten."""
        todo = {c.key for c in grid if not self.done(c.key)}
        read = {run for c in grid if c.key in todo for run in c.needs}
        return [c for c in grid if c.key in todo or (c.kind == "train" and c.spec["run"] in read and self._lost(c))]

    def _lost(self, cell: Cell) -> bool:
        record = self.get(cell.key)
        return record is not None and record["status"] == "ok" and not self.run_dir(cell.spec["run"]).is_dir()

    def records(self) -> Iterator[dict[str, Any]]:
        for path in sorted((self.root / "records").glob("*.json")):
            yield read_json(path)

    # -- cells in progress and failures -------------------------------------------------------------------
    def mark_running(self, cell: Cell) -> None:
        atomic_write_json(
            self.root / "running" / f"{cell.key}.json",
            {
                "cell": cell.title,
                "host": platform.node(),
                "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )

    def clear_running(self, cell: Cell) -> None:
        (self.root / "running" / f"{cell.key}.json").unlink(missing_ok=True)

    def running(self) -> list[dict[str, Any]]:
        return [read_json(p) for p in sorted((self.root / "running").glob("*.json"))]

    def fail(self, cell: Cell, error: BaseException | str) -> Path:
        text = error if isinstance(error, str) else "".join(traceback.format_exception(error))
        self.clear_running(cell)
        return atomic_write_json(
            self.root / "errors" / f"{cell.key}.json",
            {"key": cell.key, "cell": cell.to_dict(), "error": text, "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
        )

    def error(self, key: str) -> dict[str, Any] | None:
        path = self.root / "errors" / f"{key}.json"
        return read_json(path) if path.is_file() else None

    # -- manifest ------------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any] | None:
        path = self.root / "manifest.json"
        return read_json(path) if path.is_file() else None

    def register(
        self, preset: str, experiments: list[str], seeds: list[int], data_dirs: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Add experiments and seeds to the manifest; one directory holds one preset."""
        manifest = self.manifest() or {"format": FORMAT, "preset": preset, "experiments": {}, "data_dirs": {}}
        if manifest["preset"] != preset:
            raise InvalidInput(
                f"{self.root} holds a reproduction with preset {manifest['preset']!r}; give another "
                f"--out for preset {preset!r}"
            )
        for name in experiments:
            known = manifest["experiments"].setdefault(name, {"seeds": []})
            known["seeds"] = sorted(set(known["seeds"]) | set(seeds))
        manifest["data_dirs"] = {**manifest["data_dirs"], **(data_dirs or {})}
        atomic_write_json(self.root / "manifest.json", manifest)
        return manifest
