"""A preset smaller than `smoke` for the reproduction's tests, registered under the name "micro"."""

from __future__ import annotations

import pytest

from bdprune.experiments.reproduce import presets

MICRO_SETTING = presets.Setting(
    base="cpu",
    fields={"train_subset": 200, "model_args": {"base_width": 2}},
    train={"epochs": 1},
    attack_params=presets.SMOKE_FITS,
    clean_samples=20,
    defenses={
        "ft": {"epochs": 1},
        "fp": {"epochs": 1},
        "nad": {"teacher_epochs": 1, "epochs": 1},
        "anp": {"iterations": 2},
        "ft-sam": {"epochs": 1},
    },
)
MICRO = presets.Preset(
    "micro",
    "test preset",
    {"main": (MICRO_SETTING,), "large": (MICRO_SETTING,)},
    val_samples=60,
    test_samples=200,
    probe_samples=40,
    sensitivity_samples=30,
    sample_counts=(10, 20),
    u_grid=(6.0, 3.0, 1.0, 0.5),
    curve_grid=(6.0, 3.0, 1.0, 0.5),
    anp_thresholds=(0.2, 0.9),
)


@pytest.fixture
def micro(monkeypatch):
    """The "micro" preset, registered for the test."""
    monkeypatch.setitem(presets.REPRODUCTION_PRESETS, "micro", MICRO)
    return MICRO
