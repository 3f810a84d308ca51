import torch

from bdprune.samples.baselines import activation_clustering, spectral_signatures
from bdprune.samples.features import SampleFeatures
from bdprune.samples.result import precision_recall


def planted(n_per_class=200, classes=3, poisoned=30, seed=0):
    """Gaussian features per class; `poisoned` samples of class 0 shifted far along one direction."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = torch.randn(len(labels), 8, generator=g) + 6 * torch.nn.functional.one_hot(labels, 8).float()
    flags = torch.zeros(len(labels), dtype=torch.bool)
    flags[:poisoned] = True
    features[flags] += torch.tensor([0, 0, 0, 0, 0, 0, 0, 10.0])
    return SampleFeatures(features, torch.zeros(len(labels), classes), labels), flags


def test_spectral_signatures_rank_the_planted_group_first_in_its_class():
    features, flags = planted()
    found = spectral_signatures(features, eps=0.1)
    precision, recall = precision_recall(found.mask(len(flags)), flags)
    assert recall == 100 and found.classes[0]["removed"] == 30  # 1.5 * 0.1 * 200
    assert precision < 100  # it also cuts the clean classes: no verdict


def test_activation_clustering_flags_only_the_planted_class():
    features, flags = planted()
    found = activation_clustering(features)
    precision, recall = precision_recall(found.mask(len(flags)), flags)
    assert found.classes[0]["poisoned"] and recall == 100 and precision == 100
