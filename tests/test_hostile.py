"""Hostile and careless input: no code runs, every error is one clear line (exit 2), outputs are all or nothing.

Each case builds its files here (no network). Groups: code execution through files, messages instead of
tracebacks, memory bombs, special files, missing checksums, non-finite numbers, outputs, image shapes.
"""

import json
import os
import sys
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bdprune import files
from bdprune.card import ModelCard
from bdprune.checkpoint import load_checkpoint, save_checkpoint
from bdprune.cli import main
from bdprune.data import ImageSet
from bdprune.defenses import DefenseData
from bdprune.errors import BdpruneError
from bdprune.models import create_model

ARCH_ARGS = {"num_classes": 3, "in_channels": 1, "base_width": 2}


def cli(capsys, *args) -> tuple[int, str, float]:
    """Run the command; (exit status, stderr, seconds)."""
    start = time.perf_counter()
    code = main([str(a) for a in args])
    seconds = time.perf_counter() - start
    return code, capsys.readouterr().err, seconds


def refused(capsys, *args, match: str, within: float = 60.0) -> str:
    code, err, seconds = cli(capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert match in err, err
    assert seconds < within, f"took {seconds:.1f} s"
    return err


@pytest.fixture
def small_run(tmp_path) -> Path:
    """A saved model of ours (no run record): enough for every check that happens while loading."""
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run", create_model("resnet18", **ARCH_ARGS), ModelCard("resnet18", dict(ARCH_ARGS)))
    return tmp_path / "run"


def edit_sidecar(run: Path, /, **changes) -> None:
    card = json.loads((run / "model.json").read_text())
    for key, value in changes.items():
        if value is ...:
            card.pop(key, None)
        else:
            card[key] = value
    (run / "model.json").write_text(json.dumps(card))


@pytest.fixture
def fake_timm(monkeypatch):
    """A timm stand-in that records what its factory is given."""
    calls = []
    module = types.ModuleType("timm")

    def create(name, pretrained=False, num_classes=1000, in_chans=3, **kwargs):
        calls.append(kwargs)
        return torch.nn.Sequential(
            torch.nn.Conv2d(in_chans, 4, 3),
            torch.nn.BatchNorm2d(4),
            torch.nn.Flatten(),
            torch.nn.LazyLinear(num_classes),
        )

    module.create_model, module.is_model, module.calls = create, (lambda name: name == "resnet18"), calls
    monkeypatch.setitem(sys.modules, "timm", module)
    return module


# -- 1. code execution through the sidecar and --model-arg ------------------------------------------------------
def test_a_sidecar_cannot_pass_checkpoint_path_to_timm(small_run, fake_timm, capsys):
    edit_sidecar(small_run, architecture="timm:resnet18", arch_args={"checkpoint_path": "payload.pth"})
    with pytest.raises(BdpruneError, match="has no parameter checkpoint_path"):
        load_checkpoint(small_run)
    for command in (
        ["evaluate", small_run],
        ["defend", small_run, "--method", "clp", "--out", small_run.parent / "o"],
        ["compare", small_run, "--methods", "clp"],
    ):
        refused(capsys, *command, match="has no parameter checkpoint_path")
    assert fake_timm.calls == [], "the factory was never reached"


def test_model_args_on_the_command_line_are_an_allow_list_too(tmp_path, fake_timm, capsys):
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    refused(
        capsys,
        "defend",
        "--weights",
        tmp_path / "w.pt",
        "--arch",
        "timm:resnet18",
        "--dataset",
        "fashion-mnist",
        "--model-arg",
        "checkpoint_path=payload.pth",
        "--method",
        "clp",
        "--out",
        tmp_path / "o",
        match="has no parameter checkpoint_path",
    )
    refused(
        capsys,
        "train",
        "--model",
        "timm:resnet18",
        "--model-arg",
        "pretrained_cfg_overlay=x",
        "--out",
        tmp_path / "t",
        match="has no parameter pretrained_cfg_overlay",
    )
    assert fake_timm.calls == []


@pytest.mark.parametrize("args", [{"weights": "IMAGENET1K_V1"}, {"model_dir": "/tmp"}])
def test_torchvision_gets_no_argument_from_a_file(small_run, args):
    edit_sidecar(small_run, architecture="torchvision:resnet18", arch_args=args)
    with pytest.raises(BdpruneError, match="has no parameter"):
        load_checkpoint(small_run)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/bdprune-hostile-pwned",))


def test_a_pickle_with_code_runs_nothing(tmp_path, capsys):
    marker = Path("/tmp/bdprune-hostile-pwned")
    marker.unlink(missing_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Exploit()}, tmp_path / "evil.pt")
    refused(
        capsys,
        "defend",
        "--weights",
        tmp_path / "evil.pt",
        "--arch",
        "resnet18",
        "--dataset",
        "fashion-mnist",
        "--method",
        "clp",
        "--out",
        tmp_path / "o",
        match="cannot be loaded safely",
    )
    assert not marker.exists()


# -- 2. one line instead of a traceback ----------------------------------------------------------------------------
SIDECAR_CASES = {
    "architecture 123": ({"architecture": 123}, "architecture must be a string"),
    "architecture null": ({"architecture": None}, "architecture must be a string"),
    "arch_args a list": ({"arch_args": [1, 2]}, "arch_args must be"),
    "num_classes -5": ({"arch_args": {**ARCH_ARGS, "num_classes": -5}}, "num_classes must be >= 1"),
    "base_width 2.5": ({"arch_args": {**ARCH_ARGS, "base_width": 2.5}}, "base_width must be an integer"),
    "unknown architecture": ({"architecture": "resnet1800"}, "unknown model 'resnet1800'"),
    "torchvision: no name": ({"architecture": "torchvision:", "arch_args": {"num_classes": 3}}, "names no model"),
    "no format": ({"format": ...}, "unsupported sidecar format"),
    "unknown field": ({"surprise": 1}, "unknown field(s) surprise"),
    "seed a string": ({"seed": "x"}, "seed must be an integer"),
    "deeply nested": ({"seed": "NEST"}, "nests its JSON too deeply"),
    "unknown attack parameter": (
        {"attack": {"name": "badnets", "params": {"sise": 3}, "image_shape": [1, 8, 8], "num_classes": 3}},
        "has no parameter sise",
    ),
    "unknown attack": (
        {"attack": {"name": "badnetz", "params": {}, "image_shape": [1, 8, 8], "num_classes": 3}},
        "unknown attack 'badnetz'",
    ),
    "attack parameter NaN": (
        {"attack": {"name": "blended", "params": {"alpha": float("nan")}, "image_shape": [1, 8, 8], "num_classes": 3}},
        "alpha must be a finite number",
    ),
    "run record not a dict": ({"run": [1]}, "run must be a JSON object"),
    "run config unknown option": (
        {"run": {"config": {"lr_decay": 1}, "reserve_indices": [], "train_indices": None, "poisoned_indices": []}},
        "unknown run options",
    ),
}


@pytest.mark.parametrize("case", list(SIDECAR_CASES))
def test_a_broken_sidecar_is_one_line_that_names_the_field(small_run, case, capsys):
    changes, message = SIDECAR_CASES[case]
    edit_sidecar(small_run, **changes)
    if case == "deeply nested":
        text = (small_run / "model.json").read_text().replace('"NEST"', "[" * 100000 + "]" * 100000)
        (small_run / "model.json").write_text(text)
    with pytest.raises(BdpruneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint(small_run)
    refused(capsys, "evaluate", small_run, match=message, within=5)


def test_a_missing_library_is_one_line_that_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    refused(
        capsys,
        "defend",
        "--weights",
        tmp_path / "w.pt",
        "--arch",
        "torchvision:resnet18",
        "--dataset",
        "cifar10",
        "--method",
        "clp",
        "--out",
        tmp_path / "o",
        match="pip install torchvision",
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threads", "0"], "--threads must be at least 1"),
        (["--device", "bogus"], "is not a device"),
        (["--max-samples", "-4"], "max_samples must be >= 1"),
        (["--rule", "count", "--count", "-1"], "count must be >= 0"),
        (["--rule", "count"], "rule 'count' needs count"),
        # a parameter the rule does not take changes nothing: it is refused, naming the rule (EP's is consensus)
        (["--u", "5"], "rule 'consensus' does not take u: it takes candidates"),
        (["--count", "3"], "rule 'consensus' does not take count"),
        (["--rule", "zscore", "--defense-arg", "candidates=4"], "rule 'zscore' does not take candidates: it takes u"),
        (["--rule", "guarded"], "ep is not given clean samples, which rule 'guarded' reads"),
        (["--defense-arg", "no_such=1"], "defense 'ep' has no parameter no_such"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["--defense-arg", "bin_width=wide"], "bin_width must be a finite number or None"),
        (["--defense-arg", "nonsense"], "expected KEY=VALUE"),
    ],
)
def test_bad_defend_options_are_one_line(small_run, tmp_path, args, message, capsys):
    refused(capsys, "defend", small_run, "--method", "ep", "--out", tmp_path / "o", *args, match=message, within=5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model-arg", "base_width=wide"], "base_width must be an integer, got 'wide'"),
        (["--model", "torchvision:"], "names no model"),
        (["--attack-arg", "size=-3"], "size must be >= 1"),
        (["--rate", "nan"], "rate must be a finite number"),
        (["--rate", "1.5"], "poisoning rate must lie in [0, 1]"),
        (["--lr", "inf"], "lr must be a finite number"),
        (["--attack", "none", "--attack-arg", "size=3"], "without an attack"),
        (["--width", "0"], "base_width must be >= 1, got 0"),  # a width given is used or refused, never replaced
        (["--width", "-3"], "base_width must be >= 1, got -3"),
    ],
)
def test_bad_train_options_are_one_line_before_any_data_is_read(tmp_path, args, message, capsys):
    refused(
        capsys, "train", "--out", tmp_path / "o", "--data-dir", tmp_path / "nowhere", *args, match=message, within=5
    )


@pytest.mark.fashion_mnist
def test_a_record_that_does_not_match_the_dataset_is_one_line(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for f in tiny_run.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    edit_sidecar(run, run={**json.loads((tiny_run / "model.json").read_text())["run"], "poisoned_indices": [10**9]})
    refused(
        capsys,
        "defend",
        run,
        "--method",
        "bnp",
        "--out",
        tmp_path / "o",
        match="poisoned_indices name sample 1000000000, which 'fashion-mnist-train' (800 samples) does not have",
    )
    # a --data-dir with a smaller dataset than the run was made on
    small = tmp_path / "small"
    small.mkdir()
    for split, n in (("train", 100), ("t10k", 20)):
        write_idx(small / f"{split}-images-idx3-ubyte", np.zeros((n, 28, 28), np.uint8))
        write_idx(small / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    refused(
        capsys,
        "defend",
        tiny_run,
        "--method",
        "bnp",
        "--data-dir",
        small,
        "--out",
        tmp_path / "o2",
        match="does not have: the record and the dataset do not match (check --data-dir)",
    )


@pytest.mark.parametrize("methods", ["", " , "])
def test_compare_refuses_an_empty_method_list(small_run, tmp_path, methods, capsys):
    refused(
        capsys, "compare", small_run, "--methods", methods, "--out", tmp_path / "o", match="names no defense", within=5
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("count", ["0", "-1"])
def test_a_gallery_needs_at_least_one_row(tmp_path, count, capsys):
    refused(capsys, "attacks", "--gallery", tmp_path / "g.png", "--count", count, match="at least one image", within=5)
    assert not (tmp_path / "g.png").exists()


def write_idx(path: Path, array: np.ndarray) -> None:
    import struct

    path.write_bytes(
        struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    )


def test_folders_of_clean_images_are_checked(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(create_model("resnet18", num_classes=10, in_channels=1, base_width=2).state_dict(), tmp_path / "w.pt")
    for i in range(11):  # one class too many for a 10-class model
        (tmp_path / "eleven" / f"c{i}").mkdir(parents=True)
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "eleven" / f"c{i}" / "0.png")
    base = [
        "defend",
        "--weights",
        tmp_path / "w.pt",
        "--arch",
        "resnet18",
        "--dataset",
        "fashion-mnist",
        "--model-arg",
        "base_width=2",
        "--method",
        "ft",
        "--clean-samples",
        "5",
    ]
    refused(
        capsys,
        *base,
        "--clean-dir",
        tmp_path / "eleven",
        "--out",
        tmp_path / "o",
        match="11 class folders, but a fashion-mnist model has 10 classes",
    )
    for i in range(10):
        (tmp_path / "bomb" / f"c{i}").mkdir(parents=True)
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "bomb" / f"c{i}" / "0.png")
    Image.new("L", (5000, 5000)).save(tmp_path / "bomb" / "c0" / "big.png")  # 25 M pixels, a few kB on disk
    refused(
        capsys,
        *base,
        "--clean-dir",
        tmp_path / "bomb",
        "--out",
        tmp_path / "o",
        match="5000x5000 pixels, more than bdprune decodes",
    )


@pytest.mark.parametrize("where", ["image", "wnids"])
def test_a_fifo_among_the_images_is_refused_without_blocking(tmp_path, where, capsys):
    from bdprune.data.folders import load_image_folder, load_tiny_imagenet_split

    torch.manual_seed(0)
    torch.save(create_model("resnet18", num_classes=10, in_channels=1, base_width=2).state_dict(), tmp_path / "w.pt")
    for i in range(10):
        (tmp_path / "clean" / f"c{i}").mkdir(parents=True)
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "clean" / f"c{i}" / "0.png")
    if where == "image":
        os.mkfifo(tmp_path / "clean" / "c3" / "x.png")  # a reader that opens it plainly blocks forever
        refused(
            capsys,
            "defend",
            "--weights",
            tmp_path / "w.pt",
            "--arch",
            "resnet18",
            "--dataset",
            "fashion-mnist",
            "--model-arg",
            "base_width=2",
            "--method",
            "ft",
            "--clean-samples",
            "5",
            "--clean-dir",
            tmp_path / "clean",
            "--out",
            tmp_path / "o",
            match="x.png is a pipe, not a regular file",
            within=10,
        )
        with pytest.raises(BdpruneError, match="is a pipe"):
            load_image_folder(tmp_path / "clean", grayscale=True)
    else:  # the lists of Tiny-ImageNet's layout are read the same way
        (tmp_path / "tiny").mkdir()
        os.mkfifo(tmp_path / "tiny" / "wnids.txt")
        with pytest.raises(BdpruneError, match="is a pipe"):
            load_tiny_imagenet_split(tmp_path / "tiny", train=True)


def test_dataset_files_are_read_without_blocking(tmp_path):
    from bdprune.data.cifar import read_batch
    from bdprune.data.idx import read_idx

    for name in ("train-images-idx3-ubyte", "data_batch_1"):
        os.mkfifo(tmp_path / name)
    with pytest.raises(BdpruneError, match="is a pipe"):
        read_idx(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(BdpruneError, match="is a pipe"):
        read_batch(tmp_path / "data_batch_1")


# -- 3. memory bombs: sizes are checked before anything is allocated -------------------------------------------
def test_a_read_asks_for_what_the_file_holds_not_for_the_limit(tmp_path):
    # f.read(limit + 1) reserved the whole limit first: 8 GiB per file, a MemoryError under any memory cap.
    (tmp_path / "small").write_bytes(b"x" * 1000)
    assert files.read_bytes(tmp_path / "small", limit=2**50) == b"x" * 1000  # a petabyte is never reserved
    with pytest.raises(BdpruneError, match="more than bdprune reads"):
        files.read_bytes(tmp_path / "small", limit=999)


@pytest.mark.parametrize("args", [{"base_width": 10**6}, {"num_classes": 10**11}, {"in_channels": 10**9}])
def test_declared_sizes_are_checked_against_the_weights_before_building(small_run, args):
    edit_sidecar(small_run, arch_args={**ARCH_ARGS, **args})
    start = time.perf_counter()
    with pytest.raises(BdpruneError, match="would hold .* numbers|does not fit the declared model"):
        load_checkpoint(small_run)
    assert time.perf_counter() - start < 5


def test_declared_sizes_that_fit_memory_but_not_the_weights_are_refused(small_run):
    edit_sidecar(small_run, arch_args={**ARCH_ARGS, "base_width": 64})
    with pytest.raises(BdpruneError, match="does not fit the declared model"):
        load_checkpoint(small_run)


def test_a_pt_file_that_would_expand_is_refused(tmp_path):
    torch.save({"w": torch.zeros(1000)}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, zipfile.ZipFile(tmp_path / "bomb.pt", "w") as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(BdpruneError, match="compressed entries"):
        files.load_state_dict_file(tmp_path / "bomb.pt")
    (tmp_path / "legacy.pt").write_bytes(b"\x80\x02}q\x00.")  # a bare pickle: the pre-1.6 format
    with pytest.raises(BdpruneError, match="not in torch's zip format"):
        files.load_state_dict_file(tmp_path / "legacy.pt")
    assert set(files.load_state_dict_file(tmp_path / "plain.pt")) == {"w"}


# -- 4. special files --------------------------------------------------------------------------------------------
def special(kind: str, path: Path) -> None:
    path.unlink(missing_ok=True)
    if kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "50 GB sparse file":
        with path.open("wb") as f:
            f.truncate(50 * 2**30)


@pytest.mark.parametrize("name", ["model.safetensors", "model.json", "attack.safetensors"])
@pytest.mark.parametrize("kind", ["link to /dev/zero", "FIFO", "directory", "50 GB sparse file"])
def test_special_files_are_refused_without_blocking(tmp_path, name, kind, capsys):
    attack = __import__("bdprune.attacks", fromlist=["create_attack"]).create_attack(
        "badnets", image_shape=(1, 8, 8), num_classes=3
    )
    save_checkpoint(
        tmp_path / "run", create_model("resnet18", **ARCH_ARGS), ModelCard("resnet18", dict(ARCH_ARGS)), attack=attack
    )
    special(kind, tmp_path / "run" / name)
    message = "more than bdprune reads" if kind == "50 GB sparse file" else "not a regular file"
    refused(capsys, "evaluate", tmp_path / "run", match=message, within=5)


@pytest.mark.parametrize("kind", ["link to /dev/zero", "FIFO", "directory"])
def test_a_special_weights_file_is_refused(tmp_path, kind, capsys):
    special(kind, tmp_path / "w.pt")
    refused(
        capsys,
        "defend",
        "--weights",
        tmp_path / "w.pt",
        "--arch",
        "resnet18",
        "--dataset",
        "fashion-mnist",
        "--method",
        "clp",
        "--out",
        tmp_path / "o",
        match="not a regular file",
        within=5,
    )


# -- 5. a missing checksum ------------------------------------------------------------------------------------------
def test_a_sidecar_without_its_checksum_is_refused(small_run, capsys):
    edit_sidecar(small_run, weights_sha256=...)
    refused(capsys, "evaluate", small_run, match="records no weights_sha256", within=5)


# -- 6. non-finite numbers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--u", "nan"], ["--u", "inf"], ["--u", "-1"], ["--defense-arg", "u=nan"]])
def test_non_finite_or_negative_thresholds_are_refused_at_once(small_run, tmp_path, args, capsys):
    refused(capsys, "defend", small_run, "--method", "bnp", "--out", tmp_path / "o", *args, match="u must be", within=5)
    assert not (tmp_path / "o").exists()


def test_non_finite_hyperparameters_are_refused_everywhere(tmp_path, capsys):
    from bdprune.attacks import create_attack
    from bdprune.defenses import create_defense

    for build in (
        lambda: create_defense("ft", lr=float("nan")),
        lambda: create_defense("anp", eps=float("inf")),
        lambda: create_attack("blended", image_shape=(1, 8, 8), num_classes=3, alpha=float("nan")),
    ):
        with pytest.raises(BdpruneError, match="finite"):
            build()


# -- 7. outputs: checked first, written all or nothing ---------------------------------------------------------------
def test_outputs_that_cannot_or_must_not_be_written_fail_at_once(small_run, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    for out, message in (
        (small_run, "would overwrite the input"),
        (small_run.parent, "would overwrite the input"),
        ("", "the output directory is empty"),
        (tmp_path / "a-file", "exists and is not a directory"),
        (tmp_path / "a-file" / "under", "is not a writable directory"),
        ("/dev/null", "exists and is not a directory"),
        ("/proc/bdprune-out", "creating a directory in /proc failed"),
        (tmp_path / "theirs", "a directory bdprune did not write"),
    ):
        refused(capsys, "defend", small_run, "--method", "bnp", "--out", out, match=message, within=5)
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "keep me"
    for command in (
        ["train", "--out", tmp_path / "a-file"],
        ["demo", "--out", tmp_path / "a-file"],
        ["compare", small_run, "--methods", "clp", "--out", small_run],
    ):
        refused(capsys, *command, match="", within=5)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_parent_fails_at_once(small_run, tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o555)
    refused(
        capsys,
        "defend",
        small_run,
        "--method",
        "clp",
        "--out",
        tmp_path / "ro" / "o",
        match="not a writable directory",
        within=5,
    )


def test_a_failed_write_leaves_no_half_written_output_and_keeps_the_old_one(small_run, tmp_path, monkeypatch):
    from bdprune import repair
    from bdprune.defenses import CLP, DefenseReport

    suspect = repair.load_suspect(small_run)
    data = DefenseData(image_shape=(1, 8, 8))
    first = repair.repair(suspect, CLP(), data, out_dir=tmp_path / "out")
    assert "report.json" in first.written
    (tmp_path / "out" / "stale.txt").write_text("from an old run")

    def disk_full(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DefenseReport, "save", disk_full)
    with pytest.raises(OSError):
        repair.repair(suspect, CLP.from_options(u=2), data, out_dir=tmp_path / "out")
    assert (tmp_path / "out" / "stale.txt").exists(), "the previous output is untouched"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no staging directory is left"
    monkeypatch.undo()
    repair.repair(suspect, CLP.from_options(u=2), data, out_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "stale.txt").exists(), "a re-run replaces the whole directory"
    assert json.loads((tmp_path / "out" / "report.json").read_text())["config"]["u"] == 2


def test_a_killed_write_leaves_only_a_hidden_partial_directory(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with files.staged_output(tmp_path / "out") as staging:
            (staging / "model.json").write_text("{}")
            raise KeyboardInterrupt  # a kill -9 would leave the staging directory, named as unfinished
    assert not (tmp_path / "out").exists()


# -- 8. images of the wrong size ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 2])
def test_clean_images_of_the_wrong_size_are_refused(size):
    images = ImageSet(torch.zeros(4, 1, size, size, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), ("a", "b"))
    with pytest.raises(BdpruneError, match="the model takes"):
        DefenseData(clean=images, image_shape=(1, 28, 28))


@pytest.mark.fashion_mnist
def test_the_library_gives_defenses_the_models_input_shape(tiny_run):
    from bdprune import repair

    data, _ = repair.defender_data(repair.load_suspect(tiny_run), {"clean"}, clean_samples=10)
    assert data.image_shape == (1, 28, 28)


# -- 9. a model with NaN weights ------------------------------------------------------------------------------------
def test_no_plot_is_claimed_that_was_not_written(small_run, tmp_path, capsys):
    ckpt = load_checkpoint(small_run)
    with torch.no_grad():
        for p in ckpt.model.parameters():
            p.fill_(float("nan"))
    save_checkpoint(tmp_path / "nan", ckpt.model, ModelCard("resnet18", dict(ARCH_ARGS)))
    code, err, _ = cli(capsys, "defend", tmp_path / "nan", "--method", "clp", "--out", tmp_path / "o")
    assert code == 0 and not (tmp_path / "o" / "neurons.png").exists()
    assert "neurons.png" not in err and "scores.png" in err


# -- 10. the foreign-model options of issue 13: typed, bounded, read without code -----------------------------------
@pytest.fixture
def foreign_weights(tmp_path) -> Path:
    torch.manual_seed(0)
    torch.save(create_model("resnet18", num_classes=10, in_channels=1, base_width=2).state_dict(), tmp_path / "w.pt")
    return tmp_path / "w.pt"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model-arg", "image_channels=0"], "image_channels must be >= 1"),
        (
            ["--model-arg", "in_channels=3", "--model-arg", "image_channels=2"],
            "images of 2 channels cannot feed a stem of 3",
        ),
        (["--model-arg", "image_channels=one"], "image_channels must be an integer or None"),
        (["--normalize", "none"], "carries its input normalisation in its weights"),
        (["--attack", "iab"], "is a learned attack"),
        (["--attack", "badnets", "--attack-arg", "size=-1"], "size must be >= 1"),
        (["--attack-arg", "size=3"], "name it with --attack"),
        (["--trigger-image", "t.png"], "needs its mask"),
        (["--trigger-image", "t.png", "--trigger-mask", "m.png", "--attack", "badnets"], "not both"),
    ],
)
def test_foreign_model_options_are_checked_in_one_line(foreign_weights, tmp_path, args, message, capsys):
    refused(
        capsys,
        "defend",
        "--weights",
        foreign_weights,
        "--arch",
        "resnet18",
        "--dataset",
        "fashion-mnist",
        "--model-arg",
        "base_width=2",
        "--method",
        "clp",
        "--out",
        tmp_path / "o",
        *args,
        match=message,
        within=10,
    )


def test_training_sets_and_triggers_from_files_are_bounded(foreign_weights, tmp_path, monkeypatch, capsys):
    from bdprune.data import arrays

    np.savez_compressed(
        tmp_path / "zeros.npz", images=np.zeros((2000, 28, 28), np.uint8), labels=np.zeros(2000, np.uint8)
    )
    monkeypatch.setattr(arrays, "MAX_FILE_BYTES", 2**20)  # the 1.5 MB inside stand for an 8 GB expansion
    Image.new("L", (5000, 5000)).save(tmp_path / "huge.png")  # 25 M pixels in a few kB
    Image.new("L", (28, 28)).save(tmp_path / "mask.png")
    base = [
        "defend",
        "--weights",
        foreign_weights,
        "--arch",
        "resnet18",
        "--dataset",
        "fashion-mnist",
        "--model-arg",
        "base_width=2",
        "--out",
        tmp_path / "o",
    ]
    refused(capsys, *base, "--method", "ep", "--train-data", tmp_path / "zeros.npz", match="would expand to more than")
    refused(
        capsys,
        *base,
        "--method",
        "clp",
        "--trigger-image",
        tmp_path / "huge.png",
        "--trigger-mask",
        tmp_path / "mask.png",
        match="5000x5000 pixels, more than bdprune decodes",
    )
    monkeypatch.undo()
    refused(
        capsys,
        *base,
        "--method",
        "ep",
        "--train-data",
        tmp_path / "zeros.npz",
        "--train-indices",
        "0:99999999",
        match="indices must lie in [0, 2000)",
    )
    assert not (tmp_path / "o").exists()
