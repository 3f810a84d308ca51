import torch

from bdprune.samples.features import last_linear, sample_features


def test_features_are_the_input_of_the_classifier_and_the_mode_is_kept(tiny):
    model, clean = tiny
    model.train()
    try:
        out = sample_features(model, clean, batch_size=16)
        assert model.training
    finally:
        model.eval()
    head = last_linear(model)
    assert out.features.shape == (len(clean), head.in_features) and out.logits.shape == (len(clean), head.out_features)
    assert torch.allclose(head(out.features), out.logits, atol=1e-5)
    assert torch.equal(out.labels, clean.labels) and out.loss().shape == (len(clean),)
