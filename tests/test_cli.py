import json

import pytest

from bdprune.cli import main

from conftest import requires_fashion_mnist


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate"):
        assert command in out


def test_bad_input_gives_a_short_error_not_a_traceback(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: missing" in err and "Traceback" not in err
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    assert main(["train", "--attack", "badnetz", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "Did you mean 'badnets'" in capsys.readouterr().err


@requires_fashion_mnist
def test_train_then_evaluate_on_real_fashion_mnist(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--attack", "badnets", "--width", "4", "--epochs", "1", "--train-subset", "600",
                 "--rate", "0.2", "--seed", "3", "--out", str(out), "--quiet", "--device", "cpu"])
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
    assert len(evaluation["per_class_acc"]) == 10
