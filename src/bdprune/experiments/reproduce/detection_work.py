"""What a cell of the `detection` experiments does (kind "scan"): BNP's statistics of a population model before
and after a repair, or the slower evidence (Neural Cleanse, EP). Registered into `work.WORK` on import (the
reproduce package imports this module), so `work` never imports the detection experiment.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ...defenses import create_defense
from ...detection.scanner import bnp_statistics, ep_evidence
from ...detection.scanner import scan as scan_model
from ...metrics import evaluate
from .cells import Cell
from .work import WORK, defender, test_set


def _layers(layers: dict[str, Any]) -> dict[str, dict[str, list]]:
    return {n: {"kl": l.kl.tolist(), "lvr": l.lvr.tolist(), "live": l.live.tolist()} for n, l in layers.items()}


def scan(cell: Cell, store: Any, suspect: Any, run: Any) -> dict[str, Any]:
    """The work of a scan cell (see `scan_cells`)."""
    spec, model = cell.spec, suspect.model
    data, _ = defender(suspect, run, frozenset({"clean", "train"}), spec)
    out: dict[str, Any] = {"status": "ok", "model": str(store.run_dir(spec["run"])), "seconds_by_part": {}}
    out["metrics"] = {"train_asr": (store.get(f"run-{spec['run']}") or {}).get("metrics", {}).get("asr")}
    if spec["part"] == "bnp":
        t = time.perf_counter()
        layers, stats, warnings, _ = bnp_statistics(model, data.clean)
        out["seconds_by_part"]["bnp"] = time.perf_counter() - t
        out["bnp"] = {"statistics": stats, "layers": _layers(layers), "warnings": warnings[:5]}
        if cell.row == "clean":
            return out
        t = time.perf_counter()
        repaired, report = create_defense("bnp", **spec["repair"]).run(model, data)
        after = evaluate(repaired, test_set(run, spec), suspect.attack)
        out["seconds_by_part"]["repair"] = time.perf_counter() - t
        layers_after, stats_after, _, _ = bnp_statistics(repaired, data.clean)
        out["after"] = {
            "metrics": {**after, "pruned": report.num_pruned},
            "statistics": stats_after,
            "layers": _layers(layers_after),
        }
        return out
    t = time.perf_counter()
    nc = scan_model(model, data.clean, method="nc", nc_options={**spec["nc"], "seed": spec["draw_seed"]})
    out["seconds_by_part"]["nc"] = time.perf_counter() - t
    out["nc"] = {"anomaly_index": nc.score, "suspects": nc.suspects}
    t = time.perf_counter()
    train = data.train.subset(torch.arange(min(len(data.train), spec["ep_samples"])))
    evidence, suspected = ep_evidence(model, train)
    out["seconds_by_part"]["ep"] = time.perf_counter() - t
    flags = data.train_poisoned[: len(train)] if data.train_poisoned is not None else None
    if flags is not None and suspected:  # diagnostics only: how much of the suspected group is poisoned
        where = {int(i): k for k, i in enumerate(train.indices.tolist())}
        hit = sum(bool(flags[where[i]]) for i in suspected)
        evidence["diag_precision"] = hit / len(suspected)
        evidence["diag_recall"] = hit / max(int(flags.sum()), 1)
    out["ep"] = evidence
    return out


WORK["scan"] = scan
