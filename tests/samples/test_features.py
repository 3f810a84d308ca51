import torch

from bdprune.data.batches import iterate_batches
from bdprune.models.head import classifier_head
from bdprune.samples.features import recording, sample_features


def test_features_are_the_input_of_the_classifier_and_the_mode_is_kept(tiny):
    model, clean = tiny
    model.train()
    try:
        out = sample_features(model, clean, batch_size=16)
        assert model.training
    finally:
        model.eval()
    head = classifier_head(model)
    assert out.features.shape == (len(clean), head.in_features) and out.logits.shape == (len(clean), head.out_features)
    assert torch.allclose(head(out.features), out.logits, atol=1e-5)
    assert torch.equal(out.labels, clean.labels) and out.loss().shape == (len(clean),)


def test_features_recorded_off_another_pass_are_the_ones_sample_features_reads(tiny):
    model, clean = tiny

    def one_pass():
        with torch.inference_mode():
            for images, _, _ in iterate_batches(clean, 20):
                model(images)

    with recording(model) as recorder:
        one_pass()
    got, want = recorder.of(clean), sample_features(model, clean, batch_size=16)
    assert torch.allclose(got.features, want.features, atol=1e-5) and torch.allclose(got.logits, want.logits, atol=1e-5)
    assert torch.equal(got.labels, clean.labels)
    with recording(model) as recorder:  # two passes: not one pass over the samples in order, so none
        one_pass()
        one_pass()
    assert recorder.of(clean) is None
    with recording(model, enabled=False) as recorder:
        one_pass()
    assert recorder.of(clean) is None and not classifier_head(model)._forward_hooks
