"""The deployer's path (issue 13): a user's own torchvision or timm ResNet-18 for grey 28 x 28 images, saved with
`torch.save(model.state_dict())`, repaired by `bdprune defend` with BNP and EP, with the trigger named on the
command line so that the ASR is measured; the repaired weights load into the user's network unchanged.

Nothing is trained: the networks are random, their BN statistics those of one batch. The real libraries are
used where they import; elsewhere these tests are skipped with the reason.
"""

import importlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from bdprune.cli import main

BN_LAYERS = 20  # ResNet-18: the stem, 2 per basic block (8 blocks), 3 downsampling shortcuts


def library(name: str):
    try:
        return importlib.import_module(name)
    except Exception as exc:
        pytest.skip(
            f"{name} does not import here: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )


def write_idx(path: Path, array: np.ndarray) -> None:
    path.write_bytes(
        struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    )


@pytest.fixture(scope="module")
def fashion_like(tmp_path_factory) -> Path:
    """Fashion-MNIST's file layout with 400 training and 200 test images of noise."""
    root = tmp_path_factory.mktemp("fashion-like")
    g = np.random.default_rng(0)
    for split, n in (("train", 400), ("t10k", 200)):
        write_idx(root / f"{split}-images-idx3-ubyte", g.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return root


def users_network(kind: str) -> nn.Module:
    """What a user builds for Fashion-MNIST: a 1-channel stem (torchvision: conv1 replaced; timm: in_chans=1)."""
    torch.manual_seed(0)
    if kind == "torchvision":
        model = library("torchvision").models.resnet18(num_classes=10)
        model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        model = library("timm").create_model("resnet18", num_classes=10, in_chans=1)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # running statistics = those of the one batch below (no weight changes)
    with torch.no_grad():
        model(torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    return model.eval()


@pytest.mark.parametrize("kind", ["torchvision", "timm"])
@pytest.mark.parametrize("method", ["bnp", "ep"])
def test_defend_a_users_network_end_to_end_with_a_named_trigger(kind, method, fashion_like, tmp_path, capsys):
    original = users_network(kind)
    torch.save(original.state_dict(), tmp_path / "weights.pt")
    data = (
        ["--train-data", str(fashion_like), "--train-indices", "0:300"] if method == "ep" else ["--clean-samples", "64"]
    )
    code = main(
        [
            "defend",
            "--weights",
            str(tmp_path / "weights.pt"),
            "--arch",
            f"{kind}:resnet18",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(fashion_like),
            "--normalize",
            "none",
            "--attack",
            "badnets",
            "--attack-arg",
            "pattern=white",
            "--target",
            "0",
            "--method",
            method,
            *data,
            "--test-samples",
            "100",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--no-plots",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    acc, asr = (float(v) for v in rows["suspicious"][:2])  # the ASR is printed, a number
    assert 0 <= acc <= 100 and 0 <= asr <= 100 and method.upper() in rows
    assert "trigger: attack badnets, seed 0, target 0" in err and "normalization: source none" in err

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["layers"]) == BN_LAYERS and report["unscored"] == {}
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert round(metrics["before"]["asr"], 2) == asr and metrics["trigger"]["params"]["pattern"] == "white"
    sidecar = json.loads((tmp_path / "out" / "model.json").read_text())
    assert sidecar["attack"]["name"] == "badnets" and sidecar["attack"]["seed"] == 0

    users = users_network(kind)  # the user's own class, loading the repaired weights unchanged
    users.load_state_dict(load_file(tmp_path / "out" / "model.safetensors"))
    users.load_state_dict(torch.load(tmp_path / "out" / "model.pt", weights_only=True))
    pruned = {(layer["name"], c) for layer in report["layers"] for c in layer["pruned"]}
    assert len(pruned) == report["num_pruned"]
    for name, channel in pruned:  # silenced in the user's network ("model." is bdprune's wrapper), the rest as it was
        bn = users.get_submodule(name.removeprefix("model."))
        assert bn.weight[channel] == 0 and bn.bias[channel] == 0
    kept = [(n, m) for n, m in users.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.running_mean, original.get_submodule(n).running_mean) for n, m in kept)


def test_a_network_on_grey_images_repeated_to_rgb(fashion_like, tmp_path, capsys):
    tv = library("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=10).eval()  # trained on grey images copied to 3 channels
    torch.save(model.state_dict(), tmp_path / "rgb.pt")
    args = [
        "defend",
        "--weights",
        str(tmp_path / "rgb.pt"),
        "--arch",
        "torchvision:resnet18",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(fashion_like),
        "--method",
        "bnp",
        "--clean-samples",
        "32",
        "--test-samples",
        "50",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        "--no-plots",
    ]
    assert main(args) == 2
    assert "takes 3 channel(s), the model's 1: set in_channels" in capsys.readouterr().err
    assert main([*args, "--model-arg", "in_channels=3"]) == 0, capsys.readouterr().err
    card = json.loads((tmp_path / "out" / "model.json").read_text())
    assert card["arch_args"]["in_channels"] == 3 and card["arch_args"]["image_channels"] == 1
    assert main(["evaluate", str(tmp_path / "out"), "--data-dir", str(fashion_like)]) == 0
