"""Attacks: the poisoning interface, the attack registry, and dataset poisoning with recorded indices."""

from . import badnets, blended, refool, wanet  # noqa: F401  (register the attacks)
from . import cla, iab, ssba  # noqa: F401  (learned attacks)
from .badnets import BadNets
from .base import ALL_TO_ALL, ALL_TO_ONE, ATTACKS, Attack, create_attack, list_attacks, register_attack
from .blended import Blended
from .iab import IAB
from .learned import LearnedAttack, fit_or_load
from .poison import (
    choose_cross_positions, choose_poison_positions, cross_at, poison_at, poison_test_set, poison_training_set,
)
from .refool import Refool
from .ssba import SSBA
from .wanet import WaNet

__all__ = [
    "ALL_TO_ALL", "ALL_TO_ONE", "ATTACKS", "Attack", "BadNets", "Blended",
    "choose_poison_positions", "create_attack", "poison_at", "list_attacks", "poison_test_set", "poison_training_set",
    "register_attack", "CLA", "IAB", "SSBA", "LearnedAttack", "fit_or_load", "Refool", "WaNet", "choose_cross_positions", "cross_at",
]
