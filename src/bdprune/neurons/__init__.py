"""Neurons: find (conv, BN) pairs, gather pre-activation statistics, score, threshold and prune neurons."""

from .pairs import ConvBNPair, find_conv_bn_pairs

__all__ = ["ConvBNPair", "find_conv_bn_pairs"]
