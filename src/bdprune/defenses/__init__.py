"""Defenses: each is `defense.run(model, data) -> (repaired_model, report)`, in a registry.

The pruning defenses (EP, BNP, CLP, l-inf) score neurons and leave the choice to a rule
(`bdprune.defenses.rules`); the others (FT, FP, NAD, ANP) repair in their own way.
"""

from . import anp, bnp, clp, ep, fineprune, finetune, ftsam, linf, nad, neural_cleanse, recover_defense, unlearn  # noqa: F401  (register the defenses)
from .anp import ANP
from .base import DEFENSES, Defense, DefenseData, DefenseReport, LayerReport, create_defense, list_defenses
from .bnp import BNP, bnp_scores
from .clp import CLP
from .ep import EP, ep_scores
from .fineprune import FP
from .finetune import FT
from .ftsam import FTSAM
from .linf import LInf
from .nad import NAD
from .neural_cleanse import NC
from .pruning import PruningDefense
from .recover_defense import BNPRecover, Recover
from .rules import Rule, create_rule, list_rules
from .scores import Scores
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
    "NC",
    "BNPRecover",
    "Defense",
    "DefenseData",
    "DefenseReport",
    "LInf",
    "LayerReport",
    "PruningDefense",
    "Recover",
    "Rule",
    "Scores",
    "Unlearn",
    "bnp_scores",
    "create_defense",
    "create_rule",
    "ep_scores",
    "list_defenses",
    "list_rules",
]
