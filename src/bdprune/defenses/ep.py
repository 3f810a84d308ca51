"""EP: entropy-based pruning (sections 3.4 to 4.4 of the paper), given the possibly poisoned training set.

For every neuron (a channel of a BN layer's input: a conv output, or a residual sum in a pre-activation
network), each training sample contributes one number: the spatial maximum of the channel's pre-activation.
On a poisoned set a backdoor neuron's numbers form two populations with different moments (benign and
poisoned), so after standardising to unit variance their differential entropy is lower than that of a benign,
roughly Gaussian neuron (Corollary 1). The paper prunes, per layer, the neurons with entropy below
mean - u * std (section 4.4, u = 3 on CIFAR-10: `rule="zscore"`); the default rule here is "consensus"
(`bdprune.defenses.rules.consensus`), which the paper's rule cannot match on the small models of the CPU preset.

Unlike the official code (one batch of 500 samples, a Python loop over histogram bins, `.cuda()`), this
reads the whole training set in one streaming pass with memory fixed by the histogram size (plus, for a rule
that reads the training set again, every sample's maxima when they fit in `memory_mb`), runs on whatever
device the model is on, and offers better-founded estimators (see `bdprune.neurons.entropy`).
`estimator="exact"` is the official estimator itself, on the first 500 samples (one more pass over them
keeps their raw maxima).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..neurons.collect import collect_max_histograms
from ..neurons.entropy import ESTIMATORS, EXACT, EXACT_BIN_WIDTH, exact_entropy, standardized_entropy
from ..neurons.groups import SampleMaxima, collect_maxima
from ..neurons.layers import NeuronLayer
from ..neurons.sketch import StreamingHistogram
from ..params import param
from ..samples.features import recording
from .base import DefenseData, DefenseReport, register_defense
from .harm import HarmCheck
from .pruning import THEN, PruningDefense, most_suspicious
from .scores import Scores, scorable_layers
from .stamp import StampStage

PLOT_BINS = 80  # bins of the histograms kept in the report for plotting
EXACT_SAMPLES = 500  # the official code's one batch


def entropies(
    sketches: dict[str, StreamingHistogram], estimator: str = "histogram", bin_width: float | None = None
) -> dict[str, torch.Tensor]:
    """Each neuron's differential entropy of its standardised maxima, from the histograms of one pass; NaN for
    a neuron that produced NaN or inf on some sample (broken, not scored on the rest)."""
    options: dict[str, Any] = {"bin_width": bin_width} if estimator == "histogram" else {}
    return {
        name: torch.where(s.nonfinite.cpu() > 0, float("nan"), standardized_entropy(s, estimator, **options).cpu())
        for name, s in sketches.items()
    }


def ep_scores(
    model: nn.Module,
    train: ImageSet,
    *,
    layers: list[NeuronLayer] | None = None,
    estimator: str = "histogram",
    bin_width: float | None = None,
    num_bins: int = 2048,
    batch_size: int = 256,
    groups: torch.Tensor | None = None,
    keep_maxima: bool = False,
    progress: bool = False,
) -> Scores:
    """EP's score of every neuron: the entropy of its standardised per-sample maxima over `train`, one pass.

    Args:
        layers: the neuron layers to score (default: every silenceable one of `model`).
        estimator, bin_width, num_bins: see `EP`.
        groups: (len(train),) int64 groups counted separately in the histograms (plots only; e.g. known
            poisoned samples in a diagnostic).
        keep_maxima: keep every sample's maxima (N x neurons x 4 bytes) for rules that read them again.

    Returns `Scores` whose `cache` holds the histograms and `maxima` the per-sample maxima (kept or re-read).
    """
    unscored: dict[str, str] = {}
    if layers is None:
        layers, unscored = scorable_layers(model, train, require_bn=False)
    if not layers:
        raise InvalidInput("the model has no convolution whose output EP could read")
    kept: dict[str, torch.Tensor] | None = {} if keep_maxima else None
    sketches = collect_max_histograms(
        model, train, layers, batch_size=batch_size, num_bins=num_bins, groups=groups, progress=progress, keep=kept
    )
    if estimator == EXACT:
        wanted = {l.name: list(range(l.channels)) for l in layers}
        values, _ = collect_maxima(model, train, layers, wanted, batch_size=batch_size)
        width = bin_width if bin_width is not None else EXACT_BIN_WIDTH
        starts = torch.tensor([0] + [l.channels for l in layers]).cumsum(0).tolist()
        scores = {l.name: exact_entropy(values[:, starts[i] : starts[i + 1]], width) for i, l in enumerate(layers)}
        scores = {n: torch.where(sketches[n].nonfinite.cpu() > 0, float("nan"), v.cpu()) for n, v in scores.items()}
    else:
        scores = entropies(sketches, estimator, bin_width)
    extra, warnings = {}, []
    for layer in layers:
        sketch = sketches[layer.name]
        nonfinite = int(sketch.nonfinite.sum())
        broken = (sketch.nonfinite > 0).nonzero().flatten().tolist()
        undefined = [c for c in torch.isnan(scores[layer.name]).nonzero().flatten().tolist() if c not in broken]
        extra[layer.name] = {"nonfinite_values": nonfinite, "nonfinite_neurons": broken, "no_entropy": undefined}
        if broken:
            warnings.append(
                f"{layer.name}: {len(broken)} neuron(s) gave NaN/inf pre-activations ({nonfinite} "
                f"maxima); not scored, not pruned: {broken[:10]}"
            )
        if undefined:
            warnings.append(
                f"{layer.name}: {len(undefined)} neuron(s) constant on every sample (no entropy; "
                f"not scored, not pruned): {undefined[:10]}"
            )
    maxima = SampleMaxima(model, train, layers, batch_size, kept)
    return Scores(layers, scores, len(train), extra, warnings, cache=sketches, unscored=unscored, maxima=maxima)


@register_defense
@dataclass(eq=False, kw_only=True)
class EP(PruningDefense):
    """Entropy-based pruning.

    Args:
        rule: "consensus" (default; `bdprune.defenses.rules.consensus`), or a per-layer rule: "zscore" (the
            paper's mean - u * std), "mad", "iterative", "count". The rule's parameters go beside it
            (`create_defense("ep", rule="zscore", u=3)`, or `EP(rule=ZScore(u=3))`).
        estimator: "histogram", "vasicek", "kde" or "exact" (the official one-batch estimator: the first
            `max_samples`, default 500, bin width 0.01; see `bdprune.neurons.entropy`).
        bin_width: the histogram estimator's bin width in standard deviations, honoured exactly (default:
            Scott's rule; "exact": 0.01).
        num_bins: resolution of the streaming histogram per neuron.
        max_samples: use only the first this many training samples (default: all).
        plot_neurons: how many of the most suspicious neurons get histograms in the report.
        memory_mb: a rule that reads the training set again (consensus) is served from every sample's maxima
            kept by the scoring pass when they take at most this many MB; otherwise it reads the set again.
        max_harm, check_samples: the check of the result on training samples outside the rule's suspected
            group (`bdprune.defenses.harm`): at most 2 points lost on 2,000 of them, or prune fewer.
        then: "unlearn" (default): after pruning, the suspected poisoned training samples are named
            (`bdprune.samples.detector`) and, when the pruned model still gives most of them their label,
            unlearned (`bdprune.defenses.unlearn.UnlearnStage`); "none": pruning only.
        stamp: with then="unlearn", where the detector names no relabelled group, look for a stamp that every
            training sample of one label carries and no other label's does (a clean-label trigger on a whole
            label: CLA at the paper's rate) and, when the suspect sends most other-label samples stamped with
            it to that label, unlearn it (`bdprune.defenses.stamp`); False: the model is returned unchanged.
        retention, silence, batch_size, progress: see `PruningDefense`.

    Example:
        >>> repaired, report = EP().run(model, DefenseData(train=mixed_training_set))  # rule "consensus"
        >>> create_defense("ep", rule="zscore", u=3)  # the paper's rule
        >>> report.num_pruned, report.pruned
    """

    name = "ep"
    needs = frozenset({"train"})
    side = "low"
    default_rule = "consensus"

    estimator: str = param("histogram", choices=(*ESTIMATORS, EXACT))
    bin_width: float | None = param(None, gt=0.0)
    num_bins: int = param(2048, ge=16)
    max_samples: int | None = param(None, ge=1)
    plot_neurons: int = param(6, ge=0)
    memory_mb: int = param(512, ge=0)
    max_harm: float | None = param(2.0, ge=0.0)
    check_samples: int = param(2000, ge=0)
    then: str = param("unlearn", choices=THEN)
    stamp: bool = True

    def stamp_stage(self) -> StampStage | None:
        return StampStage(batch_size=self.batch_size) if self.stamp and self.then == "unlearn" else None

    def training_set(self, data: DefenseData) -> DefenseData:
        """`data` with the training set cut to `max_samples` (500 for the exact estimator)."""
        train = data.require("train", "EP")
        limit = self.max_samples if self.max_samples is not None or self.estimator != EXACT else EXACT_SAMPLES
        if limit is None or limit >= len(train):
            return data
        groups = data.train_poisoned[:limit] if data.train_poisoned is not None else None
        return data.but(train=train.subset(torch.arange(limit)), train_poisoned=groups)

    def split(self, data: DefenseData) -> tuple[DefenseData, HarmCheck | None]:
        data = self.training_set(data)
        check = HarmCheck("training samples", pool=data.train, count=self.check_samples)
        return data, check if self.max_harm is not None else None

    def score(self, model: nn.Module, data: DefenseData) -> Scores:
        train = data.require("train", "EP")
        layers, unscored = scorable_layers(model, train, require_bn=False)
        neurons = sum(l.channels for l in layers)
        keep = "train" in self.rule.needs and len(train) * neurons * 4 <= self.memory_mb * 2**20
        groups = data.train_poisoned.long() if data.train_poisoned is not None else None
        with recording(model, enabled=self.then == "unlearn") as recorder:  # the detector's features, same pass
            scored = ep_scores(
                model, train, layers=layers, estimator=self.estimator, bin_width=self.bin_width,
                num_bins=self.num_bins, batch_size=self.batch_size, groups=groups, keep_maxima=keep,
                progress=self.progress,
            )  # fmt: skip
        scored.unscored, scored.features = unscored, recorder.of(train)
        return scored

    def annotate(self, report: DefenseReport, scores: Scores) -> None:
        """Coarse per-group histograms of the most suspicious neurons (for the Figure 2 style plot)."""
        out = []
        for name, channel, z in most_suspicious(report, self.plot_neurons, "low"):
            sketch = scores.cache[name]
            edges, counts = sketch.coarse(channel, PLOT_BINS)
            out.append({"layer": name, "channel": channel, "z": z, "edges": edges, "counts": counts,
                        "groups": ["benign", "poisoned"] if sketch.groups == 2 else ["all"]})  # fmt: skip
        report.extra["histograms"] = out
