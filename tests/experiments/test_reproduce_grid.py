"""The reproduction's plan, without training: presets follow `bdprune.config`, runs are shared by their
configuration, cells have stable identities, the store never holds half a record, the report formats
honestly, and the paper's numbers are transcribed whole."""

import dataclasses
import json
import math

import pytest

from bdprune import config as run_configs
from bdprune.errors import InvalidInput, UnknownName
from bdprune.experiments.reproduce import EXPERIMENTS, expand, presets
from bdprune.experiments.reproduce.cells import Cell
from bdprune.experiments.reproduce.experiments import build_grid
from bdprune.experiments.reproduce.paper import PAPER, paper_value
from bdprune.experiments.reproduce.report import entry
from bdprune.experiments.reproduce.store import Store


def settings(preset):
    return {role: candidates[0] for role, candidates in preset.roles.items()}


def grid(names, preset_name="cpu", seeds=(0,)):
    preset = presets.get_preset(preset_name)
    return build_grid(list(names), settings(preset), preset, list(seeds))


def test_the_cpu_preset_follows_bdprune_config_by_reference(monkeypatch):
    changed = dataclasses.replace(
        run_configs.PRESETS["cpu"], train=dataclasses.replace(run_configs.PRESETS["cpu"].train, epochs=7)
    )
    before = presets.CPU.run_config("badnets", 0)
    monkeypatch.setitem(run_configs.PRESETS, "cpu", changed)
    after = presets.CPU.run_config("badnets", 0)
    assert after.train.epochs == 7 and before.train.epochs != 7
    assert presets.run_key(after) != presets.run_key(before)


def test_run_configs_rates_and_attack_options():
    cpu = presets.CPU
    assert cpu.run_config("badnets", 3, rate=0.05).rate == 0.05
    assert cpu.run_config("cla", 0, rate=0.05).rate == pytest.approx(0.5)  # clean-label: rho x classes of the target
    assert cpu.run_config("cla", 0, rate=0.1).rate == 1.0
    smoke = presets.SMOKE.run_config("ssba", 0)
    assert smoke.attack_params == {k: v for k, v in presets.SMOKE_FITS.items() if k in ("width", "bits", "fit_steps")}
    assert presets.SMOKE.run_config("blended", 0).attack_params == {}  # only what the attack declares
    tiny = presets.PAPER_TINY.run_config("blended", 0)  # the base's 5x5 patch does not reach the blend
    assert tiny.attack_params == {} and presets.PAPER_TINY.run_config("badnets", 0).attack_params == {"size": 5}
    # where the data lies is not part of a run's identity
    a = cpu.run_config("badnets", 0)
    b = dataclasses.replace(a, data_dir="/elsewhere")
    assert presets.run_key(a) == presets.run_key(b)


def test_runs_and_cells_are_shared_across_experiments():
    t1, t7, t4 = grid(["table1"]), grid(["table7"]), grid(["table4"])
    runs = lambda cells: {c.spec["run"] for c in cells if c.kind == "train"}
    badnets_1 = next(c for c in t1 if c.kind == "train" and c.col == "BadNets (A2O)")
    assert badnets_1.spec["run"] in runs(t7) and badnets_1.spec["run"] in runs(t4)
    both = grid(["table1", "table4"])
    assert len(both) == len({c.key for c in t1} | {c.key for c in t4})  # the 10% rows are table1's cells
    assert len(runs(both)) == len(runs(t1)) + 2 * 7  # table4 adds the 1% and 5% runs of its 7 attacks
    every = grid(list(EXPERIMENTS))
    assert len({c.key for c in every}) == len(every)


def test_every_cell_follows_its_training_and_keys_are_stable():
    cells = grid(["table1", "fig9"], seeds=(0, 1))
    trained = set()
    for c in cells:
        if c.kind == "train":
            trained.add(c.spec["run"])
        else:
            assert set(c.needs) <= trained
    again = grid(["table1", "fig9"], seeds=(0, 1))
    assert [c.key for c in cells] == [c.key for c in again]
    assert Cell.from_dict(json.loads(json.dumps(cells[3].to_dict()))).key == cells[3].key
    seeds = {c.seed for c in cells}
    assert seeds == {0, 1}


def test_table1_grid_is_8_attacks_by_8_defenses_plus_origin_the_papers_rule_and_the_repairs():
    cells = grid(["table1"], "smoke")
    defend = [c for c in cells if c.kind == "defend"]
    assert len({c.col for c in defend}) == 8 and len({c.row for c in defend}) == 14
    assert {c.row for c in defend} == {
        "Origin",
        "FT",
        "FP",
        "l-inf",
        "NAD",
        "ANP",
        "EP",
        "BNP",
        "CLP",
        "EP (paper's rule)",
        "BNP (paper's rule)",
        "EP (prune only)",
        "BNP (prune only)",
        "FT-SAM",
    }
    assert sum(c.kind == "train" for c in cells) == 8
    paper_rule = [c for c in defend if c.row.endswith("(paper's rule)")]
    assert all(c.spec["params"]["rule"] == "zscore" and c.spec["params"]["u"] == 3.0 for c in paper_rule)
    assert all(c.spec["params"]["max_harm"] is None for c in paper_rule)  # the paper's rule has no held-out check
    # the library defaults, resolved into the cell's key: a store never serves a result of older defaults
    assert {c.spec["params"]["rule"] for c in defend if c.row == "EP"} == {"consensus"}
    assert {c.spec["params"]["rule"] for c in defend if c.row == "BNP"} == {"guarded"}
    assert {c.spec["params"]["then"] for c in defend if c.row.startswith("BNP")} == {"synth", "none"}


def test_u_sweeps_and_the_paper_preset_use_the_papers_rule():
    for c in grid(["table7", "fig9"]):
        if c.kind == "sweep" and c.spec["method"] != "anp":
            assert c.spec["params"]["rule"] == "zscore"
    paper = [c for c in grid(["table1"], "paper") if c.kind == "defend" and c.spec["defense"] in ("ep", "bnp")]
    assert paper and all(c.spec["params"]["rule"] == "zscore" for c in paper)


def test_no_cell_chooses_with_the_test_set():
    """Table 7 chooses on held-out reserve samples; its grid asks for them, disjoint from the clean ones."""
    for c in grid(["table7"]):
        if c.kind == "sweep":
            assert c.spec["mode"] == "smallest" and c.spec["val_samples"] > 0
    for c in grid(["fig9"]):
        if c.kind == "sweep":
            assert c.spec["mode"] == "curve"


def test_expand_and_unknown_names():
    assert expand(["all"]) == list(EXPERIMENTS)
    assert expand(["table1", "table1", "fig9"]) == ["table1", "fig9"]
    with pytest.raises(UnknownName, match="known: table1"):
        expand(["table10"])
    with pytest.raises(UnknownName):
        presets.get_preset("huge")


def test_store_register_keeps_one_preset_and_unions_seeds(tmp_path):
    store = Store(tmp_path)
    store.register("cpu", ["table1"], [0])
    manifest = store.register("cpu", ["table1", "fig9"], [1, 0])
    assert manifest["experiments"]["table1"]["seeds"] == [0, 1] and manifest["experiments"]["fig9"]["seeds"] == [0, 1]
    with pytest.raises(InvalidInput, match="another --out"):
        store.register("smoke", ["table1"], [0])


def test_a_record_is_whole_or_absent(tmp_path, monkeypatch):
    store = Store(tmp_path)
    cell = grid(["table3"], "smoke")[1]
    import bdprune.files as files

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.put({"key": cell.key, "status": "ok"})
    monkeypatch.undo()
    assert not store.done(cell.key) and list((tmp_path / "records").iterdir()) == []
    store.put({"key": cell.key, "status": "ok"})
    assert store.done(cell.key) and store.get(cell.key)["status"] == "ok"


def record(status="ok", **metrics):
    return {"status": status, "metrics": metrics}


def test_report_entries():
    assert entry([record(acc=90.0), record(acc=92.0)], "acc", 2) == "91.00 ± 1.41"
    assert entry([record(acc=90.0), None], "acc", 2) == "90.00 (n=1)"
    assert entry([None], "acc", 1) == "·"
    assert entry([record("diverged")], "acc", 1) == "NaN"
    assert entry([{"status": "ok", "metrics": {"acc": None}, "note": "no grid value"}], "acc", 1) == "n/r"
    assert entry([record(pruned=3), record(pruned=4)], "pruned", 2) == "4 ± 1"


def test_the_papers_tables_are_transcribed_whole():
    sizes = {name: len(table) for name, (_, table, _) in PAPER.items()}
    assert sizes == {
        "table1": 8 * 7,
        "table2": 8 * 7,
        "table3": 6,
        "table4": 9 * 7,
        "table5": 7 * 3,
        "table6": 2 * 5,
        "table7": 8 * 3,
        "table8": 4 + 2 * 2,
        "table9": 3 * 2,
    }
    assert paper_value("table1", "EP", "BadNets (A2O)", "asr") == 0.86
    assert paper_value("table2", "BNP", "SSBA", "acc") == 64.64
    assert paper_value("table7", "BadNets (A2A)", "ANP", "pruned") == 235
    assert math.isnan(paper_value("table8", "Origin", "lambda = 1", "acc"))
    assert paper_value("table8", "EP", "lambda = 1", "acc") is None  # blank in the paper
    # every row and column of the paper's tables is one our grids produce (so the numbers land beside ours)
    for name, (_, table, _) in PAPER.items():
        cells = [c for c in grid([name]) if c.kind != "train"]
        rows, cols = {c.row for c in cells}, {c.col for c in cells}
        missing = {k for k in table if k[0] not in rows or k[1] not in cols}
        assert not missing, (name, sorted(missing)[:3])


def test_the_ray_executor_without_ray_says_how_to_get_it(monkeypatch, tmp_path):
    import sys

    from bdprune.experiments.reproduce.executors import run_ray
    from bdprune.experiments.reproduce.work import Context

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InvalidInput, match=r"pip install 'bdprune\[ray\]'"):
        run_ray(grid(["table3"], "smoke"), Context(str(tmp_path)), lambda o, p: None)


def test_progress_lines_and_eta():
    from bdprune.cli.reproduce import duration, progress_line
    from bdprune.experiments.reproduce.executors import Outcome, Progress

    cells = grid(["table3"], "smoke")
    progress = Progress.of(cells)
    assert progress.eta() is None
    progress.finish(cells[0].cost_class, 100.0)
    progress.finish(cells[1].cost_class, 2.0)  # FT
    assert progress.eta() == pytest.approx(7 * 2.0)  # seven defend cells left, at the mean of defend cells
    progress.finish(cells[2].cost_class, 9.0)  # FP
    assert progress.eta() == pytest.approx(6 * 5.5)
    progress.workers = 2
    assert progress.eta() == pytest.approx(6 * 5.5 / 2)
    outcome = Outcome(cells[1], "done", 2.0, {"status": "ok", "metrics": {"acc": 91.234, "asr": 1.5, "pruned": 3}})
    line = progress_line(outcome, progress)
    assert line.startswith("[3/9] defend") and "ACC 91.23  ASR 1.50  pruned 3" in line and line.endswith("ETA 16 s")
    assert [duration(s) for s in (None, 5, 600, 4000)] == ["?", "5 s", "10 min", "1 h 07 min"]


def test_an_option_whose_default_changes_nothing_stays_out_of_a_cells_key():
    """EP's kept_statistics came after cells were stored; at its default (EP's unlearning as it was) a store keeps
    serving them; set, it is a different cell."""
    from bdprune.experiments.reproduce.experiments import NEUTRAL_DEFAULTS, resolved

    plain = resolved("ep", {})
    assert "kept_statistics" not in plain and "retention" in plain  # the other defaults are filled in
    assert resolved("ep", {"kept_statistics": False}) == plain
    assert resolved("ep", {"kept_statistics": True})["kept_statistics"] is True
    assert "kept_statistics" not in resolved("bnp", {})
    assert NEUTRAL_DEFAULTS == {"kept_statistics": False, "stamp": True}
    assert "stamp" not in plain and resolved("ep", {"stamp": False})["stamp"] is False
