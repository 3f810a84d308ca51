"""The command line under a memory cap: a container, a small CI runner or a laptop limits the address space.

Each command runs in a subprocess under `RLIMIT_AS` = 4 GB (`ulimit -v 4000000`). A buffer sized by a limit
rather than by the data (as `f.read(8 GiB + 1)` was, in every file read) fails here, not on a user's machine.
"""

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bdprune.models import create_model

CAP_BYTES = 4 * 10**9
SMALL = ["--clean-samples", "40", "--test-samples", "100", "--threads", "1", "--quiet"]


def capped(*args, cwd: Path) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))

    return subprocess.run(
        [sys.executable, "-m", "bdprune.cli", *map(str, args)],
        cwd=cwd,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=600,
    )


def succeeded(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_train_evaluate_and_defend_under_a_4_gb_cap(tmp_path):
    succeeded(
        capped(
            "train",
            "--preset",
            "cpu",
            "--attack",
            "badnets",
            "--train-subset",
            "300",
            "--epochs",
            "1",
            "--width",
            "2",
            "--seed",
            "0",
            "--threads",
            "1",
            "--quiet",
            "--out",
            "run",
            "--cache-dir",
            "none",
            cwd=tmp_path,
        )
    )
    out = succeeded(capped("evaluate", "run", cwd=tmp_path))
    assert "ACC %" in out and "ASR %" in out
    succeeded(capped("defend", "run", "--method", "bnp", "--out", "bnp", *SMALL, cwd=tmp_path))
    assert (tmp_path / "bnp" / "model.safetensors").is_file() and (tmp_path / "bnp" / "metrics.json").is_file()

    # a foreign state dict (torch's zip format, read with weights_only)
    torch.manual_seed(0)
    torch.save(create_model("resnet18", num_classes=10, in_channels=1, base_width=2).state_dict(), tmp_path / "x.pt")
    succeeded(
        capped(
            "defend",
            "--weights",
            "x.pt",
            "--arch",
            "resnet18",
            "--model-arg",
            "base_width=2",
            "--dataset",
            "fashion-mnist",
            "--method",
            "bnp",
            "--out",
            "foreign",
            *SMALL,
            cwd=tmp_path,
        )
    )
    assert (tmp_path / "foreign" / "model.pt").is_file()
