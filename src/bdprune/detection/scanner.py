"""`scan`: is this model backdoored? A verdict from the paper's statistics, without the trigger.

Method "bnp" (default): BNP's per-neuron KL divergences between the clean samples' pre-activation Gaussians
and the BN running statistics (section 4.3, `bdprune.defenses.BNP.score`), standardised per layer with the
median and MAD (`bdprune.detection.statistic`), summarised into one score; above the threshold, the model is
called backdoored. With the training set, EP's evidence is added (section 3.4: the entropies of the
neurons' per-sample maxima, `bdprune.defenses.EP.score`, and the group of samples that many low-entropy
neurons single out at once, `bdprune.neurons.groups`); the suspected samples are those the repair unlearns
(`bdprune.samples`: per-label clusters of the penultimate features).

Method "nc": Neural Cleanse's anomaly index (the baseline, `bdprune.defenses.trigger_reversal`), threshold 2.

The default statistic and threshold were chosen on the calibration half of `bdprune reproduce detection`
(docs/results/detection-cpu.md), never on its evaluation half.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..defenses import trigger_reversal as neural_cleanse
from ..defenses.bnp import bnp_scores
from ..defenses.ep import ep_scores
from ..defenses.recover import pruned_channels
from ..defenses.rules.consensus import looks_like_a_class, nominate
from ..errors import InvalidInput
from ..neurons.groups import collect_maxima, consensus_split, upper_outliers
from ..neurons.threshold import select_neurons
from .record import ScanResult, verdict_of
from .statistic import STATISTICS, LayerValues, layer_values, robust_z, scaled, summarize, top_neurons

METHODS = ("bnp", "nc")
# Chosen on the calibration half of `bdprune reproduce detection --preset cpu` (15 clean, 7 backdoored models;
# highest ROC-AUC of the 18 candidates, 0.886), the threshold midway between the highest clean score (7.85) and
# the lowest backdoored score above it (8.66); docs/results/detection-cpu.md. Calibrated for 500 clean samples.
DEFAULT_STATISTIC = "lvr_model_top10"
DEFAULT_THRESHOLD = 8.26
THRESHOLD_SOURCE = "calibration half of `bdprune reproduce detection --preset cpu` (docs/results/detection-cpu.md)"
CANDIDATES = 32  # EP's consensus rule: low-entropy neurons that nominate the suspected samples
OUTLIER = 4.0  # EP's consensus rule: robust standard deviations that make a sample an outlier of a neuron


def live_neurons(model: nn.Module, scores: Any) -> dict[str, torch.Tensor]:
    """Per scored layer, the neurons whose output can vary: a BN weight of 0 (a pruned neuron) or a clean
    input that never varies (a silenced conv) leave a constant, which cannot carry a trigger."""
    modules = dict(model.named_modules())
    live = {}
    for layer in scores.layers:
        bn = modules[layer.bn]
        var = torch.tensor(scores.extra[layer.name]["clean_var"], dtype=torch.float64) - bn.eps
        ok = var > 1e-12
        if bn.weight is not None:
            ok &= bn.weight.detach().cpu() != 0
        live[layer.name] = ok
    return live


def stale_statistics_warning(silenced: int) -> str:
    """What a scan of a pruned model should say: its score is partly the pruning's."""
    return (
        f"{silenced} {'neuron' if silenced == 1 else 'neurons'} of this model {'is' if silenced == 1 else 'are'} "
        "silenced (BN weight and bias 0: a pruned model); the layers after "
        "them no longer see the inputs their BN running statistics, the scan's reference, describe, so the "
        "score rises with the pruning alone (BNP's pruning of a clean model took it from 5.85 to 9.70, "
        "'backdoored'): a verdict on a pruned model is weak evidence; read the trigger witness"
    )


def bnp_statistics(
    model: nn.Module, clean: ImageSet, batch_size: int = 256
) -> tuple[dict[str, LayerValues], dict[str, float], list[str], dict[str, str]]:
    """Per layer, the neurons' quantities (`bdprune.detection.statistic`); every candidate statistic;
    warnings; BN layers not scored."""
    scored = bnp_scores(model, clean, batch_size=batch_size)
    live = live_neurons(model, scored)
    layers = {
        name: layer_values(
            kl,
            torch.tensor(scored.extra[name]["clean_var"], dtype=torch.float64),
            torch.tensor(scored.extra[name]["running_var"], dtype=torch.float64),
            live[name],
        )
        for name, kl in scored.scores.items()
    }
    return layers, summarize(layers), scored.warnings, scored.unscored


def ep_evidence(model: nn.Module, train: ImageSet, batch_size: int = 256) -> tuple[dict[str, Any], list[int]]:
    """EP's entropies (robust z, low side) and the consensus group of the training set: its size, how cleanly
    it splits (eta), how much of it carries one label, and whether it is just a class; and its samples."""
    scored = ep_scores(model, train, batch_size=batch_size)
    low = torch.cat([-robust_z(s) for s in scored.scores.values()])  # low entropy = suspicious
    low = low[torch.isfinite(low)].sort(descending=True).values
    decisions = select_neurons(scored.scores, u=3.0, side="low", rule="zscore")
    wanted = nominate(decisions, CANDIDATES)
    values, _ = collect_maxima(model, train, scored.layers, wanted, batch_size=batch_size)
    split = consensus_split(upper_outliers(values, OUTLIER))
    group = split.members
    size = int(group.sum())
    labels = train.labels[group]
    dominant = int(torch.bincount(labels).argmax()) if size else None
    purity = float((labels == dominant).float().mean()) if size else 0.0
    is_class = looks_like_a_class(train.labels, group) if 0 < size < len(train) else "no group"
    evidence = {
        "entropy_max_z": float(low[0]) if len(low) else math.nan,
        "entropy_top3_z": float(low[:3].mean()) if len(low) else math.nan,
        "group_size": size,
        "group_share": size / max(len(train), 1),
        "group_label": dominant,
        "group_purity": purity,
        "eta": split.eta,
        "not_a_group": is_class,
        "train_samples": len(train),
    }
    suspected = train.indices[group].tolist() if is_class is None else []
    return evidence, suspected


def scan(
    model: nn.Module,
    clean: ImageSet | None,
    *,
    train: ImageSet | None = None,
    method: str = "bnp",
    statistic: str = DEFAULT_STATISTIC,
    threshold: float | None = None,
    top: int = 10,
    batch_size: int = 256,
    nc_options: dict[str, Any] | None = None,
) -> ScanResult:
    """Scan `model` with the defender's clean samples (and the training set when given).

    Args:
        model: the suspicious model (not modified).
        clean: clean samples (the paper's 500); required.
        train: the possibly poisoned training set: adds EP's evidence and the suspected samples.
        method: "bnp" (default) or "nc" (Neural Cleanse, the baseline).
        statistic: with "bnp": one of `bdprune.detection.statistic.STATISTICS` ("q_norm_agg"; default
            `DEFAULT_STATISTIC`).
        threshold: the score above which the model is called backdoored (default: the calibrated one; 2
            for "nc", the paper's).
        top: how many suspect neurons to list.
        nc_options: options of `bdprune.defenses.trigger_reversal.reverse_trigger` (steps, batch_size, lr, ...)
            and seed.

    Returns:
        A `ScanResult`; `result.verdict` is "backdoored" or "no evidence".
    """
    start = time.perf_counter()
    if method not in METHODS:
        raise InvalidInput(f"unknown scan method {method!r}; choose one of {', '.join(METHODS)}")
    if clean is None or len(clean) == 0:
        raise InvalidInput("a scan needs clean samples (the defender's, e.g. 500; --clean-samples)")
    if method == "bnp" and not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None for m in model.modules()
    ):
        raise InvalidInput(
            "the scan compares BatchNorm running statistics with clean samples, and this model has no BatchNorm "
            "layer that keeps them; --method nc (Neural Cleanse) needs none"
        )
    training = model.training
    model.eval()  # BN in training mode would move the running statistics under test
    try:
        result = _scan(model, clean, train, method, statistic, threshold, top, batch_size, nc_options)
    finally:
        model.train(training)
    result.seconds = time.perf_counter() - start
    return result


def _scan(
    model: nn.Module,
    clean: ImageSet,
    train: ImageSet | None,
    method: str,
    statistic: str,
    threshold: float | None,
    top: int,
    batch_size: int,
    nc_options: dict[str, Any] | None,
) -> ScanResult:
    if method == "nc":
        result = _scan_nc(model, clean, threshold, nc_options or {})
    else:
        if statistic not in STATISTICS:
            raise InvalidInput(f"unknown statistic {statistic!r}; choose one of {', '.join(STATISTICS)}")
        layers, stats, warnings, unscored = bnp_statistics(model, clean, batch_size)
        q, norm, _ = statistic.split("_")
        suspects = top_neurons(scaled(layers, q, norm), top)
        limit = DEFAULT_THRESHOLD if threshold is None else threshold
        warnings = list(warnings) + [f"{name}: not scored ({why})" for name, why in unscored.items()]
        silenced = sum(len(c) for c in pruned_channels(model).values())
        if silenced:
            warnings.append(stale_statistics_warning(silenced))
        score = stats[statistic]
        result = ScanResult(
            verdict=verdict_of(score, limit),
            score=score,
            threshold=limit,
            method="bnp",
            statistic=statistic,
            statistics=stats,
            suspects=[{"layer": n, "channel": c, "z": z} for n, c, z in suspects],
            samples=len(clean),
            threshold_source=THRESHOLD_SOURCE if threshold is None else "given",
            warnings=warnings,
        )
    if train is not None:  # EP's evidence; the suspected samples are the repair's (`bdprune.samples`)
        from ..samples import detect_poisoned

        result.evidence, consensus = ep_evidence(model, train, batch_size)
        found = detect_poisoned(model, train, batch_size=batch_size)
        result.evidence.update(consensus_group=len(consensus), detector=found.summary())
        result.suspected_samples = train.indices[found.indices].tolist()
    return result


def _scan_nc(model: nn.Module, clean: ImageSet, threshold: float | None, options: dict[str, Any]) -> ScanResult:
    triggers = neural_cleanse.reverse_all(model, clean, **options)
    norms = [t.norm for t in triggers]
    index = neural_cleanse.anomaly_indices(norms)
    score = max((i for i in index if not math.isnan(i)), default=math.nan)
    limit = neural_cleanse.FLAG_INDEX if threshold is None else threshold
    order = sorted(range(len(triggers)), key=lambda y: norms[y])
    return ScanResult(
        verdict=verdict_of(score, limit),
        score=score,
        threshold=limit,
        method="nc",
        statistic="anomaly_index",
        statistics={
            "anomaly_index": score,
            "min_norm": min(norms),
            "median_norm": float(torch.tensor(norms).quantile(0.5)),
        },
        suspects=[
            {"target": y, "norm": norms[y], "anomaly_index": index[y], "success": triggers[y].success} for y in order
        ],
        samples=len(clean),
        threshold_source="Neural Cleanse's (Wang et al. 2019)" if threshold is None else "given",
    )
