import pickle
from pathlib import Path

import pytest
import torch

from bdprune import io
from bdprune.attacks import create_attack
from bdprune.models import create_model


def small_model(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=3, in_channels=1, base_width=4, mean=[0.5], std=[0.25])


CARD = {"architecture": "resnet18",
        "arch_args": {"num_classes": 3, "in_channels": 1, "base_width": 4, "mean": [0.5], "std": [0.25]}}


def test_checkpoint_round_trip_gives_the_same_logits_and_attack(tmp_path):
    model = small_model().eval()
    attack = create_attack("badnets", image_shape=(1, 8, 8), num_classes=3, generator=torch.Generator().manual_seed(4))
    io.save_checkpoint(tmp_path / "run", model, CARD, attack=attack)
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"model.safetensors", "model.json", "attack.safetensors"}
    ckpt = io.load_checkpoint(tmp_path / "run")
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(model(x), ckpt.model(x))
    assert torch.equal(ckpt.attack.patch, attack.patch) and ckpt.attack.params() == attack.params()
    assert ckpt.card["provenance"]["bdprune"]


def test_tampered_weights_are_refused(tmp_path):
    io.save_checkpoint(tmp_path, small_model(), CARD)
    other = io.save_tensors(tmp_path / "other.safetensors", small_model(seed=1).state_dict())
    assert other
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "other.safetensors").read_bytes())
    with pytest.raises(io.CheckpointError, match="does not match the SHA-256"):
        io.load_checkpoint(tmp_path)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/bdprune-pt-pwned",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_malicious_pickle_checkpoint_runs_no_code_and_is_refused(tmp_path, zip_format):
    marker = Path("/tmp/bdprune-pt-pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "model.pt"
    payload = {"state_dict": {"w": torch.zeros(1)}, "evil": _Exploit()}
    if zip_format:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(io.UnsafeCheckpointError, match="cannot be loaded safely.*re-save only the weights"):
        io.load_state_dict_file(path)
    assert not marker.exists(), "loading the checkpoint executed its code"


def test_a_plain_state_dict_pt_file_loads(tmp_path):
    model = small_model()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pt")
    state = io.load_state_dict_file(tmp_path / "w.pt")
    fresh = small_model(seed=2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.conv1.weight, model.conv1.weight)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    io.atomic_write_json(target, {"a": 1})

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_json(target, {"a": 2})
    assert io.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"], "a temporary file was left behind"


def test_missing_or_broken_sidecar(tmp_path):
    with pytest.raises(io.CheckpointError, match="missing"):
        io.load_checkpoint(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(io.CheckpointError, match="not valid JSON"):
        io.load_checkpoint(tmp_path)


def test_atomic_write_gives_the_umask_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = io.atomic_write_bytes(tmp_path / "report.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
