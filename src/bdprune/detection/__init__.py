"""Is this model backdoored? A model-level verdict from the paper's statistics (issue 25), and the Neural
Cleanse baseline. `bdprune.scan(model, clean)` is `bdprune.detection.scan`."""

from .record import BACKDOORED, EXIT_STATUS, NO_EVIDENCE, ScanResult
from .scanner import DEFAULT_STATISTIC, DEFAULT_THRESHOLD, METHODS, scan

__all__ = [
    "BACKDOORED",
    "DEFAULT_STATISTIC",
    "DEFAULT_THRESHOLD",
    "EXIT_STATUS",
    "METHODS",
    "NO_EVIDENCE",
    "ScanResult",
    "scan",
]
