"""The report reads well to a person: wide tables split into parts that fit a page, failed cells marked with
why, every figure titled, labelled and linked. Records are written into a temporary store by hand (nothing trains)."""

import traceback

import pytest

from bdprune.experiments.reproduce import EXPERIMENTS, figures, presets
from bdprune.experiments.reproduce.experiments import build_grid
from bdprune.experiments.reproduce.report import column_parts, error_line, grid_table, write_report
from bdprune.experiments.reproduce.store import Store

SMOKE = presets.get_preset("smoke")
SETTINGS = {role: candidates[0] for role, candidates in SMOKE.roles.items()}


def table(name, store, seeds=(1,)):
    cells = build_grid([name], SETTINGS, SMOKE, list(seeds))
    return cells, grid_table(EXPERIMENTS[name], cells, store, list(seeds), SETTINGS["main"].paper_dataset)


def parts(text):
    """{heading: [the table's lines]} of a grid table's Markdown."""
    out, heading = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            heading = line[4:]
        elif line.startswith("|"):
            out.setdefault(heading, []).append(line)
    return out


def cell_of(lines, row, column):
    """The text of (row, column) in a Markdown table's lines."""
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        values = [v.strip() for v in line.strip("|").split("|")]
        if values[0] == row:
            return values[header.index(column)]
    raise KeyError(row)


def failed(exc):
    try:
        raise exc
    except type(exc) as raised:
        return raised


def test_a_wide_table_is_split_into_parts_of_at_most_4_attacks_each_with_every_row(tmp_path):
    cells, text = table("table1", Store(tmp_path))
    split = parts(text)
    rows = list(dict.fromkeys(c.row for c in cells if c.kind != "train"))
    attacks = list(dict.fromkeys(c.col for c in cells if c.kind != "train"))
    assert len(split) == 2 and None not in split
    seen = []
    for heading, lines in split.items():
        header = [h.strip() for h in lines[0].strip("|").split("|")][1:]
        columns = list(dict.fromkeys(h.rsplit(" ", 1)[0] for h in header))
        assert len(header) <= 8 and len(columns) <= 4 and heading.endswith(", ".join(columns))
        assert [line.strip("|").split("|")[0].strip() for line in lines[2:]] == rows  # every row in every part
        seen += columns
    assert sorted(seen) == sorted(attacks)
    assert next(iter(split)).startswith("Local triggers") and seen[:4] == [
        "BadNets (A2O)",
        "BadNets (A2A)",
        "CLA",
        "IAB",
    ]
    # the paper's numbers and the unfinished mark as before
    assert cell_of(split[next(iter(split))], "Origin", "BadNets (A2O) ACC") == "· *(93.86†)*"
    # a table without column groups is cut into runs; a narrow one stays whole
    assert [c for _, c in column_parts(EXPERIMENTS["table6"], ["Origin", "CJ", "SAP", "PW", "Snow"])] == [
        ["Origin", "CJ", "SAP"],
        ["PW", "Snow"],
    ]
    assert column_parts(EXPERIMENTS["table8"], ["a", "b", "c", "d"]) == [("", ["a", "b", "c", "d"])]


def test_a_failed_cell_is_marked_and_the_note_under_its_part_says_why(tmp_path):
    store = Store(tmp_path)
    cells = build_grid(["table1"], SETTINGS, SMOKE, [1])
    ft = next(c for c in cells if c.row == "FT" and c.col == "BadNets (A2O)")
    store.fail(ft, failed(ValueError("boom\nmore about it")))
    ssba = next(c for c in cells if c.kind == "train" and c.col == "SSBA")
    store.fail(ssba, "DatasetNotFoundError: no SSBA data")  # its cells were skipped: they have no error of their own
    ok = next(c for c in cells if c.row == "EP" and c.col == "CLA")
    store.put({"key": ok.key, "status": "ok", "metrics": {"acc": 91.0, "asr": 2.0}})
    _, text = table("table1", store)
    local, whole = parts(text).values()
    assert cell_of(local, "FT", "BadNets (A2O) ACC") == "✗1 *(92.22†)*"
    assert "- ✗1 FT | BadNets (A2O), seed 1: ValueError: boom\n" in text
    assert cell_of(whole, "CLP", "SSBA ASR") == "✗2" and cell_of(whole, "EP", "SSBA ACC") == "✗2"
    assert "- ✗2 model | SSBA, seed 1 failed to train, so its cells did not run: DatasetNotFoundError" in text
    assert text.index("- ✗1") < text.index("### Whole") < text.index("- ✗2")  # each note under its own part
    assert cell_of(local, "EP", "CLA ACC") == "91.00 *(94.42†)*"
    assert cell_of(local, "FP", "BadNets (A2O) ACC") == "· *(92.18†)*"  # unfinished, not failed


def test_the_error_line_is_what_went_wrong():
    local = "".join(traceback.format_exception(failed(KeyError("layer4"))))
    assert error_line(local) == "KeyError: 'layer4'"
    ray = 'ray::_remote_execute() (pid=7, ip=1.2.3.4)\n  File "w.py", line 3, in f\n    g()\n\x1b[31mOSError: disk full\x1b[0m'
    assert error_line(ray) == "OSError: disk full"
    assert error_line("\nThe worker died unexpectedly\nmore") == "The worker died unexpectedly"
    assert len(error_line("x" * 1000)) == 200


@pytest.fixture
def drawn(monkeypatch):
    """The figures that figures.py draws, kept open instead of saved."""
    kept = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: kept.append(fig) or path)
    yield kept
    for fig in kept:
        figures.pyplot().close(fig)


def test_every_figure_has_a_title_axis_labels_and_a_legend(tmp_path, drawn):
    histogram = {"layer": "layer1", "channel": 0, "z": 2.0, "edges": [0, 1, 2], "groups": ["benign", "poisoned"]}
    gaussian = {"layer": "layer1", "channel": 0, "z": 2.0, "clean_mean": 0.0, "clean_var": 1.0}
    figures.figure2(
        {
            "histograms": [{**histogram, "role": r, "counts": [[3, 1], [1, 3]]} for r in ("benign", "backdoor")],
            "gaussians": [
                {**gaussian, "role": r, "running_mean": 1.0, "running_var": 2.0} for r in ("benign", "backdoor")
            ],
        },
        tmp_path / "fig2.png",
    )
    layer = {"gain": [0.1, 0.5, 0.2], "entropy": [-1.0, 0.0, 1.0], "kl": [0.1, 1.0, 0.01]}
    sensitivity = {"layers": [{**layer, "layer": f"l{i}"} for i in range(3)], "metrics": {}}
    figures.figure7({"BadNets (A2O)": sensitivity, "Blended": sensitivity}, tmp_path / "fig7.png")
    curve = [{"points": [{"value": u, "acc": 90.0, "asr": 10.0 / u} for u in (1.0, 3.0)]}]
    figures.figure9({("BadNets (A2O)", "EP"): curve, ("Blended", "EP"): curve, ("CLA", "BNP"): curve}, tmp_path / "9")
    few = {10: [{"acc": 80.0, "asr": 20.0}], 100: [{"acc": 90.0, "asr": 2.0}]}
    figures.figure_samples({"CLA": few, "Blended": few}, tmp_path / "samples.png")
    assert len(drawn) == 4
    for fig in drawn:
        assert fig.get_suptitle()
        plots = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        for ax in plots:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        series = max(len(ax.lines) + len(ax.collections) + len(ax.patches) for ax in plots)
        # several series: a legend in some panel, or a colour bar (Figure 7 colours its points by layer)
        assert series == 1 or any(ax.get_legend() for ax in plots) or len(fig.axes) > len(plots)


def test_the_report_links_its_figures_and_explains_its_marks(tmp_path):
    store = Store(tmp_path)
    cells = build_grid(["samples"], SETTINGS, SMOKE, [1])
    for c in cells:
        if c.kind != "train":
            store.put({"key": c.key, "status": "ok", "metrics": {"acc": 90.0, "asr": 5.0}})
    path = write_report(store, SMOKE, SETTINGS, {"samples": cells}, {"samples": [1]})
    text = path.read_text()
    assert "![samples](figures/samples.png)" in text and (tmp_path / "figures" / "samples.png").is_file()
    assert "`✗n` failed" in text and "`·` not finished yet" in text
    assert "### " not in text  # 4 attacks with ACC and ASR fit one table
