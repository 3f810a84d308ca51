"""The one training loop: deterministic on the CPU, a loss function or an Objective plugged in."""

import pytest
import torch
import torch.nn.functional as F

from bdprune.models import create_model
from bdprune.train import Objective, TrainConfig, cosine, train_model


def learnable(make_imageset, seed_data=0):
    data = make_imageset(96, (1, 8, 8), 3, seed=seed_data)
    # learnable: class = brightness band
    noise = torch.randint(0, 40, (96, 1, 8, 8), generator=torch.Generator().manual_seed(seed_data))
    images = (data.labels.view(-1, 1, 1, 1).float() * 100 + noise).clamp(0, 255)
    return data.with_samples(images.to(torch.uint8), data.labels)


def train_tiny(make_imageset, **kw):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("resnet18", num_classes=3, in_channels=1, base_width=4)
    history = train_model(
        model,
        learnable(make_imageset),
        TrainConfig(epochs=3, batch_size=32, lr=0.05),
        generator=torch.Generator().manual_seed(0),
        progress=False,
        **kw,
    )
    return model, history


def test_training_is_deterministic_on_cpu(make_imageset):
    a, ha = train_tiny(make_imageset)
    b, hb = train_tiny(make_imageset)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]


def test_training_reduces_the_loss_and_leaves_eval_mode(make_imageset):
    model, history = train_tiny(make_imageset)
    assert history[-1]["loss"] < history[0]["loss"]
    assert not model.training and set(history[0]) == {"epoch", "loss", "seconds", "images_per_second"}


class Tempered(Objective):
    """Cross-entropy of logits divided by a learned temperature: an objective with a parameter of its own."""

    def __init__(self):
        self.log_t = torch.zeros((), requires_grad=True)

    def __call__(self, model, images, labels, positions, generator):
        ce = F.cross_entropy(model(images) / self.log_t.exp(), labels)
        return {"loss": ce, "temperature": self.log_t.exp().detach()}

    def optimizers(self, steps):
        opt = torch.optim.SGD([self.log_t], lr=0.1)
        return [(opt, torch.optim.lr_scheduler.LambdaLR(opt, cosine(steps)))]


def test_an_objective_trains_its_own_parameters_and_logs_its_terms(make_imageset):
    objective = Tempered()
    _, history = train_tiny(make_imageset, loss_fn=objective)
    assert objective.log_t.item() != 0.0
    assert "temperature" in history[-1] and history[-1]["temperature"] > 0


def test_a_loss_that_blows_up_stops_training_with_advice(make_imageset):
    def bad(model, images, labels, positions):
        return F.cross_entropy(model(images), labels) * float("nan")

    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train_tiny(make_imageset, loss_fn=bad)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"epochs": 1, "lr_decay": 0.1})
