"""Attacks: the poisoning interface, the attack registry, and dataset poisoning with recorded indices."""

from . import badnets, blended, cla, iab, masked, refool, sinusoid, smooth, sparse, ssba, wanet, wb  # noqa: F401
from .badnets import BadNets
from .base import (
    ALL_TO_ALL,
    ALL_TO_ONE,
    ATTACKS,
    Attack,
    check_trigger,
    choose_trigger,
    create_attack,
    register_attack,
)
from .blended import Blended
from .cla import CLA
from .iab import IAB
from .learned import JointAttack, LearnedAttack, fit_or_load
from .masked import Masked
from .poison import (
    choose_cross_positions,
    choose_poison_positions,
    cross_at,
    poison_at,
    poison_test_set,
    poison_training_set,
)
from .refool import Refool
from .sinusoid import Sinusoid
from .smooth import Smooth
from .sparse import Sparse
from .ssba import SSBA
from .wanet import WaNet
from .wb import WB


def list_attacks(pattern: str = "*", *, learned: bool | None = None) -> list[str]:
    """Registered attack names matching `pattern`; `learned=True` (False) keeps only the attacks that (do not)
    need a fit first, like timm's `list_models(pretrained=True)`."""
    names = ATTACKS.names(pattern)
    if learned is None:
        return names
    return [n for n in names if issubclass(ATTACKS.get(n), LearnedAttack) == learned]  # type: ignore[arg-type]


__all__ = [
    "ALL_TO_ALL",
    "ALL_TO_ONE",
    "ATTACKS",
    "CLA",
    "IAB",
    "SSBA",
    "WB",
    "Attack",
    "BadNets",
    "Blended",
    "JointAttack",
    "LearnedAttack",
    "Masked",
    "Refool",
    "Sinusoid",
    "Smooth",
    "Sparse",
    "WaNet",
    "check_trigger",
    "choose_cross_positions",
    "choose_poison_positions",
    "choose_trigger",
    "create_attack",
    "cross_at",
    "fit_or_load",
    "list_attacks",
    "poison_at",
    "poison_test_set",
    "poison_training_set",
    "register_attack",
]
