"""A classifier's head: the layer whose input is the network's latent (penultimate) representation."""

from __future__ import annotations

from torch import nn

from ..errors import InvalidInput


def classifier_head(model: nn.Module, reader: str = "") -> nn.Linear:
    """The model's classifier: its last registered `nn.Linear` (bdprune's ResNets, torchvision, timm).

    Args:
        reader: who needs it, named in the error (e.g. "wb") when the model has none.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        prefix = f"{reader}: " if reader else ""
        raise InvalidInput(f"{prefix}the model has no nn.Linear classifier layer whose input could be read")
    return linears[-1]
