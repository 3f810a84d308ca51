"""The paper's experiments as grids of cells: which runs to train and what to do with each.

Each experiment is a function (setting, preset, seed) -> cells, registered with its title, the dataset role
it uses and the metrics its table shows. Rows and columns are laid out as in the paper's table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...defenses import create_defense
from ...errors import UnknownName
from . import detection
from .cells import Cell, on_run, train_cell
from .paper import PAPER_RULE
from .presets import ATTACK_RUNS, Preset, Setting

DEFENSE_ROWS = {
    "none": "Origin",
    "ft": "FT",
    "fp": "FP",
    "linf": "l-inf",
    "nad": "NAD",
    "anp": "ANP",
    "ep": "EP",
    "bnp": "BNP",
    "clp": "CLP",
}
# EP and BNP under the paper's own rule (z-score, u from the setting) beside the library's defaults in Tables 1/2
PAPER_RULE_ROWS = {m: DEFENSE_ROWS[m] + PAPER_RULE for m in ("ep", "bnp")}
# Tables 1/2 only: the repairs beyond pruning beside their baseline (issue 23): EP's and BNP's defaults without
# their stage after the pruning (EP's unlearning of the named samples, BNP's unlearning of the trigger read from
# its BN statistics), and FT-SAM (Zhu et al., ICCV 2023)
REPAIR_ROWS = {
    "EP (prune only)": ("ep", {"then": "none"}),
    "BNP (prune only)": ("bnp", {"then": "none"}),
    "FT-SAM": ("ft-sam", {}),
}
TABLE1_ATTACKS = ("BadNets (A2O)", "BadNets (A2A)", "CLA", "WaNet", "Blended", "Refool", "IAB", "SSBA")
TABLE2_ATTACKS = ("BadNets (A2O)", "CLA", "WaNet", "Refool", "Blended", "IAB", "SSBA")
TABLE4_ATTACKS = ("BadNets (A2O)", "BadNets (A2A)", "CLA", "WaNet", "Blended", "Refool", "IAB")
TABLE5_ATTACKS = ("BadNets (A2O)", "BadNets (A2A)", "CLA", "Refool", "WaNet", "Blended", "IAB")
TABLE7_ATTACKS = ("BadNets (A2O)", "BadNets (A2A)", "Blended", "CLA", "Refool", "IAB", "WaNet", "SSBA")
SAMPLES_ATTACKS = ("BadNets (A2O)", "CLA", "Refool", "Blended")
FIG7_ATTACKS = ("BadNets (A2O)", "Blended")
# The attacks by the kind of trigger: the column groups of the tables whose columns are attacks, so that a table
# too wide for a page is split into parts of related attacks
ATTACK_FAMILIES = (
    ("Local triggers (a patch, or an input-specific sparse mask)", ("BadNets (A2O)", "BadNets (A2A)", "CLA", "IAB")),
    ("Whole-image triggers (warping, blending, reflection, invisible noise)", ("WaNet", "Blended", "Refool", "SSBA")),
)
RATES = (0.01, 0.05, 0.1)
OOD = {"CJ": "cj", "SAP": "sap", "PW": "pw", "Snow": "snow"}
LAMBDAS = (1.0, 0.1, 0.01, 0.001)


@dataclass(frozen=True)
class Experiment:
    """One of the paper's tables or figures.

    Attributes:
        name: the command's NAME ("table1", "fig9", ...).
        title: the report's heading.
        role: which dataset setting of the preset it uses ("main": CIFAR-10 in the paper, "large": Tiny-ImageNet).
        metrics: what its table shows per column ("acc", "asr", "pruned", "seconds").
        cells: (setting, preset, seed) -> its cells, train cells included.
        note: what the report says about how it was measured.
        column_groups: (heading, columns) of related columns (`ATTACK_FAMILIES`): the parts that a table too
            wide for a page is split into, in the order given; without them it is split into runs of columns.
    """

    name: str
    title: str
    role: str
    metrics: tuple[str, ...]
    cells: Callable[[Setting, Preset, int], list[Cell]]
    note: str = ""
    column_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()


def run_of(experiment: str, setting: Setting, attack: str, seed: int, row: str = "", **fields: Any) -> Cell:
    """The train cell of one of the paper's attacks (`ATTACK_RUNS`) in `setting`; `fields` are more run options."""
    spec = ATTACK_RUNS[attack]
    config = setting.run_config(
        spec["attack"], seed, attack_fields={k: v for k, v in spec.items() if k != "attack"}, **fields
    )
    return train_cell(experiment, row or "model", attack, config)


# Options added after cells were stored, whose default reproduces the results from before they existed: at that
# value they stay out of a cell's key, so a store keeps serving what it computed before them (any other value
# is in the key). kept_statistics=False is EP's unlearning as it was (517b961). stamp=True changes EP only where
# every sample of one label carries a stamp (CLA at the paper's rate): the store's EP cells on those models were
# deleted by hand when it was added, so they are computed again.
NEUTRAL_DEFAULTS: dict[str, Any] = {"kept_statistics": False, "stamp": True}


def resolved(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """EP's and BNP's options with their defaults filled in (rule and all): their defaults change as the library
    learns, and a cell's key must change with them so that a store never serves a result of older defaults
    (`NEUTRAL_DEFAULTS` excepted)."""
    if method not in ("ep", "bnp"):
        return params
    full = create_defense(method, **params).params()
    return {
        k: v
        for k, v in full.items()
        if k not in ("progress", "batch_size") and not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])
    }


def defend(
    experiment: str,
    setting: Setting,
    preset: Preset,
    run: Cell,
    method: str,
    row: str,
    col: str,
    clean_samples: int | None = None,
    ood: str | None = None,
    **params: Any,
) -> Cell:
    """A defend cell: `method` ("none": the model as trained) with the setting's parameters and `params` on the
    model `run` trains, the defender's data drawn with the run's seed, evaluated on the preset's test samples."""
    spec: dict[str, Any] = {
        "defense": method,
        "params": resolved(method, setting.defense_params(method, **params)) if method != "none" else {},
        "clean_samples": clean_samples or setting.clean_samples,
        "draw_seed": run.seed,
        "test_samples": preset.test_samples,
    }
    if ood is not None:
        spec.update(ood=ood, ood_fraction=0.1)
    return on_run(experiment, "defend", row, col, run, **spec)


def attacks_by_defenses(name: str, attacks: tuple[str, ...]) -> Callable[[Setting, Preset, int], list[Cell]]:
    def cells(setting: Setting, preset: Preset, seed: int) -> list[Cell]:
        out = []
        for attack in attacks:
            run = run_of(name, setting, attack, seed)
            out.append(run)
            out += [defend(name, setting, preset, run, m, row, attack) for m, row in DEFENSE_ROWS.items()]
            out += [
                defend(name, setting, preset, run, m, row, attack, **setting.paper_rule)
                for m, row in PAPER_RULE_ROWS.items()
            ]
            out += [defend(name, setting, preset, run, m, row, attack, **p) for row, (m, p) in REPAIR_ROWS.items()]
        return out

    return cells


def table3(setting: Setting, preset: Preset, seed: int) -> list[Cell]:
    run = run_of("table3", setting, "BadNets (A2O)", seed)
    cells = [run]
    for method, label in DEFENSE_ROWS.items():
        if method == "none":
            continue
        # EP on 500 samples of the (poisoned) training set, as the official code; the others on the 500 clean
        extra = {"max_samples": setting.clean_samples} if method == "ep" else {}
        cells.append(defend("table3", setting, preset, run, method, "time (s)", label, **extra))
    return cells


def table4(setting: Setting, preset: Preset, seed: int) -> list[Cell]:
    cells = []
    for rate in RATES:
        for attack in TABLE4_ATTACKS:
            run = run_of("table4", setting, attack, seed, f"model, rho {rate:.0%}", rate=rate)
            cells.append(run)
            cells += [
                defend("table4", setting, preset, run, m, f"{rate:.0%} {DEFENSE_ROWS[m]}", attack)
                for m in ("none", "ep", "bnp")
            ]
    return cells


def table5(setting: Setting, preset: Preset, seed: int) -> list[Cell]:
    cells = []
    for attack in TABLE5_ATTACKS:
        run = run_of("table5", setting, attack, seed, "model WRN-28-1", model="wrn28_1", model_args={})
        cells.append(run)
        cells += [
            defend("table5", setting, preset, run, m, attack, {"none": "Backdoored"}.get(m, DEFENSE_ROWS[m]))
            for m in ("none", "ep", "bnp")
        ]
    return cells


def table6(setting: Setting, preset: Preset, seed: int) -> list[Cell]:
    run = run_of("table6", setting, "BadNets (A2O)", seed)
    cells = [run]
    for method in ("ep", "bnp"):
        cells.append(defend("table6", setting, preset, run, method, DEFENSE_ROWS[method], "Origin"))
        cells += [
            defend("table6", setting, preset, run, method, DEFENSE_ROWS[method], label, ood=kind)
            for label, kind in OOD.items()
        ]
    return cells


def sweep(experiment: str, setting: Setting, preset: Preset, run: Cell, method: str, mode: str) -> Cell:
    grid = list(
        preset.anp_thresholds if method == "anp" else preset.u_grid if mode == "smallest" else preset.curve_grid
    )
    return on_run(
        experiment,
        "sweep",
        run.col,
        DEFENSE_ROWS[method],
        run,
        method=method,
        params=setting.defense_params(method, **({} if method == "anp" else setting.paper_rule)),
        mode=mode,
        grid=grid,
        clean_samples=setting.clean_samples,
        val_samples=preset.val_samples if mode == "smallest" else 0,
        draw_seed=run.seed,
        test_samples=preset.test_samples,
    )


def table7(setting: Setting, preset: Preset, seed: int) -> list[Cell]:
    cells = []
    for attack in TABLE7_ATTACKS:
        run = run_of("table7", setting, attack, seed)
        cells += [run] + [sweep("table7", setting, preset, run, m, "smallest") for m in ("ep", "bnp", "anp")]
    return cells


def fig9(setting: Setting, preset: Preset, seed: int) -> list[Cell]:
    cells = []
    for attack in TABLE4_ATTACKS:
        run = run_of("fig9", setting, attack, seed)
        cells += [run] + [sweep("fig9", setting, preset, run, m, "curve") for m in ("ep", "bnp")]
    return cells


def adaptive(name: str, columns: dict[str, dict[str, Any]]) -> Callable[[Setting, Preset, int], list[Cell]]:
    def cells(setting: Setting, preset: Preset, seed: int) -> list[Cell]:
        out = []
        for label, fields in columns.items():
            run = run_of(name, setting, "BadNets (A2O)", seed, f"model, {label}", **fields)
            out.append(run)
            out += [defend(name, setting, preset, run, m, DEFENSE_ROWS[m], label) for m in ("none", "ep", "bnp")]
        return out

    return cells


def table9(setting: Setting, preset: Preset, seed: int) -> list[Cell]:
    """Table 9: ML-MMD and BN re-parameterisation (adaptive objectives on BadNets), and WB (an attack of its own)."""
    cells = adaptive("table9", {"ML-MMD": {"adaptive": "ml-mmd"}, "BN re-param": {"bn_reparam": True}})(
        setting, preset, seed
    )
    run = run_of("table9", setting, "WB", seed, "model, WB")
    return [
        *cells,
        run,
        *(defend("table9", setting, preset, run, m, DEFENSE_ROWS[m], "WB") for m in ("none", "ep", "bnp")),
    ]


def samples(setting: Setting, preset: Preset, seed: int) -> list[Cell]:
    cells = []
    for attack in SAMPLES_ATTACKS:
        run = run_of("samples", setting, attack, seed)
        cells.append(run)
        cells += [
            defend("samples", setting, preset, run, "bnp", str(n), attack, clean_samples=n)
            for n in preset.sample_counts
        ]
    return cells


def probe(kind: str, attacks: tuple[str, ...]) -> Callable[[Setting, Preset, int], list[Cell]]:
    def cells(setting: Setting, preset: Preset, seed: int) -> list[Cell]:
        out = []
        for attack in attacks:
            run = run_of(kind, setting, attack, seed)
            extra = (
                {
                    "clean_samples": setting.clean_samples,
                    "ep_params": setting.defense_params("ep"),
                    "bnp_params": setting.defense_params("bnp"),
                }
                if kind == "fig7"
                else {}
            )
            samples = preset.sensitivity_samples if kind == "fig7" else preset.probe_samples
            out += [
                run,
                on_run(
                    kind,
                    "sensitivity" if kind == "fig7" else "distributions",
                    attack,
                    kind,
                    run,
                    probe_samples=samples,
                    draw_seed=seed,
                    **extra,
                ),
            ]
        return out

    return cells


_REVERSE = "chosen on poisoned copies of held-out clean-reserve samples (never the test set), reported on the test set"
EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "table1",
            "Table 1: attacks x defenses",
            "main",
            ("acc", "asr"),
            attacks_by_defenses("table1", TABLE1_ATTACKS),
            "Every defense with the setting's options (the library defaults unless the preset says otherwise) on "
            "the same model and the same clean samples, EP and BNP also under the paper's rule; CLP is an "
            "extra row, SSBA an extra column (the paper runs SSBA on Tiny-ImageNet only).",
            column_groups=ATTACK_FAMILIES,
        ),
        Experiment(
            "table2",
            "Table 2: attacks x defenses (Tiny-ImageNet in the paper)",
            "large",
            ("acc", "asr"),
            attacks_by_defenses("table2", TABLE2_ATTACKS),
            column_groups=ATTACK_FAMILIES,
        ),
        Experiment(
            "table3",
            "Table 3: running time of each defense on the same 500 samples",
            "main",
            ("seconds",),
            table3,
            "Seconds of each defense's own work (`report.seconds`), evaluation excluded, on the "
            "defender's clean samples (500 in the paper); EP on as many samples of the poisoned training set "
            "(the official code reads its first 500), CLP on none. Cells may have run beside others (a loaded "
            "machine): compare within one run only.",
        ),
        Experiment(
            "table4",
            "Table 4: poisoning rate 1 / 5 / 10%",
            "main",
            ("acc", "asr"),
            table4,
            "rho is the poisoned fraction of the training set; CLA's clean-label rate is rho x classes of the "
            "target class (the same number of poisoned images).",
            column_groups=ATTACK_FAMILIES,
        ),
        Experiment("table5", "Table 5: WideResNet-28-1", "main", ("acc", "asr"), table5),
        Experiment(
            "table6",
            "Table 6: out-of-distribution defender data",
            "main",
            ("acc", "asr"),
            table6,
            "10% of the defender's data (EP: the training set; BNP: the clean samples) replaced by corrupted "
            "copies (`bdprune.data.corruptions`: CJ and SAP as defined, PW and Snow our approximations of "
            "imgaug's).",
        ),
        Experiment(
            "table7",
            "Table 7: the smallest pruning with ASR under 10%",
            "main",
            ("acc", "asr", "pruned"),
            table7,
            f"u (EP, BNP) and ANP's mask threshold swept; the smallest pruning with ASR < 10% is {_REVERSE}. "
            "Like the paper's Table 7 this uses the trigger (an analysis of how precise each ranking is, not a "
            "defense a defender could run).",
        ),
        Experiment(
            "table8",
            "Table 8: the regularisation-based adaptive attack (Eq. 4)",
            "main",
            ("acc", "asr"),
            adaptive(
                "table8",
                {f"lambda = {l:g}": {"adaptive": "preact-l2", "adaptive_params": {"weight": l}} for l in LAMBDAS},
            ),
            "A run whose loss became NaN is shown as NaN, as in the paper.",
        ),
        Experiment(
            "table9",
            "Table 9: adaptive attacks (ML-MMD, WB; BN re-parameterisation of G.1)",
            "main",
            ("acc", "asr"),
            table9,
            "ML-MMD and BN re-parameterisation are trained on BadNets (A2O); WB (`--attack wb`) is an attack of its "
            "own, trained jointly with its learned trigger.",
        ),
        Experiment(
            "fig2",
            "Figure 2: pre-activation distributions",
            "main",
            (),
            probe("fig2", ("BadNets (A2O)",)),
            "The backdoor neuron is the one whose per-sample maxima shift most between clean and triggered probe "
            "samples (held-out reserve), the benign one the least shifted of the same layer.",
        ),
        Experiment(
            "fig7",
            "Figure 7: backdoor sensitivity against entropy (EP) and KL (BNP)",
            "main",
            ("spearman_gain_vs_entropy", "spearman_gain_vs_kl"),
            probe("fig7", FIG7_ATTACKS),
            "Sensitivity: the rise of the backdoor loss when the one neuron is pruned (-alpha of Definition 2, "
            "`bdprune.neurons.sensitivity`), on triggered held-out reserve samples; every BN layer.",
        ),
        Experiment(
            "fig9",
            "Figure 9: ACC / ASR against u",
            "main",
            (),
            fig9,
            "Test-set ACC and ASR at every u of the grid (a curve: nothing is chosen from it).",
        ),
        Experiment("samples", "Section 5.3: BNP with 10 to 500 clean samples", "main", ("acc", "asr"), samples),
        Experiment(
            "detection",
            "Detection: is this model backdoored? (issue 25; not in the paper)",
            "main",
            (),
            detection.cells,
            "A population of clean and backdoored cpu-preset models (seeds from 100; even: calibration half, "
            "odd: evaluation half), each scanned; docs/results/detection-cpu.md analyses it.",
        ),
        Experiment(
            "detection-extra",
            "Detection: Neural Cleanse and EP's evidence on the same population (issue 25)",
            "main",
            (),
            detection.extra_cells,
            "The slower scans of the detection population: Neural Cleanse's anomaly index (the baseline) and "
            "EP's evidence from the training set; evaluation half first.",
        ),
    )
}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise UnknownName(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)} (or all)")
    return EXPERIMENTS[name]


def build_grid(names: list[str], settings: dict[str, Setting], preset: Preset, seeds: list[int]) -> list[Cell]:
    """Every cell of the experiments for every seed, each shared cell once (the first experiment's), in an
    order where a run's cells follow its training."""
    cells: dict[str, Cell] = {}
    for name in names:
        experiment = get_experiment(name)
        for seed in seeds:
            for cell in experiment.cells(settings[experiment.role], preset, seed):
                cells.setdefault(cell.key, cell)
    trains = [c for c in cells.values() if c.kind == "train"]
    order = {c.spec["run"]: i for i, c in enumerate(trains)}
    rest = sorted((c for c in cells.values() if c.kind != "train"), key=lambda c: order[c.needs[0]])
    out: list[Cell] = []
    for train in trains:
        out.append(train)
        out += [c for c in rest if c.needs[0] == train.spec["run"]]
    return out
