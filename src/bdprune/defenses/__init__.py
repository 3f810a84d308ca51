"""Defenses: each is `defense.run(model, data) -> (repaired_model, report)`, in a registry."""

from . import anp, bnp, clp, ep, fineprune, finetune, ftsam, linf, nad, recover_defense, unlearn  # noqa: F401  (register the defenses)
from .anp import ANP
from .base import DEFENSES, Defense, DefenseData, DefenseReport, LayerReport, create_defense, list_defenses
from .bnp import BNP
from .clp import CLP
from .ep import EP
from .fineprune import FP
from .finetune import FT
from .ftsam import FTSAM
from .linf import LInf
from .nad import NAD
from .recover_defense import BNPRecover, Recover
from .unlearn import Unlearn

__all__ = [
    "ANP",
    "BNP",
    "CLP",
    "DEFENSES",
    "EP",
    "FP",
    "FT",
    "FTSAM",
    "NAD",
    "BNPRecover",
    "Defense",
    "DefenseData",
    "DefenseReport",
    "LInf",
    "LayerReport",
    "Recover",
    "Unlearn",
    "create_defense",
    "list_defenses",
]
