"""The demo end to end on a tiny setting."""

import json

import pytest

from bdprune.cli import main


@pytest.mark.fashion_mnist
def test_demo_runs_end_to_end_on_a_tiny_setting(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--width", "4", "--epochs", "1", "--train-subset", "600", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    labels = [row["model"] for row in summary["table"]]
    assert labels[0] == "backdoored" and {"EP", "BNP", "EP paper", "BNP paper"} <= set(labels)
    printed = capsys.readouterr().out
    assert "ASR %" in printed and "k* = " in printed
    assert "k_star" in summary and (out / "concentration.png").is_file()
    for key in ("ep", "bnp", "ep-paper", "bnp-paper"):
        assert (out / key / "report.json").is_file() and summary["defenses"][key]["after"]["acc"] > 0
    # one source of truth: the configuration the model was trained with, as its sidecar records it
    card = json.loads((out / "backdoored" / "model.json").read_text())
    assert summary["run"] == card["run"]["config"]
    assert summary["run"]["train"]["augment"] == {"pad": 0, "flip": True}, "the cpu preset trains with flips only"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging directory is left"
