"""The `detection` experiment: a population of clean and backdoored models, each scanned (issue 25).

Every model is cheap (a data subset, 1 to 3 epochs mostly) and varied: widths 8 / 16 / 32, augmentation
none / flip / crop+flip, 1 to 10 epochs, subsets of 300 to 15000 samples, and for the backdoored ones every
attack of the suite and the adaptive ones (appendix G), poisoning 1 %, 5 % and 10 %, several targets. Each
model has its own seed (never 1, 2, 7, 11, 13, which are held out); an even seed puts it in the
calibration half (where the scan's statistic and threshold are chosen), an odd seed in the evaluation half.

The population is fixed here, so its trained runs keep their keys (the store is resumable); the reproduce
command's `--seeds S` shifts every seed by 1000 * S (another population of the same design).
"""

from __future__ import annotations

from typing import Any

from .cells import Cell, on_run, train_cell
from .presets import Preset, Setting

HELD_OUT = frozenset({1, 2, 7, 11, 13})
FIRST_SEED = 100

# Clean models: (width, augment, epochs, train_subset), cycled with a seed each, trained in batches of 64 (width
# 8) or 32 (wider) like the backdoored ones: some 100 to 160 SGD steps (width 32: 94 to 140). A width-8 model
# costs about 0.4 of a width-16 one, width 32 about 3x. (Batches of 128 left seed 102 at ACC 20 %.)
CLEAN_VARIANTS: tuple[tuple[int, str, int, int], ...] = (
    (16, "flip", 1, 5000),
    (8, "none", 2, 5000),
    (32, "flip", 2, 1500),
    (16, "crop+flip", 2, 2500),
    (8, "flip", 3, 3300),
    (16, "none", 1, 5000),
    (8, "none", 5, 2000),
    (16, "flip", 10, 500),
    (8, "crop+flip", 10, 1000),
    (32, "none", 3, 1000),
)
CLEAN_MODELS = 30

# Backdoored groups: label -> (run fields, how many models); each model takes the next variant below.
ATTACK_GROUPS: dict[str, tuple[dict[str, Any], int]] = {
    "BadNets (A2O)": ({"attack": "badnets"}, 4),
    "Blended": ({"attack": "blended"}, 4),
    "Refool": ({"attack": "refool"}, 3),
    "Masked": ({"attack": "masked"}, 3),
    "Eq. (4) preact-l2": ({"attack": "badnets", "adaptive": "preact-l2"}, 3),
    "ML-MMD": ({"attack": "badnets", "adaptive": "ml-mmd"}, 3),
    "BN re-param": ({"attack": "badnets", "bn_reparam": True}, 3),
    "BadNets (A2A)": ({"attack": "badnets", "mode": "all-to-all"}, 2),
    "WaNet": ({"attack": "wanet"}, 2),
    "IAB": ({"attack": "iab"}, 1),
    "SSBA": ({"attack": "ssba"}, 1),
    "CLA": ({"attack": "cla"}, 1),
}
# (width, augment, epochs, train_subset, rate, target) of the i-th model of a group, rotated by the group. A
# backdoor needs some 300 SGD steps to take: 10000 samples x 2 epochs in batches of 64 at width 8, 6000 x 2 in
# batches of 32 at width 16.
ATTACK_VARIANTS: tuple[tuple[int, str, int, int, float, int], ...] = (
    (8, "flip", 2, 10000, 0.1, 0),
    (8, "none", 2, 10000, 0.05, 3),
    (8, "none", 2, 10000, 0.01, 7),
    (16, "flip", 2, 6000, 0.1, 5),
)
# Slower-to-take attacks get more data (the cpu preset reaches ASR 89 (A2A) and 92 (WaNet) in 2 full epochs).
SLOW = {"BadNets (A2A)": (15000, 3), "WaNet": (15000, 3)}
LEARNED = ("IAB", "SSBA", "CLA")


def half(seed: int) -> str:
    """ "calibration" (even seed) or "evaluation" (odd seed)."""
    return "calibration" if seed % 2 == 0 else "evaluation"


def small(setting: Setting) -> bool:
    """A plumbing preset (smoke, the tests' micro) sets its own tiny training subset: then the population is
    2 clean models and one per attack group, each of the preset's own size."""
    return "train_subset" in setting.fields


def population(setting: Setting, offset: int = 0) -> list[tuple[str, Cell]]:
    """(group, train cell) of every model: "clean" or an attack label. Cheap groups come first, interleaved
    clean / backdoored, so that an interrupted store holds both kinds; learned attacks last."""
    seed = FIRST_SEED + offset
    tiny = small(setting)

    def next_seed(odd: bool = False) -> int:
        nonlocal seed
        while seed in HELD_OUT or (odd and seed % 2 == 0):
            seed += 1
        seed += 1
        return seed - 1

    clean = []
    for i in range(2 if tiny else CLEAN_MODELS):
        # the second pass over the variants is shifted by one, so every variant lands in both halves
        width, augment, epochs, subset = CLEAN_VARIANTS[(i + i // len(CLEAN_VARIANTS)) % len(CLEAN_VARIANTS)]
        sizes = {} if tiny else {"train_subset": subset, "augment": augment, "model_args": {"base_width": width}}
        config = setting.run_config(None, next_seed(), **sizes)
        config = config if tiny else config.with_train(epochs=epochs, batch_size=32 if width > 8 else 64)
        clean.append(("clean", train_cell("detection", "model", "clean", config)))
    backdoored: list[tuple[str, Cell]] = []
    for g, (label, (fields, count)) in enumerate(ATTACK_GROUPS.items()):
        for i in range(1 if tiny else count):
            # rotated by the group, so every variant (width, rate) lands in both halves across the groups
            width, augment, epochs, subset, rate, target = ATTACK_VARIANTS[(i + g) % len(ATTACK_VARIANTS)]
            if label in SLOW:
                subset, epochs = SLOW[label]
                width, rate = 8, 0.1
            if label in LEARNED:
                width, subset, epochs, rate = 8, 10000, 2, 0.1
            run_fields = {k: v for k, v in fields.items() if k != "attack"}
            if not tiny:
                run_fields.update(train_subset=subset, augment=augment, model_args={"base_width": width})
            # a learned attack's single model goes to the evaluation half (odd seed), where attacks are compared
            seed_of = next_seed(odd=label in LEARNED and count == 1)
            config = setting.run_config(fields["attack"], seed_of, rate=rate, target=target, **run_fields)
            # more, smaller steps than the preset's batch of 128: 156 steps of 128 (10000 x 2 epochs at width 8)
            # left BadNets at ASR 15 and 36 (seeds 130, 131); the cpu preset's own runs take ~800 steps
            config = config if tiny else config.with_train(epochs=epochs, batch_size=32 if width > 8 else 64)
            backdoored.append((label, train_cell("detection", "model", label, config)))
    cheap = [b for b in backdoored if b[0] not in LEARNED]
    learned = [b for b in backdoored if b[0] in LEARNED]
    out: list[tuple[str, Cell]] = []
    for i in range(max(len(clean), len(cheap))):
        out += clean[i : i + 1] + cheap[i : i + 1]
    return out + learned


def cells(setting: Setting, preset: Preset, seed: int) -> list[Cell]:
    """The detection grid for `--seeds seed`: the issue's two bar models (trained only), then every model of
    the population and its scan; an evaluation-half model also gets its slower scans (Neural Cleanse, EP) at
    once, so that an interrupted run can still compare NC there."""
    out = [run for _, run in bar_models(setting)]
    for group, run in population(setting, offset=1000 * seed):
        out.append(run)
        out.extend(scan_cells(group, run, setting, preset))
        if half(run.seed) == "evaluation":
            out.extend(scan_cells(group, run, setting, preset, part="extra"))
    return out


SCAN_SPEC: dict[str, Any] = {
    "clean_samples": 500,
    "test_samples": 2000,  # a fixed draw of the test set: ACC / ASR after the repair (measured, never chosen on)
    # BNP's MAD rule (u = 6, unguarded: the guard's veto costs a minute per model on the shared core), on the
    # backdoored models only; the repaired model is scanned too
    "repair": {"rule": "mad"},
}
# The slower evidence, in a second experiment (`detection-extra`) that runs after the first: Neural Cleanse
# (CPU-sized: 25 steps of 16 samples per label: 40 took 150 s a model on the shared core) and EP's evidence on
# the first 5000 training samples.
EXTRA_SPEC: dict[str, Any] = {"clean_samples": 500, "nc": {"steps": 25, "batch_size": 16}, "ep_samples": 5000}


def scan_cells(group: str, run: Cell, setting: Setting, preset: Preset, part: str = "bnp") -> list[Cell]:
    """A model's scan cell: part "bnp": BNP's statistics before and after a BNP repair; part "extra": Neural
    Cleanse and EP's evidence. Raw per-layer scores are kept, so the statistic is chosen afterwards on the
    calibration half."""
    spec = {"part": part, **(SCAN_SPEC if part == "bnp" else EXTRA_SPEC)}
    if small(setting):
        spec.update(clean_samples=setting.clean_samples)
        spec.update(test_samples=preset.test_samples) if part == "bnp" else spec.update(
            nc={"steps": 10, "batch_size": 8}
        )
    return [
        on_run(
            f"detection{'' if part == 'bnp' else '-extra'}",
            "scan",
            group,
            half(run.seed),
            run,
            draw_seed=run.seed,
            **spec,
        )
    ]


BAR_SEED = 12  # the bar: `bdprune train --preset cpu --attack none|badnets --train-subset 20000 --epochs 1`


def bar_models(setting: Setting) -> list[tuple[str, Cell]]:
    """The two models of the issue's bar (not part of the population: nothing is chosen on them)."""
    out = []
    for attack, label in ((None, "bar: clean"), ("badnets", "bar: BadNets")):
        fields = {} if small(setting) else {"train_subset": 20000}
        config = setting.run_config(attack, BAR_SEED, **fields)
        out.append(
            (
                label,
                train_cell(
                    "detection-extra", "model", label, config if small(setting) else config.with_train(epochs=1)
                ),
            )
        )
    return out


def extra_cells(setting: Setting, preset: Preset, seed: int) -> list[Cell]:
    """The `detection-extra` grid: the issue's two bar models (trained only; `bdprune scan` is timed on them),
    then the population's evaluation half (where NC is compared), then its calibration half."""
    out = [run for _, run in bar_models(setting)]
    models = population(setting, offset=1000 * seed)
    ordered = [m for m in models if half(m[1].seed) == "evaluation"] + [
        m for m in models if half(m[1].seed) == "calibration"
    ]
    for group, run in ordered:
        out.append(run)
        out.extend(scan_cells(group, run, setting, preset, part="extra"))
    return out


__all__ = ["bar_models", "cells", "extra_cells", "half", "on_run", "population", "scan_cells"]
