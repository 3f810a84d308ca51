"""The detection experiment's analysis: choose the scan's statistic and threshold on the calibration half, report
ROC-AUC and TPR at 5 % FPR on the evaluation half (overall and per attack), Neural Cleanse beside, the verdict
after repair, and the ROC plot.

    python benchmarks/detection_report.py /work/runs/scan/detection --out docs/results/detection-cpu.md

Reads the records of `bdprune reproduce detection` and `detection-extra` in the store, and recomputes every
candidate statistic of `bdprune.detection.statistic` from the stored models (seconds each; cached in
--cache), before and after the scan cell's repair (BNP, MAD rule), with the scan cell's clean samples. Models:
"clean" are the negatives; a backdoored model is a positive when its attack took (test ASR >= 80 %), else it
is reported as "did not take" and counted as neither. Only the calibration half's scores choose anything.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path
from typing import Any

import torch

from bdprune.defenses import BNP, DefenseData
from bdprune.detection.calibrate import choose_threshold, flagged, roc_auc, roc_curve, tpr_at_fpr
from bdprune.detection.scanner import bnp_statistics
from bdprune.detection.statistic import STATISTICS
from bdprune.experiments.reproduce.detection import half, population
from bdprune.experiments.reproduce.presets import CPU
from bdprune.experiments.reproduce.store import Store
from bdprune.experiments.reproduce.work import draw_reserve
from bdprune.files import atomic_write_bytes
from bdprune.repair import load_suspect
from bdprune.runs import rebuild_run_data

TOOK = 80.0  # percent test ASR: the backdoor took
REPAIRED = 5.0  # percent test ASR after repair: the repair worked
FPR = 0.05
CANDIDATES = list(STATISTICS)


def statistics_of(store: Store, run: str, seed: int, repaired: bool, cache: Path) -> dict[str, Any]:
    """Every candidate statistic of a stored model, and with `repaired` of its BNP (MAD rule) repair, with
    the scan cell's clean samples (500 of the run's reserve, drawn with the run's seed); cached."""
    path = cache / f"{run}.json"
    if path.is_file():
        return json.loads(path.read_text())
    suspect = load_suspect(store.run_dir(run))
    clean, _ = draw_reserve(rebuild_run_data(suspect.card, suspect.attack, None), 500, 0, seed)
    entry: dict[str, Any] = {"stats": bnp_statistics(suspect.model, clean)[1]}
    if repaired:
        fixed, report = BNP(rule="mad").run(suspect.model, DefenseData(clean=clean))
        entry.update(after=bnp_statistics(fixed, clean)[1], after_pruned=report.num_pruned)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entry))
    return entry


def models(store: Store, cache: Path) -> list[dict[str, Any]]:
    """One entry per population model with a finished scan cell: its group, half, training metrics, its
    statistics (recomputed), what its scan cells found."""
    members = {c.spec["run"] for _, c in population(CPU)}
    runs: dict[str, dict[str, Any]] = {}
    for record in store.records():
        cell = record["cell"]
        if cell["kind"] == "train" and cell["experiment"] in ("detection", "detection-extra"):
            runs.setdefault(cell["spec"]["run"], {})["train"] = record
        elif cell["kind"] == "scan":
            entry = runs.setdefault(cell["spec"]["run"], {})
            entry["group"] = cell["row"]
            entry[cell["spec"]["part"]] = record
    out = []
    for run, entry in runs.items():
        if run not in members or "bnp" not in entry or entry.get("train", {}).get("status") != "ok":
            continue
        train = entry["train"]
        config = train["cell"]["spec"]["config"]
        asr = train["metrics"].get("asr")
        group = entry["group"]
        kind = "clean" if group == "clean" else ("backdoored" if asr is not None and asr >= TOOK else "did not take")
        bnp = entry["bnp"]
        extra = entry.get("extra")
        computed = statistics_of(store, run, config["seed"], group != "clean", cache)
        after = None
        if bnp.get("after"):
            after = {"metrics": bnp["after"]["metrics"], "statistics": computed["after"]}
        out.append(
            {
                "run": run,
                "group": group,
                "kind": kind,
                "half": half(config["seed"]),
                "seed": config["seed"],
                "config": config,
                "acc": train["metrics"]["acc"],
                "asr": asr,
                "stats": computed["stats"],
                "after": after,
                "nc": extra["nc"]["anomaly_index"] if extra else None,
                "ep": extra["ep"] if extra else None,
            }
        )
    return sorted(out, key=lambda m: m["seed"])


def margin(neg: list[float], pos: list[float]) -> float:
    """(10th percentile of the positives - 95th percentile of the negatives) / (std of the negatives + std of
    the positives): how far apart the two groups sit in their own spread (Fisher-like; a single outlier on
    either side moves it little)."""
    if len(neg) < 2 or len(pos) < 2:
        return math.nan
    n, p = torch.tensor(neg, dtype=torch.float64), torch.tensor(pos, dtype=torch.float64)
    spread = float(n.std() + p.std())
    return float((p.quantile(0.1) - n.quantile(0.95)) / spread) if spread > 0 else math.nan


def split(ms: list[dict[str, Any]], score) -> tuple[list[float], list[float]]:
    neg = [score(m) for m in ms if m["kind"] == "clean"]
    pos = [score(m) for m in ms if m["kind"] == "backdoored"]
    return neg, pos


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="the --out of `bdprune reproduce detection`")
    p.add_argument("--out", required=True, help="the Markdown file to write (the ROC plot goes beside it)")
    p.add_argument("--cache", default=None, help="where recomputed statistics are kept (default STORE/statistics)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--preamble", help="a Markdown file written first (the narrative, the bar's outputs)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ms = models(Store(args.store), Path(args.cache or Path(args.store) / "statistics"))
    cal = [m for m in ms if m["half"] == "calibration"]
    ev = [m for m in ms if m["half"] == "evaluation"]
    text = [Path(args.preamble).read_text()] if args.preamble else ["# Detection (issue 25, cpu preset)\n"]
    text.append("# The tables (written by benchmarks/detection_report.py from the store)\n")
    counts = [
        [h, str(sum(m["kind"] == k for m in ms if m["half"] == h))]
        for h in ("calibration", "evaluation")
        for k in ("clean", "backdoored", "did not take")
    ]
    text.append(
        "Models scanned (clean / backdoored with test ASR >= 80 % / did not take), calibration then evaluation: "
        + ", ".join(c[1] for c in counts)
        + ".\n"
    )

    # 1. the calibration half chooses the statistic (ROC-AUC, then TPR at 5 % FPR) and its threshold
    rows, best = [], None
    for name in CANDIDATES:
        neg, pos = split(cal, lambda m, n=name: m["stats"][n])
        auc, tpr, gap = roc_auc(neg, pos), tpr_at_fpr(neg, pos, FPR), margin(neg, pos)
        rows.append(
            [
                name,
                fmt(auc),
                fmt(tpr),
                fmt(gap, 2),
                fmt(max(neg) if neg else None, 2),
                fmt(min(pos) if pos else None, 2),
            ]
        )
        if best is None or (auc, tpr, gap) > best[1:]:
            best = (name, auc, tpr, gap)
    statistic = best[0]
    neg, pos = split(cal, lambda m: m["stats"][statistic])
    threshold = choose_threshold(neg, pos, FPR)
    text += [
        "## Calibration half: choosing the statistic and the threshold\n",
        table(["statistic", "ROC-AUC", "TPR @ 5% FPR", "margin", "max clean", "min backdoored"], rows),
        f"Chosen: **{statistic}** (highest ROC-AUC, then TPR at 5 % FPR, then margin: the gap between the 95th "
        "percentile of the clean scores and the 10th of the backdoored ones, over the sum of the two groups' "
        f"standard deviations), threshold **{threshold:.2f}** (midway between the highest clean score allowed under 5 % FPR "
        "and the lowest backdoored score above it).\n",
    ]

    # 2. the evaluation half: overall, per attack, NC beside
    score = lambda m: m["stats"][statistic]
    neg, pos = split(ev, score)
    nc_ms = [m for m in ev if m["nc"] is not None]
    nneg, npos = split(nc_ms, lambda m: m["nc"])
    text += [
        "## Evaluation half\n",
        table(
            [
                "method",
                "models (clean / backdoored)",
                "ROC-AUC",
                "TPR @ 5% FPR (ROC)",
                "TPR at its threshold",
                "FPR at its threshold",
            ],
            [
                [
                    f"scan ({statistic} > {threshold:.2f})",
                    f"{len(neg)} / {len(pos)}",
                    fmt(roc_auc(neg, pos)),
                    fmt(tpr_at_fpr(neg, pos, FPR)),
                    fmt(flagged(pos, threshold)),
                    fmt(flagged(neg, threshold)),
                ],
                [
                    "Neural Cleanse (anomaly index > 2)",
                    f"{len(nneg)} / {len(npos)}",
                    fmt(roc_auc(nneg, npos)),
                    fmt(tpr_at_fpr(nneg, npos, FPR)),
                    fmt(flagged(npos, 2.0)),
                    fmt(flagged(nneg, 2.0)),
                ],
            ],
        ),
    ]
    rows = []
    for group in dict.fromkeys(m["group"] for m in ms if m["group"] != "clean"):
        gp = [m for m in ev if m["group"] == group and m["kind"] == "backdoored"]
        missed = [m for m in ev if m["group"] == group and m["kind"] == "did not take"]
        gnc = [m for m in gp if m["nc"] is not None]
        rows.append(
            [
                group,
                str(len(gp)),
                fmt(tpr_at_fpr(neg, [score(m) for m in gp], FPR)) if gp else "-",
                fmt(flagged([score(m) for m in gp], threshold)) if gp else "-",
                ", ".join(f"{score(m):.1f}" for m in gp),
                fmt(tpr_at_fpr(nneg, [m["nc"] for m in gnc], FPR)) if gnc else "-",
                fmt(flagged([m["nc"] for m in gnc], 2.0)) if gnc else "-",
                f"{len(missed)} ({', '.join(f'{score(m):.1f}' for m in missed)})" if missed else "0",
            ]
        )
    text += [
        "### Per attack (evaluation half)\n",
        table(
            [
                "attack",
                "backdoored",
                "scan TPR @ 5% FPR",
                "scan TPR at threshold",
                "scores",
                "NC TPR @ 5% FPR",
                "NC TPR at 2",
                "did not take (scores)",
            ],
            rows,
        ),
        "Clean scores (evaluation half): " + ", ".join(f"{x:.1f}" for x in sorted(neg)) + ".\n",
    ]

    # EP's evidence (evaluation half, where the extra cells ran first): descriptive, not part of the verdict
    rows = []
    for group in dict.fromkeys(m["group"] for m in ms):
        gm = [m for m in ev if m["group"] == group and m["ep"] is not None and m["kind"] != "did not take"]
        if not gm:
            continue
        e = [m["ep"] for m in gm]
        rows.append(
            [
                group,
                str(len(gm)),
                ", ".join(fmt(x["entropy_max_z"], 1) for x in e),
                ", ".join(f"{100 * x['group_share']:.0f}%" for x in e),
                ", ".join(f"{100 * x['group_purity']:.0f}%" for x in e),
                ", ".join(fmt(x.get("diag_precision"), 2) for x in e),
                ", ".join(fmt(x.get("diag_recall"), 2) for x in e),
            ]
        )
    text += [
        "### EP's evidence with the training set (evaluation half, first 5000 training samples)\n",
        "Descriptive only: it is not part of the verdict (no rule combining it was calibrated). Precision and "
        "recall of the suspected samples against the poisoned flags are diagnostics (the flags choose nothing).\n",
        table(
            [
                "group",
                "models",
                "lowest entropy (robust z)",
                "group size",
                "group's dominant label",
                "precision",
                "recall",
            ],
            rows,
        ),
    ]

    # 3. after repair
    rows = []
    for h, hs in (("calibration", cal), ("evaluation", ev)):
        fixed = [m for m in hs if m["kind"] == "backdoored" and m["after"] and m["after"]["metrics"]["asr"] < REPAIRED]
        quiet = [m for m in fixed if m["after"]["statistics"][statistic] <= threshold]
        rows.append([h, str(len(fixed)), f"{len(quiet)} ({fmt(len(quiet) / len(fixed) if fixed else None)})"])
    text += [
        "## After repair\n",
        table(["half", "repairs with ASR < 5 %", "scan says `no evidence`"], rows),
    ]
    text.append(plot_roc(ev, statistic, Path(args.out).with_suffix(".png")))
    text += ["## Every model\n", every_model(ms, statistic)]
    atomic_write_bytes(args.out, "\n".join(text).encode())
    print(f"wrote {args.out}")


def every_model(ms: list[dict[str, Any]], statistic: str) -> str:
    rows = []
    for m in ms:
        c = m["config"]
        after = m["after"]
        rows.append(
            [
                str(m["seed"]),
                m["half"][:4],
                m["group"],
                m["kind"],
                f"w{c['model_args'].get('base_width')} {c['augment']} {c['train']['epochs']}ep {c['train_subset']}",
                f"{c['rate']:g}/{c['target']}" if m["group"] != "clean" else "",
                fmt(m["acc"], 1),
                fmt(m["asr"], 1),
                fmt(m["stats"][statistic], 1),
                fmt(m["nc"], 2),
                fmt(after["metrics"]["asr"], 1) if after else "",
                fmt(after["statistics"][statistic], 1) if after else "",
            ]
        )
    return table(
        [
            "seed",
            "half",
            "group",
            "kind",
            "model",
            "rate/target",
            "ACC",
            "ASR",
            statistic,
            "NC index",
            "ASR after",
            "score after",
        ],
        rows,
    )


def plot_roc(ev: list[dict[str, Any]], statistic: str, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    neg, pos = split(ev, lambda m: m["stats"][statistic])
    xs, ys = zip(*roc_curve(neg, pos))
    ax.step(xs, ys, where="post", label=f"scan ({statistic}), AUC {roc_auc(neg, pos):.3f}")
    nc = [m for m in ev if m["nc"] is not None]
    if nc:
        nneg, npos = split(nc, lambda m: m["nc"])
        xs, ys = zip(*roc_curve(nneg, npos))
        ax.step(xs, ys, where="post", label=f"Neural Cleanse, AUC {roc_auc(nneg, npos):.3f}")
    ax.axvline(FPR, color="grey", lw=0.8, ls=":")
    ax.set(
        xlabel="false positive rate (clean models)", ylabel="true positive rate (backdoored)", title="evaluation half"
    )
    ax.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return f"![ROC, evaluation half]({path.name})\n"


if __name__ == "__main__":
    main()
