"""Run directories: save and load round trips, tampering refused, sidecars read field by field, and runs
written by earlier versions of bdprune."""

import json
from pathlib import Path

import pytest
import torch

from bdprune import checkpoint, files
from bdprune.attacks import create_attack
from bdprune.card import ModelCard
from bdprune.data import load_dataset
from bdprune.models import create_model
from bdprune.runs import rebuild_run_data

OLD_RUN = Path(__file__).parent / "data_files" / "old-run"


def small_model(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=3, in_channels=1, base_width=4, mean=[0.5], std=[0.25])


CARD = ModelCard("resnet18", {"num_classes": 3, "in_channels": 1, "base_width": 4, "mean": [0.5], "std": [0.25]})


def test_checkpoint_round_trip_gives_the_same_logits_and_attack(tmp_path):
    model = small_model().eval()
    attack = create_attack("badnets", image_shape=(1, 8, 8), num_classes=3, generator=torch.Generator().manual_seed(4))
    checkpoint.save_checkpoint(tmp_path / "run", model, CARD, attack=attack)
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"model.safetensors", "model.json", "attack.safetensors"}
    ckpt = checkpoint.load_checkpoint(tmp_path / "run")
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(model(x), ckpt.model(x))
    assert torch.equal(ckpt.attack.patch, attack.patch) and ckpt.attack.params() == attack.params()
    assert ckpt.card.provenance["bdprune"] and ckpt.card.attack.name == "badnets"
    assert CARD.weights_sha256 is None, "saving does not change the caller's card"


def test_tampered_weights_are_refused(tmp_path):
    checkpoint.save_checkpoint(tmp_path, small_model(), CARD)
    files.save_tensors(tmp_path / "other.safetensors", small_model(seed=1).state_dict())
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "other.safetensors").read_bytes())
    with pytest.raises(checkpoint.CheckpointError, match="does not match the SHA-256"):
        checkpoint.load_checkpoint(tmp_path)


def test_missing_or_broken_sidecar(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="missing"):
        checkpoint.load_checkpoint(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="not valid JSON"):
        checkpoint.load_checkpoint(tmp_path)


def test_sidecar_fields_are_checked_by_name(tmp_path):
    checkpoint.save_checkpoint(tmp_path, small_model(), CARD)
    raw = json.loads((tmp_path / "model.json").read_text())
    for change, message in (
        (("arch_args", [1]), "arch_args must be"),
        (("format", 99), "unsupported sidecar format"),
        (("surprise", 1), "unknown field"),
        (("seed", "x"), "seed must be an integer"),
    ):
        key, value = change
        (tmp_path / "model.json").write_text(json.dumps({**raw, key: value}))
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.load_checkpoint(tmp_path)


def test_a_run_written_by_bdprune_0_1_0_still_loads():
    ckpt = checkpoint.load_checkpoint(OLD_RUN)
    assert ckpt.card.run.config.budget == "cpu", "the old name fit_budget is read as budget"
    assert ckpt.card.run.config.train.augment.pad == 0 and ckpt.attack.name == "badnets"
    assert len(ckpt.card.run.train_indices) == 100 and len(ckpt.card.run.poisoned_indices) == 10
    assert ckpt.attack.params() == json.loads((OLD_RUN / "model.json").read_text())["attack"]["params"]


@pytest.mark.fashion_mnist
def test_an_old_run_gives_the_logits_it_gave_and_rebuilds_its_data(fashion_mnist_dir):
    ckpt = checkpoint.load_checkpoint(OLD_RUN)
    expected = torch.tensor(json.loads((OLD_RUN.parent / "old-run-logits.json").read_text())["logits"])
    images = load_dataset("fashion-mnist", fashion_mnist_dir, train=False).float_images()[:4]
    assert torch.allclose(ckpt.model(images), expected, atol=1e-6)
    data = rebuild_run_data(ckpt.card, ckpt.attack)
    assert len(data.train) == 100 and int(data.poisoned.sum()) == 10 and len(data.reserve) == 60


# -- a wrapped network's weights are its own state dict (issue 13, items 4 and 9) ------------------------------
WRAPPED = ModelCard("resnet18", {"num_classes": 3, "in_channels": 3, "image_channels": 1, "base_width": 4})


def test_a_wrapped_network_is_saved_as_its_own_state_dict_and_old_files_still_load(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", **WRAPPED.arch_args).eval()  # grey images repeated to a 3-channel stem
    checkpoint.save_checkpoint(tmp_path / "run", model, WRAPPED)
    saved = files.load_tensors(tmp_path / "run" / "model.safetensors")
    assert set(saved) == set(model.model.state_dict()), "no wrapper prefix, no wrapper buffers"
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(checkpoint.load_checkpoint(tmp_path / "run").model(x), model(x))
    # written by an earlier bdprune: the whole wrapper's state dict
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    card["weights_sha256"] = files.save_tensors(tmp_path / "run" / "model.safetensors", model.state_dict())
    (tmp_path / "run" / "model.json").write_text(json.dumps(card))
    assert torch.equal(checkpoint.load_checkpoint(tmp_path / "run").model(x), model(x))


def test_a_mismatch_names_the_missing_unexpected_and_misshapen_tensors():
    shell = create_model("resnet18", num_classes=3, in_channels=1, base_width=4, meta=True)
    shapes = {k: tuple(v.shape) for k, v in shell.state_dict().items()}
    wrong = {k: v for k, v in shapes.items() if not k.startswith("layer4")}
    wrong["fc.weight"], wrong["linear.weight"] = (3, 32), (5, 32)
    with pytest.raises(files.CheckpointError) as caught:
        checkpoint.check_shapes(shell, wrong, "w.pt", "resnet18")
    message = str(caught.value)
    assert "missing (" in message and "layer4.0.conv1.weight" in message and "unexpected (1): fc.weight" in message
    assert "other shapes (1): linear.weight (5, 32) (the model's: (3, 32))" in message and "\n" not in message
    with pytest.raises(files.CheckpointError, match="Every key of the file starts with 'model.'"):
        checkpoint.check_shapes(shell, {f"model.{k}": v for k, v in shapes.items()}, "w.pt")
    stem = {**shapes, "conv1.weight": (4, 3, 3, 3)}
    with pytest.raises(files.CheckpointError, match=r"stem \(conv1.weight\) takes 3 channel\(s\), the model's 1"):
        checkpoint.check_shapes(shell, stem, "w.pt")
