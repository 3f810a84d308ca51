"""Which training samples are poisoned: per-label clustering of the penultimate features (issue 23).

EP's premise (section 3.4) is that a backdoor neuron sees a two-component mixture, benign samples and the
poisoned ones. At the penultimate layer the same holds per label: the samples that carry the target label
because of a trigger form a component of their own inside that label, apart from the samples that carry it
because of their content. So, per label c:

1. the penultimate features of the samples labelled c, square-rooted (they are averages of ReLU outputs;
   the root evens out their scale), reduced to their top principal components; 2-means splits them in two;
2. each side's isolation: the distance from its centre to the nearest other group, the other side of its
   label or the centre of another label, over the median distance between label centres. A benign
   subgroup of a label (long sleeves among shirts) lies next to the rest of its label or next to a similar
   label; the trigger's samples form a group as far from the rest of their label as labels are from each
   other, and far from every other label too (they are samples of every class, pulled together by one
   feature);
3. the suspected side is the more isolated one; the verdict: the label holds a poisoned component when its
   isolation is at least `isolation_min` (chosen on development seeds, see docs/results/repair-dev.md), or
   when the label carries a surplus that a relabelled-looking side accounts for (below). In a label with a
   surplus, an isolated side whose runner-up logits spread over fewer classes than the other side's, by
   `spread_margin` or more, is the label's own samples: isolation is overruled there and the surplus evidence
   decides (added after a held-out SSBA model whose backdoor had not taken: isolation named label 0's own
   6,016 samples, spread 0.17 against the other side's 1.00, and the repair erased label 0; in every
   isolation verdict on a surplus label recorded before, the named side spread more, by 0.2 to 0.8);
   In a label without a surplus (below `surplus_ratio` times the median count: all-to-all, or a low poisoning
   rate) the poisoned samples can only be the lesser part of the label: there the smaller side is named
   whenever it is isolated enough (`minority`), though the other side be more isolated. An all-to-all
   trigger's samples of one label all come from one class and lie next to it, while the label's own samples
   lie far from every other group (development model of seed 0: label 5's own side 0.83, its poisoned side
   0.81; the detector named 5,133 of its 5,665 samples, all of the 543 poisoned ones left out). Where
   2-means finds no side isolated enough in such a label, its `finer`-means clusters (3) are tried, and the
   most isolated one holding less than half the label is named when it is isolated enough and looks
   relabelled (its runner-up logits spread over the classes more than the rest of its label's, by
   `spread_margin`, as the surplus rule below asks): a poisoned group of a tenth of its label (1 % all-to-one
   poisoning) does not carry enough variance to be 2-means' split, which follows the label's own kinds
   (development model of seed 0, BadNets at 1 %: 2-means' sides 0.38; 3-means' cluster of 451 samples, 449
   of them poisoned, isolation 0.69, spread 0.96 against the rest's 0.18). Isolation alone is not enough
   there: a cluster of trousers reached 0.62 in the clean development model of seed 31 (0.60 and 0.61 in
   clean seeds 18 and 20), with spreads equal to the rest's (differences -0.01 to 0.01);
4. the suspected samples of a flagged label: 2-means' side, and, in a label with a surplus, the samples of
   the other side beyond its upper tail (its median + `tail` robust standard deviations) along Fisher's
   discriminant between the two sides in the label's principal components (`tail_axis`): a trigger the model
   learned unevenly (WaNet, Refool) leaves a tail of poisoned samples reaching towards the benign ones. Read
   along the line between the two centres instead (`tail_axis="centres"`, the detector until this option), the
   label's own variation along that line hid them: on the development model of Refool seed 0 (2-means' side
   5,177 samples) the centres' tail added none, the discriminant's 479 (recall 90.6 -> 97.8 %, precision
   99.8 -> 98.6 %); on the other development models of seed 0 with a surplus recall stays at 96.5 to 100 %
   and precision falls to 93.5 to 97.5 % (BadNets 99.9 -> 97.3, Blended 99.9 -> 96.5, WaNet 96.6 -> 96.1, IAB
   93.8 -> 93.5, ML-MMD 99.5 -> 97.5; docs/results/repair-cpu.md). Without a surplus the tail is left out
   (`tail_without_surplus`): on the all-to-all development model it added 56 % more samples, nearly all of
   them clean (the sides alone: 5,709 named, precision 99.8 %, recall 100 %, where the tail and the more
   isolated side gave 13,116 at 39.4 / 90.7; the development models of seed 0 with a surplus, BadNets,
   Blended, WaNet, Refool, IAB, ML-MMD, and the clean one are unchanged).

The surplus: a dirty-label attack that relabels samples of other classes to one target leaves that label holding
far more samples than the typical label (10 % all-to-one poisoning of 10 balanced classes: 2.25 times the median
count). A label holding at least `surplus_ratio` times the median label count is flagged even when neither side is
as isolated as `isolation_min`, if one side looks relabelled: its runner-up logits spread over the classes more
than the other side's by at least `spread_margin` (relabelled samples keep a trace of the many classes they came
from; a label's own samples hesitate between a few neighbours), and it holds between half and 1.5 times the label's
surplus over the median count (the relabelled samples should be about that many). That side is then the suspected
one. This catches whole-image triggers whose samples stay near their label's other samples (Blended, Refool, SSBA
on the cpu preset: isolation 0.49-0.56) but still relabel. `surplus_ratio` 1.5 and `spread_margin` 0.33 were set on
the development seed-0 models (the poisoned labels' side spreads exceed the other side's by 0.37-0.71, clean
labels' sides differ by up to 0.30; the poisoned label holds 2.25 times the median count, clean labels at most
1.002). On a balanced training set this evidence never fires; a naturally large class whose 2-means side happens
to match its surplus would be flagged wrongly, and the repair's held-out guard is what stands behind that.
Clean-label and all-to-all attacks leave no surplus. `record["evidence"]` says which evidence flagged a label
("isolation" or "surplus"; `record["superimposed"]` holds the shares where superimposition was read).

When the spread leans towards the side of the right size but by less than `spread_margin`, a second signal
decides (with a model at hand: `detect_poisoned`): superimposition (STRIP's, Gao et al. 2019, read per side).
Each side's samples (400 at most) are averaged half and half with random samples of other labels; a trigger
carries the label into the mixture, a label's own content is diluted by the other image. The side the spread
leans to is named when its mixtures lose the label at most half as often as the other side's (`carry_ratio` 2:
the other side's share of mixtures that lose the label is at least twice its own). Set on the development
seed-0 models and the clean labels of seen models: on 56 clean labels' 2-means splits of six models (no attack
seeds 0 and 5, Blended, BadNets and Sinusoid seed 0, SSBA seed 2; none with a surplus, so none is ever
examined) the ratio for the side the spread leans to was at most 1.54; on the relabelled side of the poisoned
label of the development models 13.2 (Blended), 37 (BadNets), 3.5 (Sinusoid) (WaNet's warp does not survive
the mixing, 0.8; its spread decides alone). A difference of shares was tried first and dropped before any
fresh model was read: clean labels reached +22.8 points, poisoned ones +26.2. Added after the misses of Blended
seeds 1, 2 and 5 and Refool seeds 1, 2, 4 and 5 (spread leaning by 0.08 to 0.31); on those, seen, the ratio was
2.7 (Blended seed 1) and 12 to over 50 on the others.

Scores: each sample's position along the line between the two centres of its label, standardised, towards
the suspected side (every sample is scored, flagged label or not). The runner-up entropy of each side (how
spread the highest logits besides the carried label are: samples relabelled from many classes keep a trace
of their true class) is reported as a diagnostic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from ..data.imageset import ImageSet
from ..metrics import predict_logits
from .clustering import discriminant, k_means, principal_components, two_means
from .features import SampleFeatures, sample_features
from .result import SuspectedSamples

SUPERIMPOSED_SAMPLES = 400  # samples of each side superimposed (`superimposed_share`)
AXES = ("centres", "discriminant")  # the line a label's tail is read along (`detect_in_features`)


def runner_up_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Entropy (nats) of the distribution of the highest logit other than the carried label."""
    masked = logits.clone()
    masked[torch.arange(len(labels)), labels] = -float("inf")
    counts = torch.bincount(masked.argmax(1), minlength=logits.shape[1]).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def superimposed_share(
    model: nn.Module,
    train: ImageSet,
    positions: torch.Tensor,
    *,
    samples: int = SUPERIMPOSED_SAMPLES,
    batch_size: int = 512,
    seed: int = 0,
) -> float:
    """The percentage of (up to `samples` random ones of) the samples at `positions`, all of one label, that
    `model` still gives that label when each is averaged half and half with a random sample of another label
    (STRIP's superimposition, Gao et al. 2019, read per group instead of per input)."""
    if len(positions) == 0:
        return float("nan")
    generator = torch.Generator().manual_seed(seed)
    positions = positions[torch.randperm(len(positions), generator=generator)[:samples]]
    label = int(train.labels[positions[0]])
    others = (train.labels != label).nonzero().flatten()
    if len(others) == 0:
        return float("nan")
    partners = others[torch.randint(len(others), (len(positions),), generator=generator)]
    group = train.subset(positions)
    mixed = 0.5 * group.float_images() + 0.5 * train.subset(partners).float_images()
    predicted = predict_logits(model, group.with_samples(mixed, group.labels), batch_size=batch_size).argmax(1)
    return 100 * float((predicted == label).double().mean())


def isolation_of(x: torch.Tensor, member: torch.Tensor, others: list[torch.Tensor], scale: float) -> float:
    """How far the group `member` of one label's rows `x` lies from everything else: the distance from its
    centre to the nearest of the rest of the label's centre and `others` (the other labels' centres), over
    `scale`."""
    centre = x[member].mean(0)
    nearest = min([float((centre - x[~member].mean(0)).norm())] + [float((centre - o).norm()) for o in others])
    return nearest / scale


def isolated_minority(
    x: torch.Tensor, projected: torch.Tensor, others: list[torch.Tensor], scale: float, clusters: int, seed: int
) -> tuple[torch.Tensor, float] | None:
    """(mask, isolation) of the most isolated of `clusters`-means' clusters of one label (on `projected`, the
    rows of `x` in its principal components) that hold less than half the label, or None (`isolation_of`,
    as for 2-means' sides)."""
    assign = k_means(projected, clusters, seed=seed)
    best = None
    for j in range(clusters):
        member = assign == j
        if not member.any() or 2 * int(member.sum()) >= len(member):
            continue
        isolation = isolation_of(x, member, others, scale)
        if best is None or isolation > best[1]:
            best = (member, isolation)
    return best


def detect_in_features(
    features: SampleFeatures,
    *,
    dims: int = 10,
    isolation_min: float = 0.58,
    tail: float = 2.0,
    surplus_ratio: float | None = 1.5,
    spread_margin: float = 0.33,
    min_samples: int = 20,
    seed: int = 0,
    carried: Callable[[torch.Tensor], float] | None = None,
    carry_ratio: float = 2.0,
    minority: bool = True,
    tail_without_surplus: bool = False,
    finer: int = 3,
    tail_axis: str = "discriminant",
) -> SuspectedSamples:
    """`detect_poisoned` on precomputed features (see the module's docstring). `carried`: positions -> the
    percentage of those samples whose label survives superimposition on samples of other labels
    (`superimposed_share`; None: the surplus evidence rests on the runner-up spread alone). `minority` False and
    `tail_without_surplus` True: the detector as it was before 2026-12-07 in labels without a surplus. `finer`: the
    number of k-means clusters tried in a label without a surplus that 2-means leaves unflagged (below 3: none).
    `tail_axis`: the line a flagged label's tail is read along ("discriminant" or "centres", see the module's
    docstring); every sample's score stays its position on the line between the centres."""
    if tail_axis not in AXES:
        raise ValueError(f"tail_axis {tail_axis!r}: choose one of {', '.join(AXES)}")
    start = time.perf_counter()
    x_all = features.features.double().clamp_min(0).sqrt()
    finite = torch.isfinite(x_all).all(1) & torch.isfinite(features.logits).all(1)
    labels = torch.where(finite, features.labels, -1)  # a sample whose features are not finite is not scored
    present = [c for c in labels.unique().tolist() if c >= 0 and int((labels == c).sum()) >= min_samples]
    centres = {c: x_all[labels == c].mean(0) for c in present}
    between = torch.pdist(torch.stack(list(centres.values()))) if len(centres) > 1 else torch.ones(1)
    scale = float(between.median()) if len(between) else 1.0
    counts = torch.tensor([int((labels == c).sum()) for c in present], dtype=torch.float64)
    typical = float(counts.median()) if len(counts) else 0.0
    scores = torch.full((len(labels),), float("nan"))
    chosen, classes = [], []
    for c in [c for c in labels.unique().tolist() if c >= 0]:
        where = (labels == c).nonzero().flatten()
        record = {"class": c, "samples": len(where), "poisoned": False}
        if c not in centres:
            classes.append({**record, "note": f"fewer than {min_samples} samples"})
            continue
        x = x_all[where]
        directions, _ = principal_components(x, dims)
        projected = (x - x.mean(0)) @ directions.T
        second = two_means(projected, seed=seed)
        if second.all() or not second.any():
            classes.append({**record, "note": "one cluster"})
            continue
        others = [centres[k] for k in centres if k != c]
        isolation, spread = [], []
        for side in (second, ~second):
            isolation.append(isolation_of(x, side, others, scale))
            spread.append(runner_up_entropy(features.logits[where][side], labels[where][side]))
        k = max(features.logits.shape[1] - 1, 2)
        spread = [v / math.log(k) for v in spread]
        pick = 0 if isolation[0] >= isolation[1] else 1
        surplus = len(where) - typical
        record.update(count_ratio=len(where) / typical if typical else float("nan"))
        has_surplus = surplus_ratio is not None and len(where) >= surplus_ratio * typical
        smaller = 0 if int(second.sum()) <= int((~second).sum()) else 1
        lean = surplus_ratio is not None and not has_surplus  # the label holds no more than labels do
        if minority and lean and pick != smaller and isolation[smaller] >= isolation_min:
            pick = smaller  # without a surplus the poisoned samples are the lesser part of their label
            record["lesser_side"] = True
        evidence = "isolation" if isolation[pick] >= isolation_min else None
        if evidence == "isolation" and has_surplus and spread[1 - pick] - spread[pick] >= spread_margin:
            # the isolated side hesitates among fewer classes than the other: it is the label's own samples and
            # the other side the relabelled ones (a backdoor that did not take leaves its relabelled samples
            # scattered, and the label's own samples isolated from them); the surplus evidence decides below
            evidence = None
            record["isolation_overruled"] = {"isolation": isolation[pick], "runner_up_spread": spread[pick],
                                             "other_runner_up_spread": spread[1 - pick]}  # fmt: skip
        if evidence is None and has_surplus:
            # the relabelled samples: the side whose runner-up logits spread over the classes they came from
            mixed = 0 if spread[0] >= spread[1] else 1
            size = int((second if mixed == 0 else ~second).sum())
            gap = spread[mixed] - spread[1 - mixed] if 0.5 <= size / surplus <= 1.5 else -math.inf  # wrong size
            if gap >= spread_margin:
                pick, evidence = mixed, "surplus"
            elif gap > 0 and carried is not None:
                # the spread leans but cannot decide: the side whose samples carry the label into a mixture with
                # other labels' samples (a trigger does; a label's own content is diluted by the other image)
                own, other = (carried(where[side]) for side in ((second, ~second) if mixed == 0 else (~second, second)))
                record["superimposed"] = {"share": own, "other_share": other, "ratio": carry_ratio}
                if own > other and 100 - other >= carry_ratio * (100 - own):
                    pick, evidence = mixed, "surplus"
        side = second if pick == 0 else ~second
        if evidence is None and lean and minority and finer > 2:
            # finer clusters multiply the chances of an isolated group of a label's own content: the cluster must
            # also look relabelled, its runner-up logits spread more than the rest of its label's (the surplus rule)
            found = isolated_minority(x, projected, others, scale, finer, seed)
            if found is not None and found[1] >= isolation_min:
                group, rest = (runner_up_entropy(features.logits[where][m], labels[where][m]) / math.log(k)
                               for m in (found[0], ~found[0]))  # fmt: skip
                record["finer"] = {"clusters": finer, "isolation": found[1], "samples": int(found[0].sum()),
                                   "runner_up_spread": group, "rest_runner_up_spread": rest}  # fmt: skip
                if group - rest >= spread_margin:
                    side, evidence = found[0], "isolation"
                    isolation[pick], spread[pick] = found[1], group
        axis = x[side].mean(0) - x[~side].mean(0)
        projection = (x - x[~side].mean(0)) @ (axis / axis.norm())
        scores[where] = ((projection - projection.median()) / projection.std().clamp_min(1e-12)).float()
        record.update(
            isolation=isolation[pick],
            share=float(side.double().mean()),
            runner_up_spread=spread[pick],
            other_side={"isolation": isolation[1 - pick], "runner_up_spread": spread[1 - pick]},
        )
        if evidence is not None:
            members, tailed = side, not lean or tail_without_surplus
            if tailed:
                # and the benign side's samples beyond its upper tail (median + tail robust SDs) along the
                # discriminant between the sides (or the line between their centres): the poisoned samples
                # 2-means left with the benign side (a trigger learned unevenly)
                along = projection if tail_axis == "centres" else projected @ discriminant(projected, side)
                benign = along[~side]
                mad = (benign - benign.median()).abs().median() * 1.4826
                members = side | (along > benign.median() + tail * mad)
            record.update(
                poisoned=True, evidence=evidence, suspected=int(members.sum()), two_means_side=int(side.sum())
            )
            if tailed:
                record["tail_axis"] = tail_axis
            chosen.append(where[members])
        classes.append(record)
    indices = torch.cat(chosen).sort().values if chosen else torch.empty(0, dtype=torch.long)
    if not bool(finite.all()):
        classes.append({"class": None, "samples": int((~finite).sum()), "note": "features not finite: not scored"})
    return SuspectedSamples("label-clusters", indices, scores, classes, time.perf_counter() - start)


def detect_poisoned(
    model: nn.Module,
    train: ImageSet,
    *,
    batch_size: int = 512,
    features: SampleFeatures | None = None,
    **options,
) -> SuspectedSamples:
    """The suspected poisoned samples of the training set `train` the model was trained on, their scores
    and the per-label verdicts; nothing else is read (no poisoning flags, no test data).

    Args:
        model: the suspect (its mode and weights are kept).
        train: the possibly poisoned training set, with the labels it was trained on.
        batch_size: samples per forward pass.
        features: `train`'s features when a pass over it already recorded them (`features.recording`).
        **options: `detect_in_features`'s (dims, isolation_min, tail, surplus_ratio, spread_margin, min_samples, seed,
            carry_ratio, minority, tail_without_surplus, finer); `carried` is `superimposed_share` on `model` and `train`.
    """
    start = time.perf_counter()
    if features is None:
        features = sample_features(model, train, batch_size=batch_size)

    def carried(positions: torch.Tensor) -> float:
        return superimposed_share(model, train, positions, batch_size=batch_size, seed=options.get("seed", 0))

    found = detect_in_features(features, carried=carried, **options)
    found.seconds = time.perf_counter() - start
    return found
