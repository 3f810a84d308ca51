"""What a cell does: train a run, or load one and defend, sweep, or measure its neurons.

`execute(cell, context)` is the one entry point of a worker (a local loop or a Ray task): it marks the
cell as running, does the work, and writes the cell's record atomically into the store, so an interrupted
cell leaves no record and is done again on the next run. A trained run is written into a temporary
directory and renamed into place when complete, so a run directory either is whole or does not exist.

The defender's data comes from the run's clean reserve (held out from training), drawn with the cell's
seed exactly as `bdprune.repair.defender_data` draws it; where a cell must choose something (Table 7's
smallest pruning), it chooses on poisoned copies of *other* reserve samples, never on the test set.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...attacks.poison import poison_test_set
from ...checkpoint import METRICS, provenance
from ...config import RunConfig
from ...data import ImageSet
from ...data.corruptions import corrupt_fraction
from ...defenses import BNP, DefenseData, DefenseReport, create_defense
from ...defenses.pruning import PruningDefense, neuron_layers
from ...errors import InvalidInput
from ...files import read_json
from ...metrics import evaluate
from ...neurons.collect import collect_max_histograms, collect_moments
from ...neurons.mask import ChannelMask, masked
from ...neurons.sensitivity import backdoor_sensitivity
from ...neurons.separation import auc, shift
from ...neurons.threshold import select_neurons
from ...repair import Suspect, load_suspect
from ...runs import RunData, rebuild_run_data, train_run
from .cells import Cell
from .store import Store

TARGET_ASR = 10.0  # percent: Table 7's "successful defense" (appendix F)


@dataclass(frozen=True)
class Context:
    """Where and how cells run: the store's directory, the device, the datasets' directories."""

    root: str
    device: str = "cpu"
    data_dirs: dict[str, str] = field(default_factory=dict)
    progress: bool = False


def execute(cell: Cell, context: Context) -> dict[str, Any]:
    """Do `cell` and write its record (see the module docstring); returns the record."""
    store = Store(context.root)
    store.mark_running(cell)
    start = time.perf_counter()
    if cell.kind == "train":
        outcome = train(cell, context, store)
    else:
        loaded = load_run(cell, context, store)
        outcome = _no_model() if loaded is None else WORK[cell.kind](cell, store, *loaded)
    record = {
        **outcome,
        "key": cell.key,
        "cell": cell.to_dict(),
        "seconds": time.perf_counter() - start,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "code": code_version(),
        "host": platform.node(),
        "device": context.device,
        "threads": torch.get_num_threads(),
    }
    store.put(record)
    store.clear_running(cell)
    return record


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """bdprune's and torch's versions and the git commit, and whether the checkout had uncommitted changes
    when this process first asked (the code it imported is that of then)."""
    version: dict[str, Any] = provenance()
    if version.get("git_commit"):
        try:
            status = subprocess.run(
                ["git", "-C", str(Path(__file__).resolve().parent), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            )
            version["git_dirty"] = bool(status.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            version["git_dirty"] = None
    return version


# -- train -----------------------------------------------------------------------------------------------
def train(cell: Cell, context: Context, store: Store) -> dict[str, Any]:
    config = RunConfig.from_dict(cell.spec["config"])
    config.data_dir = context.data_dirs.get(config.dataset, config.data_dir)
    final = store.run_dir(cell.spec["run"])
    if not final.is_dir():
        partial = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.partial"
        try:
            train_run(config, partial, device=context.device, progress=context.progress, cache_dir=store.cache_dir)
        except FloatingPointError as exc:  # the loss became NaN: the paper's "NaN" of Table 8, a result
            shutil.rmtree(partial, ignore_errors=True)
            return {"status": "diverged", "error": str(exc)}
        try:
            os.rename(partial, final)
        except OSError:
            if not final.is_dir():  # not a concurrent worker's identical run: a real failure
                raise
            shutil.rmtree(partial, ignore_errors=True)
        for stale in final.parent.glob(f".{final.name}.*.partial"):  # left by a killed attempt
            shutil.rmtree(stale, ignore_errors=True)
    metrics = read_json(final / METRICS)
    keep = ("acc", "asr", "backdoor_loss", "train_seconds", "train_samples", "poisoned_samples", "cross_samples")
    return {"status": "ok", "metrics": {k: metrics[k] for k in keep if k in metrics}, "model": str(final)}


# -- loading a run and the defender's data ---------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _load_run(run_dir: str, device: str, data_dir: str | None) -> tuple[Suspect, RunData]:
    # Cells of one run come one after another: keep the model and its rebuilt data for the next one.
    suspect = load_suspect(run_dir, device=device)
    return suspect, rebuild_run_data(suspect.card, suspect.attack, data_dir)


def load_run(cell: Cell, context: Context, store: Store) -> tuple[Suspect, RunData] | None:
    """The model and data of the cell's run; None if its training diverged."""
    record = store.get(f"run-{cell.spec['run']}")
    if record is None:
        raise InvalidInput(f"{cell.title}: its run {cell.spec['run']} has not been trained (train it first)")
    if record["status"] != "ok":
        return None
    dataset = record["cell"]["spec"]["config"]["dataset"]  # the store's own path: the directory may have moved
    return _load_run(str(store.run_dir(cell.spec["run"])), context.device, context.data_dirs.get(dataset))


def draw_reserve(run: RunData, clean: int, held_out: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """`clean` samples of the run's reserve for the defender and `held_out` others; the first part is the
    same draw as `repair.defender_data(..., clean_samples=clean, seed=seed)`."""
    if clean + held_out > len(run.reserve):
        raise InvalidInput(
            f"{clean} clean and {held_out} held-out samples asked of a clean reserve of "
            f"{len(run.reserve)}; lower them or raise the run's reserve_fraction"
        )
    part_clean, part_held = run.reserve.split([clean, held_out], torch.Generator().manual_seed(seed))
    return part_clean, part_held


def defender(
    suspect: Suspect, run: RunData, needs: frozenset[str], spec: dict[str, Any], held_out: int = 0
) -> tuple[DefenseData, ImageSet]:
    """The defender's data of a cell (with `spec["ood"]` corrupting 10% of it, Table 6) and held-out samples."""
    clean, held = draw_reserve(run, spec["clean_samples"], held_out, spec["draw_seed"])
    data = DefenseData(
        clean=clean if "clean" in needs else None,
        train=run.train if "train" in needs else None,
        train_poisoned=run.poisoned if "train" in needs else None,
        image_shape=suspect.image_shape,
    )
    if spec.get("ood"):
        g = torch.Generator().manual_seed(spec["draw_seed"] + 1)
        if data.clean is not None:
            data.clean = corrupt_fraction(data.clean, spec["ood"], spec["ood_fraction"], g)
        if data.train is not None:
            data.train = corrupt_fraction(data.train, spec["ood"], spec["ood_fraction"], g)
    return data, held


def test_set(run: RunData, spec: dict[str, Any]) -> ImageSet:
    """The test set, or a fixed draw of `test_samples` of it (the same for every cell and seed)."""
    n = spec.get("test_samples")
    return run.test if n is None or n >= len(run.test) else run.test.sample(n, torch.Generator().manual_seed(0))


def _no_model() -> dict[str, Any]:
    return {"status": "no-model", "error": "its run's training diverged (loss NaN): nothing to defend"}


# -- defend ----------------------------------------------------------------------------------------------
def defend(cell: Cell, store: Store, suspect: Suspect, run: RunData) -> dict[str, Any]:
    spec = cell.spec
    test = test_set(run, spec)
    if spec["defense"] == "none":
        return {
            "status": "ok",
            "metrics": {**evaluate(suspect.model, test, suspect.attack), "pruned": 0},
            "model": str(store.run_dir(spec["run"])),
        }
    defense = create_defense(spec["defense"], **spec["params"])
    data, _ = defender(suspect, run, defense.needs, spec)
    repaired, report = defense.run(suspect.model, data)
    after = evaluate(repaired, test, suspect.attack)
    path = report.save(store.cell_dir(cell) / "report.json")
    return {
        "status": "ok",
        "metrics": {**after, "pruned": report.num_pruned, "seconds": report.seconds, "samples": report.samples},
        "warnings": report.warnings[:10],
        "model": str(store.run_dir(spec["run"])),
        "report": str(path),
    }


# -- sweep (Table 7, Figure 9) ---------------------------------------------------------------------------
def candidate_masks(
    suspect: Suspect, data: DefenseData, method: str, params: dict[str, Any], grid: list[float]
) -> tuple[list[Any], list[tuple[float, ChannelMask]], str, float]:
    """The neuron layers, and for every grid value the neurons the defense would prune (scored once);
    also the silencing mode and the scoring seconds."""
    start = time.perf_counter()
    defense = create_defense(method, **params)
    model = suspect.model
    if isinstance(defense, PruningDefense):
        scored = defense.score(model, data)
        masks = [
            (
                u,
                ChannelMask(
                    {
                        n: d.selected
                        for n, d in select_neurons(
                            scored.scores, u=u, side=defense.side, rule=defense.rule, count=defense.count
                        ).items()
                    }
                ),
            )
            for u in grid
        ]
        return scored.layers, masks, defense.silence, time.perf_counter() - start
    if method != "anp":
        raise InvalidInput(f"a sweep needs a pruning defense (ep, bnp, clp, linf) or anp, not {method!r}")
    clean = data.require("clean", "ANP")
    layers = [
        l for l in neuron_layers(model, clean, require_bn=True) if dict(model.named_modules())[l.bn].weight is not None
    ]
    scores, _ = defense.optimize_masks(model, clean, {l.name: l.bn for l in layers})
    masks = [(t, ChannelMask({n: (m < t).nonzero().flatten().tolist() for n, m in scores.items()})) for t in grid]
    return layers, masks, defense.silence, time.perf_counter() - start


def sweep(cell: Cell, store: Store, suspect: Suspect, run: RunData) -> dict[str, Any]:
    """Prune at every grid value. mode "smallest" (Table 7): ACC / ASR of each on poisoned copies of
    held-out reserve samples, then the fewest neurons with that ASR under 10%, measured on the test set.
    mode "curve" (Figure 9): ACC / ASR on the test set at every grid value (nothing is chosen)."""
    spec = cell.spec
    needs = create_defense(spec["method"], **spec["params"]).needs
    data, held = defender(suspect, run, needs, spec, held_out=spec.get("val_samples", 0))
    layers, masks, silence, seconds = candidate_masks(suspect, data, spec["method"], spec["params"], spec["grid"])
    by_name = {l.name: l for l in layers}
    where = held if spec["mode"] == "smallest" else test_set(run, spec)
    measured: dict[str, dict[str, float]] = {}
    points = []
    for value, mask in masks:
        signature = repr(sorted(mask.to_dict().items()))
        if signature not in measured:
            with masked(suspect.model, by_name, mask, silence):
                measured[signature] = evaluate(suspect.model, where, suspect.attack)
        points.append({"value": value, "pruned": mask.count, **measured[signature]})
    out: dict[str, Any] = {
        "status": "ok",
        "points": points,
        "score_seconds": seconds,
        "model": str(store.run_dir(spec["run"])),
    }
    if spec["mode"] == "curve":
        out["evaluated_on"] = f"test ({len(where)} samples)"
        return out
    out["evaluated_on"] = f"held-out reserve ({len(where)} samples, poisoned copies for the ASR)"
    good = [p for p in points if p["asr"] < TARGET_ASR]
    if not good:
        out["metrics"] = {"acc": None, "asr": None, "pruned": None}
        out["note"] = f"no grid value brought the held-out ASR under {TARGET_ASR}%"
        return out
    chosen = min(good, key=lambda p: (p["pruned"], -p["value"]))
    mask = next(m for v, m in masks if v == chosen["value"])
    with masked(suspect.model, by_name, mask, silence):
        after = evaluate(suspect.model, test_set(run, spec), suspect.attack)
    out["chosen"] = chosen
    out["metrics"] = {**after, "pruned": chosen["pruned"], "value": chosen["value"]}
    return out


# -- Figure 7: sensitivity against entropy and KL -------------------------------------------------------
def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman's rank correlation of the finite pairs (average ranks for ties); None if undefined."""
    ok = torch.isfinite(a) & torch.isfinite(b)
    if int(ok.sum()) < 3:
        return None

    def ranks(x: torch.Tensor) -> torch.Tensor:
        order = x.argsort()
        r = torch.empty_like(x, dtype=torch.float64)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in x.unique():  # ties share their mean rank
            tie = x == v
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a[ok].double()), ranks(b[ok].double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.square().sum() * rb.square().sum()).sqrt()
    return float((ra * rb).sum() / denom) if denom > 0 else None


def sensitivity(cell: Cell, store: Store, suspect: Suspect, run: RunData) -> dict[str, Any]:
    spec = cell.spec
    data, probe = defender(suspect, run, frozenset({"clean", "train"}), spec, held_out=spec["probe_samples"])
    ep_scores = create_defense("ep", **spec["ep_params"]).score(suspect.model, data)
    bnp_scores = create_defense("bnp", **spec["bnp_params"]).score(suspect.model, data)
    layers = bnp_scores.layers
    sens = backdoor_sensitivity(suspect.model, probe, suspect.attack, layers)
    table = []
    for layer in layers:
        gain = sens.gain[layer.name]
        table.append(
            {
                "layer": layer.name,
                "gain": gain.tolist(),
                "entropy": ep_scores.scores[layer.name].tolist(),
                "kl": bnp_scores.scores[layer.name].tolist(),
            }
        )
    gain = torch.cat([sens.gain[l.name] for l in layers])
    entropy = torch.cat([ep_scores.scores[l.name].double() for l in layers])
    kl = torch.cat([bnp_scores.scores[l.name].double() for l in layers])
    return {
        "status": "ok",
        "layers": table,
        "base_loss": sens.base_loss,
        "samples": sens.samples,
        "metrics": {"spearman_gain_vs_entropy": spearman(gain, entropy), "spearman_gain_vs_kl": spearman(gain, kl)},
        "model": str(store.run_dir(spec["run"])),
    }


# -- Figure 2: pre-activation distributions --------------------------------------------------------------
def distributions(cell: Cell, store: Store, suspect: Suspect, run: RunData) -> dict[str, Any]:
    """A backdoor neuron (the largest poisoned-vs-benign shift of its per-sample maxima) and a benign one
    (the smallest, same layer): their maxima on clean and triggered probe samples (panels a, b) and their
    clean pre-activations against the Gaussian of the BN statistics (panels c, d)."""
    model, spec = suspect.model, cell.spec
    _, probe = draw_reserve(run, 0, spec["probe_samples"], spec["draw_seed"])
    triggered = poison_test_set(probe, suspect.attack)
    both = ImageSet(
        torch.cat([probe.images, triggered.images]),
        torch.cat([probe.labels, triggered.labels]),
        probe.classes,
        name="probe",
    )
    groups = torch.cat([torch.zeros(len(probe)), torch.ones(len(triggered))]).long()
    layers = neuron_layers(model, probe, require_bn=True)
    sketches = collect_max_histograms(model, both, layers, groups=groups)
    shifts = {name: shift(s).cpu().nan_to_num(0.0) for name, s in sketches.items()}
    name = max(shifts, key=lambda n: float(shifts[n].abs().max()))
    backdoor = int(shifts[name].abs().argmax())
    benign = int(shifts[name].abs().argmin())
    moments = collect_moments(model, probe, [l for l in layers if l.name == name])[name]
    bn = dict(model.named_modules())[next(l.bn for l in layers if l.name == name)]
    entries, gaussians = [], []
    for role, channel in (("benign", benign), ("backdoor", backdoor)):
        edges, counts = sketches[name].coarse(channel, 60)
        entries.append(
            {
                "role": role,
                "layer": name,
                "channel": channel,
                "z": float(shifts[name][channel]),
                "auc": float(auc(sketches[name])[channel]),
                "edges": edges,
                "counts": counts,
                "groups": ["benign", "poisoned"],
            }
        )
        gaussians.append(
            {
                "role": role,
                "layer": name,
                "channel": channel,
                "z": float(shifts[name][channel]),
                "clean_mean": float(moments.mean[channel]),
                "clean_var": float(moments.variance()[channel]),
                "running_mean": float(bn.running_mean[channel]),
                "running_var": float(bn.running_var[channel] + bn.eps),
            }
        )
    report = DefenseReport(
        method="bnp", config={}, layers=[], samples=len(probe), seconds=0.0, extra={"gaussians": gaussians}
    )
    BNP().add_value_histograms(model, probe, report)  # the clean pre-activations' own histogram
    return {
        "status": "ok",
        "histograms": entries,
        "gaussians": report.extra["gaussians"],
        "samples": {"clean": len(probe), "triggered": len(triggered)},
        "model": str(store.run_dir(spec["run"])),
    }


WORK = {"defend": defend, "sweep": sweep, "sensitivity": sensitivity, "distributions": distributions}  # on a run
