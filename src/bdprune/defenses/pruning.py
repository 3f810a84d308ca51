"""What the pruning defenses share (EP, BNP, CLP, l-inf): score every neuron, apply a per-layer outlier
rule, silence the chosen neurons in a copy, and report every score, threshold and pruned neuron."""

from __future__ import annotations

import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..models.device import model_device
from ..neurons.layers import NeuronLayer, find_neuron_layers, silenceable, unscored_layers
from ..neurons.mask import SILENCE_MODES, ChannelMask, pruned_copy
from ..neurons.threshold import RULES, LayerDecision, select_neurons
from ..params import check_value
from .base import Defense, DefenseData, DefenseReport, LayerReport

# u when none is given, by rule. The paper's z-score rule uses u = 3 (section 5.1). A median/MAD scale is not
# inflated by the outliers themselves, so the same u flags far more neurons; 6 was chosen on development
# models (BadNets and Blended at seed 0, widths 16, 2 and 10 epochs; see the README's effectiveness section).
DEFAULT_U = {"zscore": 3.0, "iterative": 3.5, "mad": 6.0, "guarded": 6.0}


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
    read, per-layer data for the report, warnings, the BN layers not scored (name -> reason), and anything
    its report needs later (`cache`)."""

    layers: list[NeuronLayer]
    scores: dict[str, torch.Tensor]
    samples: int
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    cache: Any = None
    unscored: dict[str, str] = field(default_factory=dict)

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


class PruningDefense(Defense):
    """Base class of the defenses that prune the outlying neurons of each layer by their scores.

    Args:
        u: threshold in (robust) standard deviations of the layer's scores; None: the rule's default
            (`DEFAULT_U`: the paper's 3 for "zscore", 6 for "mad", whose scale the outliers do not inflate).
        rule: "zscore" (mean -/+ u * std), "mad" (median -/+ u * 1.4826 MAD), "iterative" (the z-score rule
            repeated on the neurons left) or "count" (the `count` most extreme neurons across layers).
        count: with rule "count": how many neurons to prune in total.
        silence: how a pruned neuron is silenced: "bn", "bn-weight" or "conv" (see `bdprune.neurons.mask`).
        batch_size: samples per forward pass.
        progress: show a progress bar.

    A subclass sets `side` and implements `score`; it may add plot data to the report in `annotate`.
    """

    side: ClassVar[str] = "high"  # which tail is suspicious: "low" (EP's entropies) or "high"
    rules: ClassVar[tuple[str, ...]] = RULES  # the rules this defense accepts (a subclass may add its own)

    def __init__(
        self, *, u: float | None, rule: str, count: int | None, silence: str, batch_size: int, progress: bool
    ) -> None:
        if rule not in self.rules:
            raise InvalidInput(f"unknown rule {rule!r}; choose one of {self.rules}")
        if silence not in SILENCE_MODES:
            raise InvalidInput(f"unknown silencing mode {silence!r}; choose one of {SILENCE_MODES}")
        self.u = check_value(f"{self.name}: u", DEFAULT_U.get(rule, 3.0) if u is None else u, float, {"ge": 0.0})
        self.count = check_value(f"{self.name}: count", count, int | None, {"ge": 0})
        self.batch_size = check_value(f"{self.name}: batch_size", batch_size, int, {"ge": 1})
        self.rule, self.silence, self.progress = rule, silence, progress

    @abstractmethod
    def score(self, model: nn.Module, data: DefenseData) -> Scores:
        """Every neuron's score (the model is not modified)."""

    def annotate(self, report: DefenseReport, scores: Scores) -> None:
        """Add plot data to the report (e.g. the most suspicious neurons' distributions)."""

    def run(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        start = time.perf_counter()
        scored = self.score(model, data)
        repaired, decisions = decide_and_prune(
            model,
            scored.layers,
            scored.scores,
            u=self.u,
            side=self.side,
            rule=self.rule,
            count=self.count,
            silence=self.silence,
        )
        seconds = time.perf_counter() - start
        report = DefenseReport(
            method=self.name,
            config=self.params(),
            samples=scored.samples,
            seconds=seconds,
            layers=layer_reports(scored.layers, scored.scores, decisions, scored.extra),
            warnings=scored.notes(decisions, self.silence),
            unscored=scored.unscored,
        )
        self.annotate(report, scored)
        return repaired, report


def decide_and_prune(
    model: nn.Module,
    layers: list[NeuronLayer],
    scores: dict[str, torch.Tensor],
    *,
    u: float,
    side: str,
    rule: str,
    count: int | None,
    silence: str,
) -> tuple[nn.Module, dict[str, LayerDecision]]:
    """Apply the threshold rule and return the pruned copy of `model` and each layer's decision."""
    decisions = select_neurons(scores, u=u, side=side, rule=rule, count=count)
    mask = ChannelMask({name: d.selected for name, d in decisions.items()})
    repaired = pruned_copy(model, {l.name: l for l in layers}, mask, silence)
    return repaired, decisions


def layer_reports(
    layers: list[NeuronLayer],
    scores: dict[str, torch.Tensor],
    decisions: dict[str, LayerDecision],
    extra: dict[str, dict] | None = None,
) -> list[LayerReport]:
    return [
        LayerReport(
            name=l.name,
            conv=l.conv,
            channels=l.channels,
            scores=scores[l.name].tolist(),
            z=decisions[l.name].z.tolist(),
            center=decisions[l.name].center,
            scale=decisions[l.name].scale,
            threshold=decisions[l.name].threshold,
            pruned=decisions[l.name].selected,
            note=decisions[l.name].note,
            extra=(extra or {}).get(l.name, {}),
        )
        for l in layers
    ]


def most_suspicious(report: DefenseReport, k: int, side: str) -> list[tuple[str, int, float]]:
    """The k neurons with the most extreme z-scores: (layer, channel, z), most suspicious first."""
    sign = -1.0 if side == "low" else 1.0
    ranked = [
        (sign * z, layer.name, c) for layer in report.layers for c, z in enumerate(layer.z) if z is not None and z == z
    ]
    ranked.sort(reverse=True)
    return [(name, c, sign * s) for s, name, c in ranked[:k]]
