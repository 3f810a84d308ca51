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


def test_detect_poisoned_runs_on_a_model_and_its_training_set(tiny):
    model, data = tiny
    found = detect_poisoned(model, data, batch_size=16, min_samples=5)
    assert found.scores.shape == (len(data),) and found.method == "label-clusters" and found.seconds > 0
