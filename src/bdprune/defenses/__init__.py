"""Defenses: each is `defense.run(model, data) -> (repaired_model, report)`, in a registry."""

from . import anp, bnp, clp, ep, fineprune, finetune, linf, nad, neural_cleanse  # noqa: F401  (register the defenses)
from .anp import ANP
from .base import DEFENSES, Defense, DefenseData, DefenseReport, LayerReport, create_defense, list_defenses
from .bnp import BNP
from .clp import CLP
from .ep import EP
from .fineprune import FP
from .finetune import FT
from .linf import LInf
from .nad import NAD
from .neural_cleanse import NC

__all__ = [
    "ANP",
    "BNP",
    "CLP",
    "DEFENSES",
    "EP",
    "FP",
    "FT",
    "NAD",
    "NC",
    "Defense",
    "DefenseData",
    "DefenseReport",
    "LInf",
    "LayerReport",
    "create_defense",
    "list_defenses",
]
