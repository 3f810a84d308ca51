"""The verdict of a scan, as one record: what `bdprune scan --json` prints and `bdprune.scan(...)` returns."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

BACKDOORED = "backdoored"
NO_EVIDENCE = "no evidence"
# Exit statuses of `bdprune scan` (2 is every command's "bad input"; a traceback, a bug, exits 1 as well,
# so a pipeline that gates on "status 0" fails closed).
EXIT_STATUS = {NO_EVIDENCE: 0, BACKDOORED: 1}


@dataclass
class ScanResult:
    """A model-level verdict.

    Attributes:
        verdict: "backdoored" when `score` exceeds `threshold`, else "no evidence".
        score: the model's statistic (`statistic`, see `bdprune.detection.statistic`, or Neural Cleanse's
            anomaly index for method "nc").
        threshold: the score above which a model is called backdoored, and where it was chosen.
        method: "bnp" (BN statistics on clean samples) or "nc" (Neural Cleanse's trigger reversal).
        statistic: which statistic `score` is.
        statistics: every candidate statistic, for the record.
        suspects: the most suspicious neurons, [{"layer", "channel", "z"}], most suspicious first (method
            "bnp"); for "nc" the suspected target classes with their reversed masks' L1 norms.
        samples: clean samples read.
        evidence: further evidence from the training set (EP's entropies and consensus group), when given.
        suspected_samples: positions in the training set of the samples the consensus group holds.
        seconds: the scan's wall-clock time.
        trigger_witness: what `bdprune scan` adds beside the verdict, not part of it: the trigger read from
            the BN statistics and its share on held-out clean samples (`bdprune.detection.witness`).
        warnings: what the user should know (e.g. layers not scored).
    """

    verdict: str
    score: float
    threshold: float
    method: str
    statistic: str
    statistics: dict[str, float] = field(default_factory=dict)
    suspects: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0
    evidence: dict[str, Any] | None = None
    suspected_samples: list[int] | None = None
    seconds: float = 0.0
    threshold_source: str = ""
    warnings: list[str] = field(default_factory=list)
    trigger_witness: dict[str, Any] | None = None

    @property
    def backdoored(self) -> bool:
        return self.verdict == BACKDOORED

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a NaN (a statistic that could not be computed) becomes None."""
        return _clean({**asdict(self), "exit_status": self.exit_status})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    def line(self) -> str:
        """The verdict in one line, e.g. "backdoored (score 41.2 > threshold 12.0, bnp max robust z)"."""
        sign = ">" if self.backdoored else "<="
        return (
            f"{self.verdict} (score {self.score:.2f} {sign} threshold {self.threshold:g}; "
            f"{self.method} {self.statistic})"
        )


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def verdict_of(score: float, threshold: float) -> str:
    """ "backdoored" above the threshold; a score that could not be computed (NaN) is no evidence."""
    return BACKDOORED if score == score and score > threshold else NO_EVIDENCE
