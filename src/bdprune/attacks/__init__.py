"""Attacks: the poisoning interface, the attack registry, and dataset poisoning with recorded indices."""

from . import badnets, blended  # noqa: F401  (register the attacks)
from .badnets import BadNets
from .base import ALL_TO_ALL, ALL_TO_ONE, ATTACKS, Attack, create_attack, list_attacks, register_attack
from .blended import Blended
from .poison import choose_poison_positions, poison_at, poison_test_set, poison_training_set

__all__ = [
    "ALL_TO_ALL", "ALL_TO_ONE", "ATTACKS", "Attack", "BadNets", "Blended",
    "choose_poison_positions", "create_attack", "poison_at", "list_attacks", "poison_test_set", "poison_training_set",
    "register_attack",
]
