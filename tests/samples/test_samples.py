import pytest
import torch

from bdprune.samples.detector import detect_in_features, detect_poisoned
from bdprune.samples.features import SampleFeatures
from bdprune.samples.result import precision_recall


def blobs(poisoned: int, seed: int = 0, classes: int = 5, per_class: int = 300):
    """Non-negative features: one blob per label along its own axis; `poisoned` samples of other classes'
    content relabelled 0 and shifted far along a trigger axis of their own."""
    g = torch.Generator().manual_seed(seed)
    content = torch.arange(classes).repeat_interleave(per_class)
    features = (torch.randn(len(content), 16, generator=g) * 0.3).abs()
    features[torch.arange(len(content)), content] += 4.0
    labels = content.clone()
    flags = torch.zeros(len(content), dtype=torch.bool)
    if poisoned:
        victims = (content != 0).nonzero().flatten()[torch.randperm(int((content != 0).sum()), generator=g)[:poisoned]]
        labels[victims] = 0
        flags[victims] = True
        features[victims, 15] += 6.0  # the trigger's feature
    logits = torch.randn(len(content), classes, generator=g)
    return SampleFeatures(features, logits, labels), flags


def test_clean_labels_are_left_alone():
    features, _ = blobs(0)
    found = detect_in_features(features)
    assert not found.found and all(not c["poisoned"] for c in found.classes)
    assert torch.isfinite(found.scores).all()  # every sample is scored all the same


def test_a_planted_trigger_group_is_found_in_its_label():
    features, flags = blobs(300)
    found = detect_in_features(features)
    precision, recall = precision_recall(found.mask(len(flags)), flags)
    assert [c["class"] for c in found.classes if c["poisoned"]] == [0]
    assert precision >= 95 and recall >= 95


def all_to_all(rate: float = 0.1, seed: int = 0, classes: int = 5, per_class: int = 300):
    """`blobs`' labels, with `rate` of each class's samples relabelled to the next class and shifted along a
    trigger axis: every label holds a poisoned group of the previous class's content, and no label a surplus."""
    g = torch.Generator().manual_seed(seed)
    content = torch.arange(classes).repeat_interleave(per_class)
    features = (torch.randn(len(content), 16, generator=g) * 0.3).abs()
    features[torch.arange(len(content)), content] += 4.0
    flags = torch.rand(len(content), generator=g) < rate
    labels = torch.where(flags, (content + 1) % classes, content)
    features[flags, 15] += 6.0
    return SampleFeatures(features, torch.randn(len(content), classes, generator=g), labels), flags


def test_without_a_surplus_the_lesser_isolated_side_is_named_and_no_tail_is_added():
    features, flags = all_to_all()
    found = detect_in_features(features)
    precision, recall = precision_recall(found.mask(len(flags)), flags)
    assert sum(c["poisoned"] for c in found.classes) == 5 and precision >= 95 and recall >= 95
    assert all(c["suspected"] < c["samples"] / 2 for c in found.classes)
    # each label's own samples lie further from every other group than its poisoned ones (the trigger's
    # group sits next to the class its content comes from): isolation alone names the label's own samples
    assert all(c["other_side"]["isolation"] > c["isolation"] for c in found.classes)
    before = detect_in_features(features, minority=False)
    assert all(c["suspected"] > c["samples"] / 2 for c in before.classes)
    # the tail beyond the benign side, meant for an unevenly learned trigger in a label with a surplus
    tailed = detect_in_features(features, tail_without_surplus=True)
    assert len(tailed.indices) > len(found.indices) and len(detect_in_features(features, tail=0.5).indices) == len(
        found.indices
    )


def relabelled_logits(content, labels, flags, classes: int, g: torch.Generator) -> torch.Tensor:
    """Logits carrying each sample's label, with a runner-up: a relabelled sample's (`flags`) its own class
    (`content`), a clean sample's the next class."""
    runner_up = torch.where(flags, content, (content + 1) % classes)
    logits = torch.randn(len(content), classes, generator=g) * 0.1
    logits[torch.arange(len(content)), runner_up] += 2.0
    logits[torch.arange(len(content)), labels] += 5.0
    return logits


def small_group(poisoned: int, *, natural: int = 0, split: float = 2.5, classes: int = 5, per_class: int = 300):
    """`relabelled`'s logits on `blobs`' features, with label 0's own samples of two kinds (half of them `split`
    along an axis of their own) and `poisoned` samples of other classes relabelled 0 and shifted along a
    trigger axis: too few for a surplus, and too few to be 2-means' split of label 0, which the two kinds
    take. `natural` of label 0's own samples form an isolated group of their own content instead."""
    g = torch.Generator().manual_seed(0)
    content = torch.arange(classes).repeat_interleave(per_class)
    features = (torch.randn(len(content), 16, generator=g) * 0.3).abs()
    features[torch.arange(len(content)), content] += 4.0
    own = (content == 0).nonzero().flatten()
    features[own[: len(own) // 2], 14] += split
    features[own[len(own) - natural :], 13] += 6.0
    labels, flags = content.clone(), torch.zeros(len(content), dtype=torch.bool)
    victims = (content != 0).nonzero().flatten()[torch.randperm(int((content != 0).sum()), generator=g)[:poisoned]]
    labels[victims], flags[victims] = 0, True
    features[victims, 15] += 6.0
    return SampleFeatures(features, relabelled_logits(content, labels, flags, classes, g), labels), flags


def test_a_small_isolated_group_that_2_means_passes_over_is_found_by_finer_clusters():
    features, flags = small_group(30)
    found = detect_in_features(features)
    assert [c["class"] for c in found.classes if c["poisoned"]] == [0]
    assert precision_recall(found.mask(len(flags)), flags) == (100.0, 100.0)
    assert found.classes[0]["finer"]["samples"] == 30
    # 2-means alone splits label 0 along its two kinds, neither isolated enough: nothing is named
    assert not detect_in_features(features, finer=0).found
    # the two kinds alone, or with an isolated group of the label's own content (its runner-up logits no more
    # spread than the rest's): nothing is named
    assert not detect_in_features(small_group(0)[0]).found
    mimic = detect_in_features(small_group(0, natural=30)[0])
    assert not mimic.found and mimic.classes[0]["finer"]["isolation"] >= 0.58


def unevenly_learned(poisoned: int = 300, *, weak: float = 0.3, classes: int = 5, per_class: int = 300):
    """`blobs`' features with label 0's own samples spread along an axis of their own kinds (14) and `poisoned`
    samples of other classes relabelled 0; the trigger moves them along the kinds' axis and a trigger axis (15),
    and a `weak` share of them (a trigger learned unevenly) only part of the way: between label 0's own samples
    along the kinds' axis, a little apart from them along the trigger's."""
    g = torch.Generator().manual_seed(0)
    content = torch.arange(classes).repeat_interleave(per_class)
    features = (torch.randn(len(content), 16, generator=g) * 0.3).abs()
    features[torch.arange(len(content)), content] += 4.0
    own = content == 0
    features[own, 14] += torch.rand(int(own.sum()), generator=g) * 6.0
    labels, flags = content.clone(), torch.zeros(len(content), dtype=torch.bool)
    victims = (content != 0).nonzero().flatten()[torch.randperm(int((content != 0).sum()), generator=g)[:poisoned]]
    labels[victims], flags[victims] = 0, True
    features[victims, content[victims]] -= 3.5
    features[victims, 0] += 4.0
    strong = torch.rand(poisoned, generator=g) >= weak
    features[victims, 14] += torch.where(strong, 6.0, 3.0)
    features[victims, 15] += torch.where(strong, 6.0, 1.2)
    logits = torch.randn(len(content), classes, generator=g)
    return SampleFeatures(features, logits, labels), flags, victims[~strong]


def test_the_tail_read_along_the_discriminant_takes_the_weakly_learned_samples_the_centres_line_leaves():
    features, flags, weak = unevenly_learned()
    found = detect_in_features(features)
    (record,) = [c for c in found.classes if c["poisoned"]]
    assert record["two_means_side"] < 230  # 2-means leaves most of the weak ones with label 0's own samples
    mask = found.mask(len(flags))
    precision, recall = precision_recall(mask, flags)
    assert precision >= 95 and recall >= 90 and float(mask[weak].float().mean()) >= 0.75
    # along the line between the centres label 0's own spread along its kinds hides them
    old = detect_in_features(features, tail_axis="centres").mask(len(flags))
    assert precision_recall(old, flags)[1] < 80 and float(old[weak].float().mean()) < 0.2


def test_an_unknown_tail_axis_is_refused():
    features, _ = blobs(0)
    with pytest.raises(ValueError, match="tail_axis"):
        detect_in_features(features, tail_axis="diagonal")


def test_detect_poisoned_runs_on_a_model_and_its_training_set(tiny):
    model, data = tiny
    found = detect_poisoned(model, data, batch_size=16, min_samples=5)
    assert found.scores.shape == (len(data),) and found.method == "label-clusters" and found.seconds > 0


def relabelled(poisoned: int, *, shift: float = 1.0, large: int = 0, classes: int = 5, per_class: int = 300):
    """Features of a model that learned a weak trigger: `poisoned` samples of other classes relabelled 0 whose
    features sit near label 0's, `shift` along a trigger axis; their runner-up logit is their true class, a
    clean sample's the next class. `large` extra clean samples of class 0 (a naturally larger class)."""
    g = torch.Generator().manual_seed(0)
    content = torch.cat([torch.arange(classes).repeat_interleave(per_class), torch.zeros(large, dtype=torch.long)])
    features = (torch.randn(len(content), 16, generator=g) * 0.3).abs()
    features[torch.arange(len(content)), content] += 4.0
    labels, flags = content.clone(), torch.zeros(len(content), dtype=torch.bool)
    victims = (content != 0).nonzero().flatten()[torch.randperm(int((content != 0).sum()), generator=g)[:poisoned]]
    labels[victims], flags[victims] = 0, True
    features[victims, content[victims]] -= 3.5
    features[victims, 0] += 4.0
    features[victims, 15] += shift
    return SampleFeatures(features, relabelled_logits(content, labels, flags, classes, g), labels), flags


def test_a_label_with_a_relabelled_surplus_is_flagged_though_its_group_is_not_isolated():
    features, flags = relabelled(300)
    found = detect_in_features(features)
    (record,) = [c for c in found.classes if c["poisoned"]]
    assert record["class"] == 0 and record["evidence"] == "surplus" and record["isolation"] < 0.58
    precision, recall = precision_recall(found.mask(len(flags)), flags)
    assert precision >= 90 and recall >= 95
    assert not detect_in_features(features, surplus_ratio=None).found  # isolation alone misses it


def test_a_naturally_large_class_is_not_a_surplus():
    features, _ = relabelled(0, large=300)  # label 0 holds twice the median count, all its own samples
    found = detect_in_features(features)
    assert [c["count_ratio"] for c in found.classes if c["class"] == 0] == [2.0]
    assert not found.found


def test_the_console_says_why_a_label_was_flagged():
    from bdprune.samples.result import describe_flagged, flagged_labels

    features, _ = relabelled(300)
    labels = flagged_labels(detect_in_features(features).classes)
    assert [(e["label"], e["evidence"]) for e in labels] == [(0, "surplus")]
    assert describe_flagged(labels) == (
        f"label 0: a relabelled-looking group and a surplus of samples ({labels[0]['count_ratio']:.2f}x the median "
        "label count)"
    )
    assert describe_flagged([{"label": 3, "evidence": "isolation"}]) == "label 3: an isolated group"
    assert flagged_labels(detect_in_features(relabelled(0, large=300)[0]).classes) == []


def test_isolation_is_overruled_where_a_surplus_label_s_isolated_side_is_its_own_samples():
    """A backdoor that did not take: the relabelled samples keep their content (their features sit with their
    true classes, their runner-up logit is their true class), so label 0's own samples are the isolated side.
    Isolation alone names label 0's own samples; with the surplus evidence the relabelled side is named."""
    g = torch.Generator().manual_seed(0)
    classes, per_class = 5, 300
    content = torch.arange(classes).repeat_interleave(per_class)
    features = (torch.randn(len(content), 16, generator=g) * 0.3).abs()
    features[torch.arange(len(content)), content] += 4.0
    labels, flags = content.clone(), torch.zeros(len(content), dtype=torch.bool)
    victims = (content != 0).nonzero().flatten()[torch.randperm(int((content != 0).sum()), generator=g)[:300]]
    labels[victims], flags[victims] = 0, True
    runner_up = torch.where(flags, content, (content + 1) % classes)
    logits = torch.randn(len(content), classes, generator=g) * 0.1
    logits[torch.arange(len(content)), runner_up] += 2.0
    logits[torch.arange(len(content)), labels] += 5.0
    features = SampleFeatures(features, logits, labels)
    alone = detect_in_features(features, surplus_ratio=None)  # no surplus evidence: isolation decides
    precision, _ = precision_recall(alone.mask(len(flags)), flags)
    assert [c["evidence"] for c in alone.classes if c["poisoned"]] == ["isolation"] and precision < 10
    found = detect_in_features(features)
    (record,) = [c for c in found.classes if c["class"] == 0]
    assert "isolation_overruled" in record and record["evidence"] == "surplus"
    precision, recall = precision_recall(found.mask(len(flags)), flags)
    assert precision >= 90 and recall >= 90


def leaning(poisoned: int = 300, *, spread_share: float = 0.15):
    """`relabelled`'s features, but the relabelled samples' runner-up logit is their true class only for a share
    `spread_share` of them (the rest hesitate towards class 1, as label 0's own samples do): the runner-up spread
    leans towards the relabelled side by less than `spread_margin`."""
    features, flags = relabelled(poisoned)
    g = torch.Generator().manual_seed(1)
    logits = features.logits.clone()
    hesitant = flags & (torch.rand(len(flags), generator=g) >= spread_share)
    logits[hesitant] = torch.randn(int(hesitant.sum()), 5, generator=g) * 0.1
    logits[hesitant, 1] += 2.0
    logits[hesitant, 0] += 5.0
    return SampleFeatures(features.features, logits, features.labels), flags


def test_a_leaning_spread_is_decided_by_which_side_carries_its_label_into_mixtures():
    features, flags = leaning()
    alone = detect_in_features(features)
    (record,) = [c for c in alone.classes if c["class"] == 0]
    gap = record["runner_up_spread"] - record["other_side"]["runner_up_spread"]
    assert not alone.found and 0 < abs(gap) < 0.33  # the spread leans, too little to decide

    def carried(relabelled_share: float, own_share: float):
        return lambda positions: relabelled_share if bool(flags[positions].float().mean() > 0.5) else own_share

    found = detect_in_features(features, carried=carried(97.0, 55.0))
    (record,) = [c for c in found.classes if c["class"] == 0]
    assert record["evidence"] == "surplus" and record["superimposed"]["share"] == 97.0
    precision, recall = precision_recall(found.mask(len(flags)), flags)
    assert precision >= 90 and recall >= 95
    assert detect_in_features(features, carried=carried(77.5, 55.0)).found  # loses it in 22.5 % against 45 %
    assert not detect_in_features(features, carried=carried(77.0, 55.0)).found  # 23 % against 45: under twice
    assert not detect_in_features(features, carried=carried(55.0, 97.0)).found  # the other side carries: no verdict
    assert not detect_in_features(features, carried=carried(100.0, 100.0)).found  # nothing lost on either side


class Constant(torch.nn.Module):
    """Predicts class `c` for every input."""

    def __init__(self, c: int, classes: int):
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.tensor(c), classes).float())

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_superimposed_share_counts_the_mixtures_that_keep_the_groups_label(tiny):
    from bdprune.samples.detector import superimposed_share

    _, data = tiny
    classes = int(data.labels.max()) + 1
    label0, label1 = (data.labels == 0).nonzero().flatten(), (data.labels == 1).nonzero().flatten()
    assert superimposed_share(Constant(0, classes), data, label0) == 100.0
    assert superimposed_share(Constant(0, classes), data, label1) == 0.0
    assert superimposed_share(Constant(0, classes), data, label0[:0]) != superimposed_share(
        Constant(0, classes), data, label0[:0]
    )  # nothing to read: NaN
