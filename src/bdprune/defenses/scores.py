"""What a pruning defense measures: every neuron's score, and the layers it found them in.

EP, BNP, CLP and l-inf differ only in `score` (entropies, KL divergences, channel Lipschitz constants,
activation peaks); a rule (`bdprune.defenses.rules`) turns the scores into the neurons to prune.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..models.device import model_device
from ..neurons.groups import SampleMaxima
from ..neurons.layers import NeuronLayer, find_neuron_layers, silenceable, unscored_layers
from ..neurons.threshold import LayerDecision
from ..samples.features import SampleFeatures


def neuron_layers(model: nn.Module, data: ImageSet, *, require_bn: bool) -> list[NeuronLayer]:
    """The model's neuron layers, found with one sample of `data` (which must fit the model)."""
    example = data.float_images()[:1].to(model_device(model))
    try:
        return find_neuron_layers(model, example, require_bn=require_bn)
    except RuntimeError as exc:
        raise InvalidInput(
            f"the model cannot process images of shape {data.image_shape} from {data.name!r} "
            f"({str(exc).splitlines()[0]}); check the dataset and the model's input channels and size"
        ) from None


def scorable_layers(model: nn.Module, data: ImageSet, *, require_bn: bool) -> tuple[list[NeuronLayer], dict[str, str]]:
    """`neuron_layers` that can be silenced, and every normalisation layer left out with the reason."""
    layers, left = silenceable(model, neuron_layers(model, data, require_bn=require_bn))
    return layers, {**unscored_layers(model, layers), **left}


@dataclass
class Scores:
    """What a pruning defense measured: the layers, each neuron's score (NaN: not scored), the samples
    read, per-layer data for the report, warnings, the BN layers not scored (name -> reason), anything its
    report needs later (`cache`) and, for EP, the per-sample maxima a rule may read further (`maxima`)."""

    layers: list[NeuronLayer]
    scores: dict[str, torch.Tensor]
    samples: int
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    cache: Any = None
    unscored: dict[str, str] = field(default_factory=dict)
    maxima: SampleMaxima | None = None  # EP: every sample's maxima (kept or re-read), for rules that need more
    features: SampleFeatures | None = None  # EP: the classifier's features off the same pass, for the detector

    def notes(self, decisions: dict[str, LayerDecision] | None = None, silence: str = "bn") -> list[str]:
        """The warnings of a report: the scoring's own, layers not scored, the rule's caveats, BN fallbacks."""
        decisions = decisions or {}
        fallback = [
            f"{l.name}: no conv feeds it, so its pruned neurons are silenced at the BN"
            for l in self.layers
            if silence == "conv" and l.conv is None and l.name in decisions and decisions[l.name].selected
        ]
        return (
            self.warnings
            + [f"{name}: not scored: {why}" for name, why in self.unscored.items()]
            + [f"{name}: {d.note}" for name, d in decisions.items() if d.note]
            + fallback
        )
