"""Defenses: each is `defense.run(model, data) -> (repaired_model, report)`, in a registry."""

from . import bnp, ep  # noqa: F401  (register the defenses)
from .base import DEFENSES, Defense, DefenseData, DefenseReport, LayerReport, create_defense, list_defenses
from .bnp import BNP
from .ep import EP

__all__ = ["BNP", "DEFENSES", "Defense", "DefenseData", "DefenseReport", "EP", "LayerReport",
           "create_defense", "list_defenses"]
