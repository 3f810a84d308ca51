"""Run several defenses on one suspicious model and the same defender's data, like the paper's Tables 1
and 3: ACC, ASR, neurons pruned and seconds per defense, measured in one process on the same data.

The seconds are each defense's own `report.seconds` (from receiving the model and data to returning the
repaired model); evaluation on the test set is not included, as in Table 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .attacks import Attack
from .data import ImageSet
from .defenses import Defense, DefenseData, DefenseReport
from .files import atomic_write_bytes, atomic_write_json, staged_output
from .metrics import evaluate
from .repair import Suspect, accuracy_warnings, defender_data
from .table import format_table

COLUMNS = ["defense", "ACC %", "ASR %", "pruned", "samples", "time s"]


@dataclass
class Comparison:
    """The rows of a comparison (the first row is the suspicious model) and each defense's report."""

    rows: list[dict[str, Any]]
    reports: dict[str, DefenseReport] = field(default_factory=dict)
    setting: dict[str, Any] = field(default_factory=dict)  # what was compared on: samples, seed, defenses
    warnings: list[str] = field(default_factory=list)  # about the suspect and its input

    def table(self) -> str:
        return format_table(self.rows, COLUMNS)

    def markdown(self) -> str:
        def fmt(v: Any) -> str:
            return f"{v:.2f}" if isinstance(v, float) else "-" if v is None else str(v)

        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
        lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write comparison.json, comparison.md and reports/METHOD.json into `out_dir`."""
        with staged_output(out_dir) as out:
            atomic_write_json(out / "comparison.json", {"rows": self.rows, **self.setting, **(extra or {})})
            atomic_write_bytes(out / "comparison.md", self.markdown().encode())
            for name, report in self.reports.items():
                report.save(out / "reports" / f"{name}.json")
        return Path(out_dir)


def compare_defenses(
    model: nn.Module,
    defenses: list[Defense],
    data: DefenseData,
    *,
    test: ImageSet | None,
    attack: Attack | None,
    on_done=None,
) -> Comparison:
    """Run every defense on `model` (never modified) with the same `data`, and evaluate each result.

    Args:
        model: the suspicious model.
        defenses: configured defenses, run in order.
        data: the defender's data, shared by all of them.
        test, attack: ACC (and ASR) are measured on `test` when given.
        on_done: optional callback(row) after each defense (e.g. to print progress).
    """
    before = evaluate(model, test, attack) if test is not None else {}
    rows = [
        {
            "defense": "none",
            "ACC %": before.get("acc"),
            "ASR %": before.get("asr"),
            "pruned": 0,
            "samples": None,
            "time s": None,
        }
    ]
    reports = {}
    for defense in defenses:
        repaired, report = defense.run(model, data)
        after = evaluate(repaired, test, attack) if test is not None else {}
        row = {
            "defense": defense.name,
            "ACC %": after.get("acc"),
            "ASR %": after.get("asr"),
            "pruned": report.num_pruned,
            "samples": report.samples,
            "time s": report.seconds,
        }
        rows.append(row)
        reports[defense.name] = report
        if on_done is not None:
            on_done(row)
        del repaired
    return Comparison(rows, reports)


def compare_run(
    suspect: Suspect,
    defenses: list[Defense],
    *,
    clean_samples: int = 500,
    seed: int = 0,
    data_dir: str | None = None,
    test_samples: int | None = None,
    on_done=None,
    **sources: Any,
) -> Comparison:
    """`compare_defenses` on a saved or foreign model: the defender's data all the defenses need, gathered
    once (`bdprune.repair.defender_data`, which takes `sources`: train, train_indices, clean), and ACC / ASR on
    its test set (`test_samples` of it drawn with `seed`: evaluation only)."""
    needs = set().union(*(d.needs for d in defenses))
    data, test = defender_data(
        suspect, needs, clean_samples=clean_samples, seed=seed, data_dir=data_dir, test_samples=test_samples, **sources
    )
    _, warnings = accuracy_warnings(suspect, data)
    result = compare_defenses(suspect.model, defenses, data, test=test, attack=suspect.attack, on_done=on_done)
    result.setting = {
        "clean_samples": clean_samples,
        "seed": seed,
        "test_samples": len(test) if test is not None else None,
        "defenses": {d.name: d.params() for d in defenses},
        **suspect.inputs(),
    }
    result.warnings = warnings
    return result
