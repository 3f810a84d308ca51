"""The `bdprune` command end to end on tiny runs: it parses, calls the library and prints."""

import json
import sys
import types

import pytest
import torch
from torch import nn

from bdprune.cli import build_parser, main, run_config


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "defend", "compare", "demo", "attacks"):
        assert command in out


def test_bad_input_gives_a_short_error_not_a_traceback(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: missing" in err and "Traceback" not in err
    assert (
        main(
            [
                "train",
                "--dataset",
                "fashion-mnist",
                "--data-dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    assert main(["train", "--attack", "badnetz", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "Did you mean 'badnets'" in capsys.readouterr().err
    assert main(["train", "--attack-arg", "sise=3", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "attack 'badnets' has no parameter sise; its parameters: target, mode, size" in capsys.readouterr().err
    assert main(["train", "--model-arg", "base_width=wide", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "base_width must be an integer, got 'wide'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_bug_is_not_dressed_as_a_user_error(monkeypatch, tmp_path):
    import bdprune.cli

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(bdprune.cli, "train_run", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["train", "--out", str(tmp_path / "o"), "--quiet"])


def test_attacks_command_lists_parameters(capsys):
    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    for text in (
        "wanet",
        "k=4",
        "s=0.5",
        "cross_ratio=2.0",
        "refool",
        "source='dead-leaves'",
        "preact-l2",
        "ml-mmd",
        "learned",
    ):
        assert text in out


@pytest.mark.fashion_mnist
def test_train_then_evaluate_on_real_fashion_mnist(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--attack",
            "badnets",
            "--width",
            "4",
            "--epochs",
            "1",
            "--train-subset",
            "600",
            "--rate",
            "0.2",
            "--seed",
            "3",
            "--out",
            str(out),
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "model.json", "metrics.json", "attack.safetensors"}
    card = json.loads((out / "model.json").read_text())
    assert card["run"]["config"]["seed"] == 3 and len(card["run"]["poisoned_indices"]) == 120
    assert card["arch_args"]["base_width"] == 4 and card["attack"]["name"] == "badnets"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["acc"] <= 100 and 0 <= metrics["asr"] <= 100
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", str(tmp_path / "eval.json"), "--quiet"]) == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["acc"] == pytest.approx(metrics["acc"]) and evaluation["asr"] == pytest.approx(metrics["asr"])
    assert (
        evaluation["backdoor_loss"] == pytest.approx(metrics["backdoor_loss"])
        and len(evaluation["per_class_acc"]) == 10
    )


@pytest.mark.fashion_mnist
@pytest.mark.parametrize(
    "method, options",
    [
        ("bnp", ["--clean-samples", "100", "--rule", "guarded", "--defense-arg", "max_change=2"]),
        ("ep", ["--rule", "iterative", "--u", "3.5"]),
    ],
)
def test_defend_writes_model_report_plots_and_metrics(tiny_run, tmp_path, method, options, capsys):
    out = tmp_path / method
    assert main(["defend", str(tiny_run), "--method", method, "--out", str(out), "--quiet", *options]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "model.json", "report.json", "metrics.json", "scores.png"} <= names
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == method and report["samples"] == (100 if method == "bnp" else 800)
    assert report["config"]["rule"] == ("guarded" if method == "bnp" else "iterative")
    assert method != "bnp" or (report["config"]["max_change"] == 2 and "guard" in report["extra"])
    pruned = sum(len(layer["pruned"]) for layer in report["layers"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"before", "after"} and 0 <= metrics["after"]["asr"] <= 100
    # the repaired model loads and evaluates like any run, with its pruned neurons silenced
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", str(tmp_path / "e.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["acc"] == pytest.approx(metrics["after"]["acc"])
    card = json.loads((out / "model.json").read_text())
    assert card.get("defense", {}).get("method") == method and pruned == card["defense"]["num_pruned"]


@pytest.mark.fashion_mnist
def test_defend_refuses_options_that_do_not_apply(tiny_run, tmp_path, capsys):
    for option in (["--estimator", "kde"], ["--u", "3"]):
        assert main(["defend", str(tiny_run), "--method", "ft", *option, "--out", str(tmp_path / "x"), "--quiet"]) == 2
        assert "defense 'ft' has no parameter" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written


@pytest.mark.fashion_mnist
def test_compare_and_defend_clp_on_a_tiny_saved_run(tiny_run, tmp_path, capsys):
    fast = ["ft.epochs=1", "fp.epochs=1", "nad.teacher_epochs=1", "nad.epochs=1", "anp.iterations=3"]
    args = [
        "compare",
        str(tiny_run),
        "--methods",
        "ft,fp,linf,nad,anp,clp,ep,bnp",
        "--clean-samples",
        "40",
        "--test-samples",
        "300",
        "--out",
        str(tmp_path / "cmp"),
        "--quiet",
        "--device",
        "cpu",
    ]
    for item in fast:
        args += ["--defense-arg", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]
    assert [r["defense"] for r in rows] == ["none", "ft", "fp", "linf", "nad", "anp", "clp", "ep", "bnp"]
    for row in rows:
        assert 0 <= row["ACC %"] <= 100 and 0 <= row["ASR %"] <= 100
        assert row["defense"] in out
    assert all(r["time s"] > 0 for r in rows[1:])
    assert {r["defense"]: r["samples"] for r in rows}["ep"] == 800
    assert {r["defense"]: r["samples"] for r in rows}["anp"] == 40
    assert (tmp_path / "cmp" / "comparison.md").read_text().startswith("| defense |")
    assert (tmp_path / "cmp" / "reports" / "anp.json").is_file()

    assert (
        main(["defend", str(tiny_run), "--method", "clp", "--out", str(tmp_path / "clp"), "--quiet", "--no-plots"]) == 0
    )
    assert json.loads((tmp_path / "clp" / "metrics.json").read_text())["samples"] == 0
    capsys.readouterr()
    assert main(["compare", str(tiny_run), "--methods", "ft,magic", "--quiet"]) == 2
    assert "unknown defense 'magic'" in capsys.readouterr().err


class ForeignNet(nn.Module):
    def __init__(self, num_classes=10, in_chans=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.stem(x).mean(dim=(2, 3)))


@pytest.mark.fashion_mnist
def test_defend_a_foreign_state_dict_from_a_weights_only_pt_file(monkeypatch, tmp_path):
    timm = types.ModuleType("timm")
    timm.create_model = lambda name, pretrained=False, num_classes=1000, in_chans=3: ForeignNet(num_classes, in_chans)
    timm.is_model = lambda name: name == "foreign"
    monkeypatch.setitem(sys.modules, "timm", timm)
    weights = tmp_path / "foreign.pt"
    torch.save(ForeignNet(10, 1).state_dict(), weights)
    out = tmp_path / "out"
    assert (
        main(
            [
                "defend",
                "--weights",
                str(weights),
                "--arch",
                "timm:foreign",
                "--dataset",
                "fashion-mnist",
                "--method",
                "bnp",
                "--clean-samples",
                "64",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["samples"] == 64 and [layer["name"] for layer in report["layers"]] == ["model.stem.1"]


@pytest.mark.fashion_mnist
def test_train_with_attack_args_parsed_by_their_declared_types(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--attack",
        "refool",
        "--width",
        "2",
        "--epochs",
        "1",
        "--train-subset",
        "300",
        "--rate",
        "0.2",
        "--out",
        str(out),
        "--cache-dir",
        "none",
        "--quiet",
        "--device",
        "cpu",
    ]
    for item in ("count=20", "alpha_range=0.6,0.9", "ghost_rate=1"):
        args += ["--attack-arg", item]
    assert main(args) == 0
    params = json.loads((out / "model.json").read_text())["attack"]["params"]
    assert params["count"] == 20 and params["alpha_range"] == [0.6, 0.9] and params["ghost_rate"] == 1.0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--quiet"]) == 0


@pytest.mark.parametrize("augment", ["flip", "crop+flip", "none"])
def test_train_options_that_name_run_fields_reach_the_run_config(augment):
    # --augment is a field of both the run (a name) and the training loop (an Augment): it must go to the run
    args = build_parser().parse_args(["train", "--augment", augment, "--epochs", "3", "--width", "8", "--out", "o"])
    config = run_config(args)
    assert config.augment == augment and config.train.epochs == 3 and config.model_args["base_width"] == 8
