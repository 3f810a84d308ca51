"""The regime analysis of a run and `bdprune diagnose`: k*, curves in each order, the regime table."""

from __future__ import annotations

import json

import pytest

from bdprune.cli import main

pytestmark = pytest.mark.fashion_mnist


def test_diagnose_writes_the_table_curves_and_plot(tiny_run, tmp_path, capsys):
    out = tmp_path / "diag"
    assert (
        main(
            ["diagnose", str(tiny_run), "--out", str(out), "--curve-samples", "300", "--test-samples", "500", "--quiet"]
        )
        == 0
    )
    table = (out / "regime.md").read_text()
    assert table.count("\n") == 3 and "| badnets |" in table  # header, rule, one run
    analysis = json.loads((out / tiny_run.name / "analysis.json").read_text())
    assert set(analysis["defenses"]) == {"ep", "bnp", "ep-paper", "bnp-paper", "bnp-mad"}
    assert set(analysis["curves"]) == {"separation", "ep", "bnp", "ep-paper", "bnp-paper", "bnp-mad"}
    separation = analysis["curves"]["separation"]["points"]
    assert separation[0]["k"] == 0 and separation[0]["asr"] == pytest.approx(
        analysis["curves"]["ep"]["points"][0]["asr"]
    )
    if analysis["k_star"] is not None:  # the smallest k with ASR under 5% is the first such point measured
        first = min(p["k"] for p in separation if p["asr"] < 5.0)
        assert analysis["k_star"] == first
    assert (out / tiny_run.name / "concentration.png").stat().st_size > 1000
    assert "| badnets |" in capsys.readouterr().out
