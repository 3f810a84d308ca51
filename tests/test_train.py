import torch

from bdprune.models import create_model
from bdprune.train import TrainConfig, train_model

from conftest import make_imageset


def tiny_run(seed_data=0):
    data = make_imageset(96, (1, 8, 8), 3, seed=seed_data)
    # learnable: class = brightness band
    images = (data.labels.view(-1, 1, 1, 1).float() * 100 + torch.randint(0, 40, (96, 1, 8, 8), generator=torch.Generator().manual_seed(seed_data))).clamp(0, 255)
    data = data.with_samples(images.to(torch.uint8), data.labels)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("resnet18", num_classes=3, in_channels=1, base_width=4)
    history = train_model(model, data, TrainConfig(epochs=3, batch_size=32, lr=0.05), generator=torch.Generator().manual_seed(0),
                          progress=False)
    return model, history


def test_training_is_deterministic_on_cpu():
    a, ha = tiny_run()
    b, hb = tiny_run()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]


def test_training_reduces_the_loss_and_leaves_eval_mode():
    model, history = tiny_run()
    assert history[-1]["loss"] < history[0]["loss"]
    assert not model.training


def test_config_rejects_unknown_keys():
    import pytest

    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"epochs": 1, "lr_decay": 0.1})
