"""Diagnostics that read ground truth a defender does not have (which samples are poisoned, the test set):
yardsticks for the defenses, never inputs to them."""

from .concentration import (
    ConcentrationReport,
    PruningCurve,
    concentration,
    neuron_separation,
    plot_concentration,
    pruning_curve,
    report_order,
    separation_order,
)
from .sensitivity import Sensitivity, backdoor_sensitivity

__all__ = [
    "ConcentrationReport",
    "PruningCurve",
    "Sensitivity",
    "backdoor_sensitivity",
    "concentration",
    "neuron_separation",
    "plot_concentration",
    "pruning_curve",
    "report_order",
    "separation_order",
]
