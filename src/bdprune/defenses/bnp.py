"""BNP: BN-statistics pruning (sections 4.3 and 4.4 of the paper), given the model and a few clean samples.

A BN layer's running mean and variance were estimated on the poisoned training data, a mixture of benign
and poisoned pre-activations. For a benign neuron the two populations agree and the running statistics
match those of clean data; for a backdoor neuron they do not (Corollary 2). Per channel, BNP measures

    KL( N(mu, sigma^2) || N(mu_bn, sigma_bn^2) ) = log(sigma_bn / sigma) + (sigma^2 + (mu - mu_bn)^2) / (2 sigma_bn^2) - 1/2

with mu, sigma^2 the mean and variance of the channel's BN input over the clean samples and all spatial
positions. The paper prunes neurons above mean + u * std of their layer (u = 3 on CIFAR-10; rule "zscore").
The default here is rule "guarded": on the small models of the CPU preset the backdoor is spread over dozens
of neurons, which inflate a layer's standard deviation so much that the paper's rule stops short (BadNets ASR
19 to 80 on held-out seeds); a robust scale (median + 6 * 1.4826 MAD) reaches them, and a guard on the
defender's clean samples keeps the neurons the task needs (`bdprune.defenses.guard`). The numbers behind the
choice are in the README's "Does it remove the backdoor?".

Unlike BackdoorBench's BNP, the clean statistics come only from the clean samples (never from a second
pass over the poisoned training set), the first term is the log of the standard-deviation ratio, and any
number of clean batches is accumulated in float64. Both variances include the BN's eps, as the network's
own normalisation does; this keeps dead channels (zero variance) finite.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..data.batches import iterate_batches
from ..data.imageset import ImageSet
from ..errors import InvalidInput
from ..models import model_device
from ..neurons.collect import collect_moments
from ..neurons.gaussian import kl_gaussian
from ..neurons.layers import reading_preactivations
from ..neurons.mask import ChannelMask, pruned_copy
from ..neurons.sketch import StreamingHistogram
from ..neurons.threshold import RULES, select_neurons
from ..params import check_value
from .base import DefenseData, DefenseReport, register_defense
from .guard import veto, within_budget
from .pruning import PruningDefense, Scores, layer_reports, most_suspicious, neuron_layers, scorable_layers

MIN_SAMPLES = 2
FEW_SAMPLES = 10  # the paper's smallest ablation (section 5.3)


@register_defense
class BNP(PruningDefense):
    """BN-statistics pruning.

    Args:
        u: threshold in (robust) standard deviations of the layer's KL divergences (default: the rule's,
            the paper's 3 for "zscore", 6 for "mad" and "guarded").
        rule: "guarded" (default): the MAD rule's neurons are the suspects; a suspect whose pruning alone
            changes the prediction of more than `max_change` percent of the clean samples is left in place,
            and the rest are pruned from the most outlying until the next would cost more than `max_drop`
            points of clean accuracy (`bdprune.defenses.guard`). "zscore": the paper's mean + u * std. "mad":
            median + u * 1.4826 MAD, unguarded (on some held-out models it cost 4 to 22 ACC points).
            "iterative": the z-score rule repeated on the neurons left. "count": the `count` most extreme.
        count: with rule "count": how many neurons to prune in total.
        silence: how a pruned neuron is silenced: "bn", "bn-weight" or "conv" (see `bdprune.neurons.mask`).
        batch_size: samples per forward pass.
        plot_neurons: how many of the most suspicious neurons get their Gaussians in the report.
        max_change: rule "guarded": the percent of the clean samples whose prediction one pruned neuron may change.
        max_drop: rule "guarded": the clean samples' accuracy, in points, that the pruned neurons together may cost.
        progress: show a progress bar.

    Example:
        >>> repaired, report = BNP().run(model, DefenseData(clean=clean_500))  # rule "guarded"
        >>> BNP(rule="zscore", u=3)  # the paper's rule
    """

    name = "bnp"
    needs = frozenset({"clean"})
    side = "high"
    rules = RULES + ("guarded",)

    def __init__(
        self,
        u: float | None = None,
        rule: str = "guarded",
        count: int | None = None,
        silence: str = "bn",
        batch_size: int = 256,
        plot_neurons: int = 6,
        max_change: float = 1.0,
        max_drop: float = 2.0,
        progress: bool = False,
    ) -> None:
        super().__init__(u=u, rule=rule, count=count, silence=silence, batch_size=batch_size, progress=progress)
        self.plot_neurons = plot_neurons
        self.max_change = check_value("bnp: max_change", max_change, float, {"ge": 0.0, "le": 100.0})
        self.max_drop = check_value("bnp: max_drop", max_drop, float, {"ge": 0.0, "le": 100.0})

    def run(self, model: nn.Module, data: DefenseData) -> tuple[nn.Module, DefenseReport]:
        if self.rule != "guarded":
            return super().run(model, data)
        start = time.perf_counter()
        scored = self.score(model, data)
        decisions = select_neurons(scored.scores, u=self.u, side="high", rule="mad")
        suspects = [
            (name, c)
            for _, name, c in sorted(((-float(d.z[c]), name, c) for name, d in decisions.items() for c in d.selected))
        ]
        vetted, trace = veto(
            model,
            scored.layers,
            suspects,
            data.clean,
            max_change=self.max_change,
            silence=self.silence,
            batch_size=self.batch_size,
        )
        k, accuracy = within_budget(
            model,
            scored.layers,
            vetted,
            data.clean,
            max_drop=self.max_drop,
            silence=self.silence,
            batch_size=self.batch_size,
        )
        kept = vetted[:k]
        passed = [t for t in trace if t["pruned"]]  # the vetted suspects' entries, in order
        for i, entry in enumerate(passed):
            if i < len(accuracy):
                entry["clean_accuracy"] = accuracy[i]  # with this neuron and the vetted ones before it pruned
            entry["pruned"] = i < k
        for name, d in decisions.items():
            d.selected = sorted(c for n, c in kept if n == name)
        repaired = pruned_copy(
            model,
            {l.name: l for l in scored.layers},
            ChannelMask({name: d.selected for name, d in decisions.items()}),
            self.silence,
        )
        warnings = scored.notes(decisions, self.silence)
        if len(vetted) < len(suspects):
            spared = [
                f"{t['layer']}:{t['channel']} ({t['changed']:.1f}%)" for t in trace if t["changed"] > self.max_change
            ]
            warnings.append(
                f"guard: {len(spared)} of {len(suspects)} suspects left in place, each changing more than "
                f"{self.max_change:g}% of the clean predictions when pruned alone: {', '.join(spared[:10])}"
            )
        if k < len(vetted):
            warnings.append(
                f"guard: pruning stopped after {k} of {len(vetted)} vetted suspects: the next would take "
                f"the clean accuracy more than {self.max_drop:g} points below the model's"
            )
        report = DefenseReport(
            method=self.name,
            config=self.params(),
            samples=scored.samples,
            seconds=time.perf_counter() - start,
            layers=layer_reports(scored.layers, scored.scores, decisions, scored.extra),
            warnings=warnings,
            unscored=scored.unscored,
        )
        report.extra["guard"] = {
            "max_change": self.max_change,
            "max_drop": self.max_drop,
            "suspects": len(suspects),
            "vetted": len(vetted),
            "pruned": len(kept),
            "trace": trace,
        }
        self.annotate(report, scored)
        return repaired, report

    def score(self, model: nn.Module, data: DefenseData) -> Scores:
        clean = data.require("clean", "BNP")
        if len(clean) < MIN_SAMPLES:
            raise InvalidInput(
                f"BNP needs at least {MIN_SAMPLES} clean samples to estimate a variance; got "
                f"{len(clean)} (the paper uses 500; 10 already work for most attacks)"
            )
        layers, unscored = scorable_layers(model, clean, require_bn=True)
        modules = dict(model.named_modules())
        for layer in [l for l in layers if modules[l.bn].running_var is None]:
            unscored[layer.name] = "keeps no running statistics (track_running_stats=False): BNP has nothing to compare"
            layers.remove(layer)
        if not layers:
            raise InvalidInput(
                "BNP needs BatchNorm layers with running statistics (it compares them with clean-sample "
                "statistics), and this model has none. Use EP with the training set (bdprune defend --method ep) "
                "instead."
            )
        moments = collect_moments(model, clean, layers, batch_size=self.batch_size, progress=self.progress)
        scores, extra, warnings = {}, {}, []
        for layer in layers:
            bn, stats = modules[layer.bn], moments[layer.name]
            mean_bn = bn.running_mean.detach().double().to(stats.mean.device)
            var_bn = bn.running_var.detach().double().to(stats.mean.device) + bn.eps
            var = stats.variance(correction=1) + bn.eps
            broken = stats.nonfinite > 0  # a neuron with NaN/inf pre-activations is broken, not scored on the rest
            kl = kl_gaussian(stats.mean, var, mean_bn, var_bn)
            scores[layer.name] = torch.where(broken, float("nan"), kl).cpu()
            nonfinite = int(stats.nonfinite.sum())
            bad_bn = int((~(var_bn > 0) | ~mean_bn.isfinite()).sum())
            extra[layer.name] = {
                "nonfinite_values": nonfinite,
                "nonfinite_neurons": broken.nonzero().flatten().tolist(),
                "invalid_running_stats": bad_bn,
                "clean_mean": stats.mean.tolist(),
                "clean_var": var.tolist(),
                "running_mean": mean_bn.tolist(),
                "running_var": var_bn.tolist(),
            }
            if nonfinite:
                warnings.append(
                    f"{layer.name}: {int(broken.sum())} neuron(s) gave NaN/inf pre-activations "
                    f"({nonfinite} values); not scored, not pruned: {extra[layer.name]['nonfinite_neurons'][:10]}"
                )
            if bad_bn:
                warnings.append(f"{layer.name}: {bad_bn} channel(s) with invalid running statistics (not scored)")
        if len(clean) < FEW_SAMPLES:
            warnings.append(
                f"only {len(clean)} clean samples: the statistics are noisy (the paper's ablation "
                f"starts at {FEW_SAMPLES})"
            )
        return Scores(layers, scores, samples=len(clean), extra=extra, warnings=warnings, unscored=unscored)

    def annotate(self, report: DefenseReport, scores: Scores) -> None:
        report.extra["gaussians"] = [
            {
                "layer": name,
                "channel": c,
                "z": z,
                **{k: scores.extra[name][k][c] for k in ("clean_mean", "clean_var", "running_mean", "running_var")},
            }
            for name, c, z in most_suspicious(report, self.plot_neurons, "high")
        ]

    def add_diagnostics(self, model: nn.Module, data: DefenseData, report: DefenseReport) -> None:
        if data.clean is not None:
            self.add_value_histograms(model, data.clean, report)

    def add_value_histograms(self, model: nn.Module, clean: ImageSet, report: DefenseReport, bins: int = 60) -> None:
        """Diagnostics for plots: histograms of the clean pre-activations (all positions) of the neurons
        listed in `report.extra["gaussians"]`, from one more pass over `clean`. Not part of the defense."""
        entries = report.extra.get("gaussians", [])
        wanted: dict[str, list[int]] = {}
        for e in entries:
            wanted.setdefault(e["layer"], []).append(e["channel"])
        layers = [l for l in neuron_layers(model, clean, require_bn=True) if l.name in wanted]
        device = model_device(model)
        sketches = {name: StreamingHistogram(len(chs), 1024, 1, device) for name, chs in wanted.items()}

        def on_preactivation(name: str, x: torch.Tensor) -> None:
            picked = x[:, wanted[name]]  # (B, k, H, W)
            sketches[name].update(picked.transpose(0, 1).reshape(len(wanted[name]), -1).T)  # (B * H * W, k)

        with reading_preactivations(model, layers, on_preactivation), torch.inference_mode():
            for images, _, _ in iterate_batches(clean, self.batch_size, device=device):
                model(images)
        for e in entries:
            k = wanted[e["layer"]].index(e["channel"])
            edges, counts = sketches[e["layer"]].coarse(k, bins)
            total = sum(counts[0]) or 1.0
            width = (edges[1] - edges[0]) if len(edges) > 1 else 1.0
            e["values"] = {"edges": edges, "counts": [c / (total * width) for c in counts[0]]}  # a density
