"""The reproduction end to end on the "micro" preset (Fashion-MNIST, 200 training images, width 2): cells run,
records and report appear, a second run redoes nothing, a killed run loses nothing, sweeps choose on held-out
samples, a diverged training is a NaN result, figures are drawn."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bdprune.cli import main
from bdprune.experiments.reproduce import reproduce
from bdprune.experiments.reproduce.cells import train_cell
from bdprune.experiments.reproduce.experiments import build_grid, defend
from bdprune.experiments.reproduce.store import Store
from bdprune.experiments.reproduce.work import Context, draw_reserve, execute, load_run

pytestmark = [pytest.mark.fashion_mnist, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))}


def test_table3_runs_reports_and_resumes_without_redoing(micro, tmp_path):
    out = tmp_path / "repro"
    seen = []
    summary = reproduce(["table3"], preset="micro", out=out, on_done=lambda o, p: seen.append((o, p.eta())))
    assert summary.cells == 9 and not summary.failed and len(seen) == 9 and seen[-1][1] == 0
    first = records(out)
    assert len(first) == 9 and all(r["status"] == "ok" for r in first.values())
    run = next(r for r in first.values() if r["cell"]["kind"] == "train")
    assert (Path(run["model"]) / "model.safetensors").is_file() and "acc" in run["metrics"]
    ep = next(r for r in first.values() if r["cell"]["col"] == "EP")
    assert ep["metrics"]["samples"] == 20 and Path(ep["report"]).is_file()  # max_samples = the clean count
    assert ep["code"]["bdprune"] and ep["cell"]["experiment"] == "table3"
    text = (out / "report.md").read_text()
    assert "| time (s) |" in text and "*(10.69†)*" in text  # ours beside the paper's, marked: not its setting

    again = reproduce(["table3"], preset="micro", out=out)
    assert again.skipped_done == 9 and again.outcomes == []
    assert records(out) == first

    victim = next(k for k, r in first.items() if r["cell"]["col"] == "BNP")
    (out / "records" / f"{victim}.json").unlink()
    third = reproduce(["table3"], preset="micro", out=out)
    assert [o.cell.key for o in third.outcomes] == [victim]

    # the records alone (committed; models stay out of git): nothing is retrained while every cell is done,
    # and a cell still to run gets its model trained again first
    restored = tmp_path / "restored"
    shutil.copytree(out / "records", restored / "records")
    assert reproduce(["table3"], preset="micro", out=restored).outcomes == []
    (restored / "records" / f"{victim}.json").unlink()
    fourth = reproduce(["table3"], preset="micro", out=restored)
    assert [o.cell.kind for o in fourth.outcomes] == ["train", "defend"] and not fourth.failed
    assert (restored / "runs" / run["cell"]["spec"]["run"] / "model.safetensors").is_file()


def test_a_killed_run_is_completed_by_the_next_without_redoing_cells(micro, tmp_path):
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "tests" / "experiments")!r})
        import torch
        torch.set_num_threads(1)
        from conftest import MICRO
        from bdprune.experiments.reproduce import presets, reproduce
        presets.REPRODUCTION_PRESETS["micro"] = MICRO
        reproduce(["table6"], preset="micro", out={str(out)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "records").glob("*.json"))) < 4 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = records(out)
    assert 4 <= len(before) < 11, "the run was not interrupted halfway"
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    summary = reproduce(["table6"], preset="micro", out=out)
    assert summary.skipped_done == len(before) and len(summary.outcomes) == 11 - len(before) and not summary.failed
    after = records(out)
    assert len(after) == 11 and all(after[k] == v for k, v in before.items())
    assert all(p.stat().st_mtime_ns == mtimes[p.name] for p in (out / "records").glob("*.json") if p.name in mtimes)
    assert not list((out / "runs").glob(".*.partial"))  # a killed training leaves no half run behind


def test_sweeps_choose_on_held_out_reserve_samples_and_curves_read_the_test_set(micro, tmp_path):
    out = tmp_path / "sweep"
    grid = build_grid(["table7", "fig9"], {"main": micro.roles["main"][0]}, micro, [0])
    cells = [
        c
        for c in grid
        if c.col in ("BadNets (A2O)", "EP", "BNP", "ANP")
        and ((c.kind == "sweep" and c.row == "BadNets (A2O)") or (c.kind == "train" and c.col == "BadNets (A2O)"))
    ]
    context = Context(str(out))
    results = {(c.experiment, c.col): execute(c, context) for c in cells}
    for method in ("EP", "BNP", "ANP"):
        chosen = results[("table7", method)]
        assert chosen["evaluated_on"].startswith("held-out reserve (60 samples")
        good = [p for p in chosen["points"] if p["asr"] < 10.0]
        if good:
            assert chosen["chosen"]["pruned"] == min(p["pruned"] for p in good)
            assert chosen["metrics"]["pruned"] == chosen["chosen"]["pruned"]
        else:
            assert chosen["metrics"]["asr"] is None and "no grid value" in chosen["note"]
    curve = results[("fig9", "EP")]
    assert curve["evaluated_on"] == "test (200 samples)" and [p["value"] for p in curve["points"]] == list(micro.u_grid)
    counts = [p["pruned"] for p in curve["points"]]
    assert counts == sorted(counts)  # a lower u prunes at least as many neurons
    # the held-out samples are reserve samples, disjoint from the defender's clean samples
    store = Store(out)
    run_cell = next(c for c in cells if c.kind == "train")
    probe = next(c for c in cells if c.kind == "sweep")
    _, data = load_run(probe, context, store)
    clean, held = draw_reserve(data.reserve, 20, 0, 60)
    assert not set(clean.indices.tolist()) & set(held.indices.tolist())
    assert set(held.indices.tolist()) <= set(data.reserve.indices.tolist())
    assert run_cell.spec["run"] in str(curve["model"])


def test_a_diverged_training_is_a_nan_result_and_its_cells_say_so(micro, tmp_path):
    setting = micro.roles["main"][0]
    config = setting.run_config("badnets", 0).with_train(lr=1e30)
    run = train_cell("table8", "model", "lambda = 1", config)
    context = Context(str(tmp_path))
    assert execute(run, context)["status"] == "diverged"
    cell = defend("table8", setting, micro, run, "ep", "EP", "lambda = 1")
    assert execute(cell, context)["status"] == "no-model"
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # nothing half-trained


def test_figures_and_probe_cells(micro, tmp_path):
    out = tmp_path / "figs"
    summary = reproduce(["fig2", "fig7", "samples"], preset="micro", out=out)
    assert not summary.failed, [o.error for o in summary.failed]
    fig7 = next(r for r in records(out).values() if r["cell"]["kind"] == "sensitivity")
    layer = fig7["layers"][0]
    assert len(layer["gain"]) == len(layer["entropy"]) == len(layer["kl"])
    assert -1 <= fig7["metrics"]["spearman_gain_vs_kl"] <= 1
    fig2 = next(r for r in records(out).values() if r["cell"]["kind"] == "distributions")
    assert [e["role"] for e in fig2["histograms"]] == ["benign", "backdoor"] and "values" in fig2["gaussians"][0]
    assert abs(fig2["histograms"][1]["z"]) >= abs(fig2["histograms"][0]["z"])
    for name in ("fig2", "fig7", "samples"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    text = (out / "report.md").read_text()
    assert "![fig7](figures/fig7.png)" in text and "Spearman" in text


def test_cli_reproduce(micro, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["reproduce", "table3", "--preset", "micro", "--out", str(out), "--quiet", "--dry-run"]) == 0
    assert "train" in capsys.readouterr().out and not (out / "records").exists()
    assert main(["reproduce", "table3,table6", "--preset", "micro", "--out", str(out), "--quiet", "--seeds", "0"]) == 0
    err = capsys.readouterr().err
    assert "[ 1/18] train" in err and "ETA" in err  # 9 + 11 cells, sharing the run and BNP on it
    assert main(["reproduce", "table3", "--preset", "micro", "--out", str(out), "--report-only"]) == 0
    assert main(["reproduce", "table3", "--preset", "cpu", "--out", str(out)]) == 2
    assert "another --out" in capsys.readouterr().err
    assert main(["reproduce", "table99", "--preset", "micro", "--out", str(tmp_path / "x")]) == 2
    assert main(["reproduce", "table3", "--preset", "micro", "--out", str(out), "--seeds", "a"]) == 2


def test_a_failing_cell_is_recorded_its_dependants_skipped_and_retried_next_time(micro, tmp_path, capsys):
    out = tmp_path / "fail"
    missing = {"fashion-mnist": str(tmp_path / "nowhere")}
    summary = reproduce(["table3"], preset="micro", out=out, data_dirs=missing)
    assert [o.status for o in summary.outcomes] == ["failed"] + ["skipped"] * 8
    assert "DatasetNotFoundError" in summary.outcomes[0].error and "its run" in summary.outcomes[1].error
    errors = list((out / "errors").glob("*.json"))
    assert len(errors) == 1 and "Traceback" in json.loads(errors[0].read_text())["error"]
    assert not (out / "records").exists() or not list((out / "records").iterdir())
    assert "1 failed (tracebacks in errors/" in (out / "report.md").read_text()
    code = main(
        [
            "reproduce",
            "table3",
            "--preset",
            "micro",
            "--out",
            str(out),
            "--quiet",
            "--data-dir",
            f"fashion-mnist={tmp_path / 'nowhere'}",
        ]
    )
    assert code == 1 and "failed: table3" in capsys.readouterr().err
