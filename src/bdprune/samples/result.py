"""What a poisoned-sample detector returns: which training samples it suspects, a score for every sample,
and its verdict per class, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SuspectedSamples:
    """Attributes:
    method: the detector.
    indices: (k,) int64 positions in the training set of the suspected poisoned samples (empty: none found).
    scores: (N,) float32, higher = more suspicious (comparable within a class; NaN where not scored).
    classes: one record per class: its verdict and the statistics that made it.
    seconds: time taken.
    """

    method: str
    indices: torch.Tensor
    scores: torch.Tensor
    classes: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def found(self) -> bool:
        return len(self.indices) > 0

    def mask(self, n: int | None = None) -> torch.Tensor:
        """(N,) bool membership of the suspected group."""
        out = torch.zeros(n if n is not None else len(self.scores), dtype=torch.bool)
        out[self.indices] = True
        return out

    def summary(self) -> str:
        flagged = [c["class"] for c in self.classes if c.get("poisoned")]
        if not self.found:
            return f"{self.method}: no poisoned group found"
        return f"{self.method}: {len(self.indices)} suspected samples in class(es) {flagged}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "suspected": len(self.indices),
            "classes": self.classes,
            "seconds": self.seconds,
        }


def flagged_labels(classes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The labels a detection flagged, from its per-label records: label, evidence ("isolation" or "surplus"),
    suspected samples and the label's count over the median label count."""
    return [
        {"label": c["class"], "evidence": c.get("evidence"), "suspected": c.get("suspected"),
         "count_ratio": c.get("count_ratio")}
        for c in classes if c.get("poisoned")
    ]  # fmt: skip


def describe_flagged(labels: list[dict[str, Any]]) -> str:
    """One phrase per flagged label, for the console: why the detector named its samples."""
    why = {"isolation": "an isolated group", "surplus": "a relabelled-looking group and a surplus of samples"}
    parts = []
    for entry in labels:
        reason = why.get(entry.get("evidence"), "flagged")
        if entry.get("evidence") == "surplus" and entry.get("count_ratio") is not None:
            reason += f" ({entry['count_ratio']:.2f}x the median label count)"
        parts.append(f"label {entry['label']}: {reason}")
    return "; ".join(parts)


def precision_recall(suspected: torch.Tensor, poisoned: torch.Tensor) -> tuple[float, float]:
    """Diagnostics only (the ground truth is never an input of a decision): precision and recall in percent
    of a (N,) bool suspected mask against the (N,) bool poisoned flags; NaN where undefined."""
    tp = int((suspected & poisoned).sum())
    s, p = int(suspected.sum()), int(poisoned.sum())
    return (100 * tp / s if s else float("nan")), (100 * tp / p if p else float("nan"))
