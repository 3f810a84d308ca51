"""EP's "exact" estimator: the authors' one-batch estimator, on the first 500 training samples."""

import pytest
import torch

from bdprune.defenses import EP, DefenseData
from bdprune.errors import InvalidInput
from bdprune.neurons.entropy import exact_entropy


def test_exact_mode_scores_the_first_500_samples_with_the_authors_estimator(toy_backdoor):
    model, mixed, _, _, _ = toy_backdoor
    train = mixed.subset(torch.arange(300).repeat(2))  # 600 samples: only the first 500 are read
    maxima = []
    hook = model.bn.register_forward_pre_hook(lambda _m, inputs: maxima.append(inputs[0].amax(dim=(2, 3))))
    try:
        with torch.no_grad():
            model(train.float_images()[:500])
    finally:
        hook.remove()
    _, report = EP.from_options(estimator="exact", rule="zscore", u=1.0).run(model, DefenseData(train=train))
    assert report.samples == 500
    (layer,) = report.layers
    assert torch.allclose(
        torch.tensor(layer.scores, dtype=torch.float64), exact_entropy(maxima[0]), rtol=0, atol=1e-9, equal_nan=True
    )
    assert layer.pruned == [0], "the trigger neuron has the lowest entropy"
    wider = EP.from_options(estimator="exact", rule="zscore", bin_width=0.05, max_samples=300).run(
        model, DefenseData(train=train)
    )[1]
    assert wider.samples == 300 and wider.layers[0].scores != layer.scores


def test_an_unknown_estimator_names_the_exact_one():
    with pytest.raises(InvalidInput, match="'exact'"):
        EP.from_options(estimator="official")
