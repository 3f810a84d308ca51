"""Plain file I/O: atomic writes, safetensors, and state-dict files that never run code."""

import pickle
from pathlib import Path

import pytest
import torch

from bdprune import files
from bdprune.models import create_model


def small_model(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=3, in_channels=1, base_width=4, mean=[0.5], std=[0.25])


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
    with pytest.raises(files.UnsafeCheckpointError, match="cannot be loaded safely.*re-save only the weights"):
        files.load_state_dict_file(path)
    assert not marker.exists(), "loading the checkpoint executed its code"


def test_a_plain_state_dict_pt_file_loads(tmp_path):
    model = small_model()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pt")
    state = files.load_state_dict_file(tmp_path / "w.pt")
    fresh = small_model(seed=2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.conv1.weight, model.conv1.weight)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    files.atomic_write_json(target, {"a": 1})

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_json(target, {"a": 2})
    assert files.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"], "a temporary file was left behind"


def test_atomic_write_gives_the_umask_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = files.atomic_write_bytes(tmp_path / "report.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_whole_pickled_model_is_refused_in_our_own_words(tmp_path):
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "whole.pt")
    with pytest.raises(files.UnsafeCheckpointError) as caught:
        files.load_state_dict_file(tmp_path / "whole.pt")
    message = str(caught.value)
    assert (
        "pickles a torch.nn.modules.container.Sequential object (a whole model, saved with torch.save(model))"
        in message
    )
    assert (
        "\x1b" not in message
        and "\n" not in message
        and "weights_only" not in message
        and "add_safe_globals" not in message
    )
