"""A cell: one independent piece of work of the reproduction, and its identity.

A cell is plain data (JSON), so it can be shipped to another process or machine. Its `key` hashes only
what it computes (kind and spec), not which experiment asked for it: two experiments that need the same
work (Table 1's BadNets model is Table 7's; Table 4's 10% row is Table 1's EP and BNP) share one cell, one
trained model and one record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ...config import RunConfig
from .presets import run_key

KINDS = ("train", "defend", "sweep", "sensitivity", "distributions", "scan")


@dataclass(frozen=True)
class Cell:
    """One unit of work.

    Attributes:
        experiment: the experiment that lists it ("table1", ...).
        kind: "train" (a backdoored model), "defend" (a defense on a model, evaluated), "sweep" (a defense
            over a threshold grid), "sensitivity" (Figure 7's per-neuron scores), "distributions" (Figure 2).
        row, col: where the report shows it (e.g. row "EP", column "BadNets (A2O)").
        seed: the seed (of the run, and of the draw of the defender's data).
        spec: everything the worker needs, JSON-able.
        needs: keys of the trained runs it reads (trained first).
    """

    experiment: str
    kind: str
    row: str
    col: str
    seed: int
    spec: dict[str, Any]
    needs: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown cell kind {self.kind!r}")

    @property
    def key(self) -> str:
        if self.kind == "train":
            return f"run-{self.spec['run']}"
        text = json.dumps({"kind": self.kind, "spec": self.spec}, sort_keys=True, default=str)
        return f"{self.kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    @property
    def cost_class(self) -> str:
        """Cells of one class take about as long (for estimates): the kind and what it trains or runs."""
        spec = self.spec
        what = spec["config"]["attack"] if self.kind == "train" else spec.get("defense") or spec.get("method") or ""
        return f"{self.kind}:{what}"

    @property
    def title(self) -> str:
        return f"{self.experiment} {self.row} | {self.col} | seed {self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "kind": self.kind,
            "row": self.row,
            "col": self.col,
            "seed": self.seed,
            "spec": self.spec,
            "needs": list(self.needs),
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Cell:
        return cls(
            values["experiment"],
            values["kind"],
            values["row"],
            values["col"],
            values["seed"],
            values["spec"],
            tuple(values["needs"]),
        )


def train_cell(experiment: str, row: str, col: str, config: RunConfig) -> Cell:
    """The cell that trains `config` (keyed by the run's own hash: shared by every experiment needing it)."""
    key = run_key(config)
    return Cell(experiment, "train", row, col, config.seed, {"run": key, "config": config.to_dict()})


def on_run(experiment: str, kind: str, row: str, col: str, run: Cell, **spec: Any) -> Cell:
    """A cell of `kind` on the model that `run` (a train cell) trains."""
    return Cell(experiment, kind, row, col, run.seed, {"run": run.spec["run"], **spec}, (run.spec["run"],))
