"""Adaptive attacks of appendix G: the regularised attack of Eq. (4), ML-MMD, and BN re-parameterisation."""

from . import ml_mmd, preact_l2  # noqa: F401  (register the objectives)
from .base import ADAPTIVE, AdaptiveLoss, create_adaptive_loss, list_adaptive, register_adaptive
from .bn_reparam import bn_layers, reparameterize_bn
from .ml_mmd import MultiLevelMMD, mmd2_gaussian
from .preact_l2 import PreactivationMatching, paired_preactivation_distance

__all__ = [
    "ADAPTIVE",
    "AdaptiveLoss",
    "MultiLevelMMD",
    "PreactivationMatching",
    "bn_layers",
    "create_adaptive_loss",
    "list_adaptive",
    "mmd2_gaussian",
    "paired_preactivation_distance",
    "register_adaptive",
    "reparameterize_bn",
]
