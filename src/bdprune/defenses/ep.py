"""EP: entropy-based pruning (sections 3.4 to 4.4 of the paper), given the possibly poisoned training set.

For every neuron (a channel of a BN layer's input: a conv output, or a residual sum in a pre-activation
network), each training sample contributes one number: the spatial maximum of the channel's pre-activation. On a poisoned set a backdoor neuron's numbers form two
populations with different moments (benign and poisoned), so after standardising to unit variance their
differential entropy is lower than that of a benign, roughly Gaussian neuron (Corollary 1). Per layer,
neurons with entropy below mean - u * std are pruned (section 4.4, u = 3 on CIFAR-10).

Unlike the official code (one batch of 500 samples, a Python loop over histogram bins, `.cuda()`), this
reads the whole training set in one streaming pass with memory fixed by the histogram size, runs on
whatever device the model is on, and offers better-founded estimators (see `bdprune.neurons.entropy`).
`estimator="exact"` is the official estimator itself, on the first 500 samples (one more pass over them
keeps their raw maxima).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..neurons.collect import collect_max_histograms
from ..neurons.consensus import collect_maxima, consensus_split, upper_outliers
from ..neurons.entropy import ESTIMATORS, EXACT, EXACT_BIN_WIDTH, exact_entropy, standardized_entropy
from ..neurons.mask import ChannelMask, pruned_copy
from ..neurons.sketch import StreamingHistogram
from ..neurons.threshold import RULES, select_neurons
from ..params import check_value
from . import consensus
from .base import DefenseData, DefenseReport, register_defense
from .pruning import PruningDefense, Scores, layer_reports, most_suspicious, scorable_layers

PLOT_BINS = 80  # bins of the histograms kept in the report for plotting
EXACT_SAMPLES = 500  # the official code's one batch


@register_defense
class EP(PruningDefense):
    """Entropy-based pruning.

    Args:
        u: threshold in (robust) standard deviations of the layer's entropies (per-layer rules; default:
            the rule's, the paper's 3 for "zscore").
        estimator: "histogram", "vasicek", "kde" or "exact" (the official one-batch estimator: the first
            `max_samples`, default 500, bin width 0.01; see `bdprune.neurons.entropy`).
        rule: "consensus" (default), "zscore" (the paper's mean - u * std), "mad" (median - u * 1.4826 MAD),
            "iterative" (the z-score rule repeated on the neurons left) or "count". "consensus": the `candidates`
            neurons with the lowest entropy z-scores nominate the samples that are upper outliers (beyond
            `outlier` robust standard deviations) in many of them at once; the neurons separating that group
            from the other samples (AUC above `min_auc`) are pruned, most separating first, until at most
            `max_hold` percent of the group is still predicted as its labels (see `bdprune.defenses.consensus`).
        count: with rule "count": how many neurons to prune in total.
        silence: how a pruned neuron is silenced: "bn", "bn-weight" or "conv" (see `bdprune.neurons.mask`).
        bin_width: the histogram estimator's bin width in standard deviations, honoured exactly (default:
            Scott's rule; "exact": 0.01).
        num_bins: resolution of the streaming histogram per neuron.
        max_samples: use only the first this many training samples (default: all).
        batch_size: samples per forward pass.
        plot_neurons: how many of the most suspicious neurons get histograms in the report.
        candidates: rule "consensus": how many low-entropy neurons nominate the poisoned group.
        outlier: rule "consensus": robust standard deviations above a neuron's median that make a sample an
            upper outlier of it.
        min_auc: rule "consensus": only neurons whose maxima separate the group from the rest with at least
            this AUC may be pruned (1: every group sample above every other sample).
        max_hold: rule "consensus": stop pruning once at most this percent of the group is still predicted
            as its (poisoned) labels.
        resplits: rule "consensus": when pruning every neuron that separates the group leaves more than
            `max_hold` percent of it with its labels (poisoned samples mixed with a benign cluster), split
            the group again at Otsu's threshold of its own counts and retry, at most this many times.
        progress: show a progress bar.

    Example:
        >>> repaired, report = EP().run(model, DefenseData(train=mixed_training_set))  # rule "consensus"
        >>> EP(rule="zscore", u=3)  # the paper's rule
        >>> report.num_pruned, report.pruned
    """

    name = "ep"
    needs = frozenset({"train"})
    side = "low"
    rules = RULES + ("consensus",)

    def __init__(
        self,
        u: float | None = None,
        estimator: str = "histogram",
        rule: str = "consensus",
        count: int | None = None,
        silence: str = "bn",
        bin_width: float | None = None,
        num_bins: int = 2048,
        max_samples: int | None = None,
        batch_size: int = 256,
        plot_neurons: int = 6,
        candidates: int = 32,
        outlier: float = 4.0,
        min_auc: float = 0.95,
        max_hold: float = 5.0,
        resplits: int = 2,
        progress: bool = False,
    ) -> None:
        if estimator not in (*ESTIMATORS, EXACT):
            raise InvalidInput(f"unknown estimator {estimator!r}; choose one of {(*ESTIMATORS, EXACT)}")
        super().__init__(u=u, rule=rule, count=count, silence=silence, batch_size=batch_size, progress=progress)
        self.estimator, self.bin_width, self.num_bins = estimator, bin_width, num_bins
        self.max_samples = check_value("ep: max_samples", max_samples, int | None, {"ge": 1})
        self.plot_neurons = plot_neurons
        self.candidates = check_value("ep: candidates", candidates, int, {"ge": 2})
        self.outlier = check_value("ep: outlier", outlier, float, {"gt": 0.0})
        self.min_auc = check_value("ep: min_auc", min_auc, float, {"gt": 0.5, "le": 1.0})
        self.max_hold = check_value("ep: max_hold", max_hold, float, {"ge": 0.0, "le": 100.0})
        self.resplits = check_value("ep: resplits", resplits, int, {"ge": 0})

    def entropies(self, sketches: dict[str, StreamingHistogram]) -> dict[str, torch.Tensor]:
        if self.estimator == EXACT:
            raise ValueError("the exact estimator reads raw values, not sketches (see EP.score)")
        options: dict[str, Any] = {"bin_width": self.bin_width} if self.estimator == "histogram" else {}
        return {name: standardized_entropy(s, self.estimator, **options) for name, s in sketches.items()}

    def _training_set(self, data: DefenseData) -> tuple[ImageSet, torch.Tensor | None]:
        train = data.require("train", "EP")
        groups = data.train_poisoned
        limit = self.max_samples if self.max_samples is not None or self.estimator != EXACT else EXACT_SAMPLES
        if limit is not None and limit < len(train):
            train = train.subset(torch.arange(limit))
            groups = groups[:limit] if groups is not None else None
        return train, groups

    def score(self, model: nn.Module, data: DefenseData) -> Scores:
        train, groups = self._training_set(data)
        layers, unscored = scorable_layers(model, train, require_bn=False)
        if not layers:
            raise InvalidInput("the model has no convolution whose output EP could read")
        sketches = collect_max_histograms(
            model,
            train,
            layers,
            batch_size=self.batch_size,
            num_bins=self.num_bins,
            groups=groups.long() if groups is not None else None,
            progress=self.progress,
        )
        if self.estimator == EXACT:
            values, _ = collect_maxima(
                model, train, layers, {l.name: list(range(l.channels)) for l in layers}, batch_size=self.batch_size
            )
            width = self.bin_width if self.bin_width is not None else EXACT_BIN_WIDTH
            starts = torch.tensor([0] + [l.channels for l in layers]).cumsum(0).tolist()
            scores = {l.name: exact_entropy(values[:, starts[i] : starts[i + 1]], width) for i, l in enumerate(layers)}
        else:
            scores = self.entropies(sketches)
        for name, sketch in sketches.items():
            # a neuron that produced NaN or inf on some sample is broken, not scored on the rest
            scores[name] = torch.where(sketch.nonfinite.cpu() > 0, float("nan"), scores[name].cpu())

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
        return Scores(
            layers, scores, samples=len(train), extra=extra, warnings=warnings, cache=sketches, unscored=unscored
        )

    def run(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        if self.rule != "consensus":
            return super().run(model, data)
        return self._run_consensus(model, data)

    def _run_consensus(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        """Rule "consensus" (see `bdprune.defenses.consensus`): low entropies nominate candidates, the samples
        that are upper outliers in many candidates at once form the poisoned group, and the neurons that
        separate that group best are pruned, most separating first, until the model no longer gives the
        group its (poisoned) labels. Two more passes over the training set than the per-layer rules, and a
        few predictions on samples of it."""
        start = time.perf_counter()
        scored = self.score(model, data)  # pass 1: entropies
        train, _ = self._training_set(data)
        decisions = select_neurons(scored.scores, u=self.u, side="low", rule="zscore")
        wanted = consensus.nominate(decisions, self.candidates)
        values, columns = collect_maxima(model, train, scored.layers, wanted, batch_size=self.batch_size)  # pass 2
        outliers = upper_outliers(values, self.outlier)
        split = consensus_split(outliers)
        warnings = scored.notes()
        info = {
            "candidates": [[name, c] for name, c in columns],
            "count_histogram": torch.bincount(split.counts, minlength=values.shape[1] + 1).tolist(),
            "attempts": [],
        }
        order: list[tuple[str, int]] = []
        aucs: dict[str, torch.Tensor] = {}
        for attempt in range(self.resplits + 1):
            group = split.members
            why_not = (
                "no consensus group: no set of samples stands out in the candidate neurons"
                if not 0 < int(group.sum()) < len(train)
                else consensus.looks_like_a_class(train.labels, group)
            )
            if why_not is not None:  # on a re-split: keep what the last group pruned
                if attempt == 0:
                    warnings.append(f"{why_not}; nothing pruned")
                break
            info.update(group_size=int(group.sum()), split_threshold=split.threshold, eta=split.eta)
            sketches = collect_max_histograms(
                model,
                train,
                scored.layers,
                batch_size=self.batch_size,  # pass 3
                num_bins=self.num_bins,
                groups=group.long(),
                progress=self.progress,
            )
            separating, aucs = consensus.separation_order(sketches, self.min_auc)
            inside, outside = consensus.evaluation_sets(train, group)
            k, info["trace"] = consensus.stopping_point(
                model,
                scored.layers,
                separating,
                inside,
                outside,
                max_hold=self.max_hold,
                silence=self.silence,
                batch_size=self.batch_size,
            )
            order, hold = separating[:k], info["trace"][-1]["hold"]
            removed = consensus.upper_bound(hold, len(inside)) <= self.max_hold
            info["attempts"].append(
                {
                    "split_threshold": split.threshold,
                    "group_size": int(group.sum()),
                    "separating": len(separating),
                    "pruned": k,
                    "hold": hold,
                    "removed": removed,
                }
            )
            if removed:
                break
            # Pruning every neuron that separates the group leaves its own (poisoned) labels on it: it is
            # probably poisoned samples mixed with a benign cluster that some candidates share. The poisoned
            # samples are outliers of more candidates: split the group again and retry on its upper part.
            split = consensus_split(outliers, above=int(split.threshold))
        attempts = info["attempts"]
        if attempts and not attempts[-1]["removed"]:
            warnings.append(
                f"{len(attempts)} group(s) tried: the last one's {attempts[-1]['separating']} separating "
                f"neurons (AUC > {self.min_auc:g}) leave {attempts[-1]['hold']:.1f}% of it with its labels; "
                f"all are pruned"
            )
        selected: dict[str, list[int]] = {l.name: [] for l in scored.layers}
        for name, c in order:
            selected[name].append(c)
        repaired = pruned_copy(
            model,
            {l.name: l for l in scored.layers},
            ChannelMask({n: sorted(chs) for n, chs in selected.items() if chs}),
            self.silence,
        )
        for l in scored.layers:
            decisions[l.name].selected, decisions[l.name].threshold = sorted(selected[l.name]), None
            scored.extra.setdefault(l.name, {})["auc"] = aucs[l.name].tolist() if l.name in aucs else None
        report = DefenseReport(
            method=self.name,
            config=self.params(),
            samples=scored.samples,
            seconds=time.perf_counter() - start,
            layers=layer_reports(scored.layers, scored.scores, decisions, scored.extra),
            warnings=warnings,
            unscored=scored.unscored,
        )
        report.extra["consensus"] = info
        self.annotate(report, scored)
        return repaired, report

    def annotate(self, report: DefenseReport, scores: Scores) -> None:
        """Coarse per-group histograms of the most suspicious neurons (for the Figure 2 style plot)."""
        out = []
        for name, channel, z in most_suspicious(report, self.plot_neurons, "low"):
            sketch = scores.cache[name]
            edges, counts = sketch.coarse(channel, PLOT_BINS)
            out.append(
                {
                    "layer": name,
                    "channel": channel,
                    "z": z,
                    "edges": edges,
                    "counts": counts,
                    "groups": ["benign", "poisoned"] if sketch.groups == 2 else ["all"],
                }
            )
        report.extra["histograms"] = out
