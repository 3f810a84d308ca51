"""Issue 23's development measurements: each repair beyond pruning, and the baselines, on saved runs.

For every run and method: ACC / ASR on the whole test set, seconds, and for the detectors (unlearn's, the
spectral-signature and activation-clustering baselines) precision / recall of the suspected group against the
ground-truth poisoning flags (diagnostics only: no method reads them). One JSON line per (run, method) is
appended to `--out` (a finished pair is skipped when the script runs again), and a row is printed.

    python benchmarks/repair_dev.py RUN_DIR [RUN_DIR ...] --methods none,ft-sam,recover,bnp-recover,unlearn,detect
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bdprune import repair
from bdprune.defenses import create_defense
from bdprune.metrics import evaluate
from bdprune.samples.baselines import activation_clustering, spectral_signatures
from bdprune.samples.detector import detect_in_features
from bdprune.samples.features import SampleFeatures, sample_features
from bdprune.samples.result import precision_recall


def detection_rows(suspect, data, cache: Path | None = None) -> list[dict]:
    """The detectors alone: suspected group against the flags (diagnostics). `cache`: a file of the same
    features saved earlier by a scratch script (features, logits, labels), to skip the forward pass."""
    start = time.perf_counter()
    if cache is not None and cache.exists():
        saved = torch.load(cache, weights_only=True)
        features = SampleFeatures(saved["features"], saved["logits"], saved["labels"])
        assert torch.equal(features.labels, data.train.labels), "the cached features are of another training set"
    else:
        features = sample_features(suspect.model, data.train)
    read = time.perf_counter() - start
    rows = []
    for found in (detect_in_features(features), spectral_signatures(features), activation_clustering(features)):
        precision, recall = precision_recall(found.mask(len(data.train)), data.train_poisoned)
        flagged = [c["class"] for c in found.classes if c.get("poisoned")]
        rows.append(
            {
                "method": f"detect:{found.method}",
                "suspected": len(found.indices),
                "precision": precision,
                "recall": recall,
                "classes": flagged,
                "seconds": read + found.seconds,
            }
        )
    return rows


def table(path: Path) -> str:
    """The results file as a markdown table: one row per run, one column group per method."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    runs = list(dict.fromkeys(r["run"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["run"], r["method"]): r for r in rows}
    lines = [
        "| run | method | ACC | ASR | seconds | suspected | precision | recall | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)
    for run in runs:
        for method in methods:
            r = by.get((run, method))
            if r is None:
                continue
            note = r.get("guard") or (",".join(map(str, r["classes"])) if r.get("classes") else "")
            cells = [r.get(k) for k in ("acc", "asr", "seconds", "suspected", "precision", "recall")]
            lines.append(f"| {run} | {method} | " + " | ".join(fmt(c) for c in cells) + f" | {note} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--methods", default="none,detect,unlearn,ft-sam,recover,bnp-recover")
    p.add_argument("--defense-arg", action="append", default=[], help="METHOD:KEY=VALUE")
    p.add_argument("--tag", default="", help="suffix of the method name in the output (variants)")
    p.add_argument("--out", default="/work/runs/repair/results.jsonl")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--features", default="/work/runs/repair/feats", help="folder of cached RUN.pt features")
    p.add_argument("--table", action="store_true", help="print the results file as a markdown table and stop")
    args = p.parse_args()
    if args.table:
        print(table(Path(args.out)))
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["run"], r["method"]))
    params: dict[str, dict] = {}
    for item in args.defense_arg:
        method, assignment = item.split(":", 1)
        key, value = assignment.split("=", 1)
        params.setdefault(method, {})[key] = value  # create_defense parses it by the declared type
    for run in args.runs:
        name = Path(run).name
        suspect = repair.load_suspect(run)
        data, test = repair.defender_data(suspect, {"train", "clean"}, clean_samples=500, seed=0)
        for method in args.methods.split(","):
            label = method + args.tag
            if (name, label) in done or (method == "detect" and (name, "detect:label-clusters" + args.tag) in done):
                continue
            if method == "detect":
                rows = detection_rows(suspect, data, Path(args.features) / f"{name}.pt")
                for r in rows:
                    r["method"] += args.tag
            elif method == "none":
                rows = [{"method": label, "seconds": 0.0, **evaluate(suspect.model, test, suspect.attack)}]
            else:
                defense = create_defense(method, **params.get(method, {}))
                repaired, report = defense.run(suspect.model, data)
                row = {"method": label, "seconds": report.seconds, **evaluate(repaired, test, suspect.attack)}
                if "detection" in report.extra:
                    mask = torch.zeros(len(data.train), dtype=torch.bool)
                    mask[report.extra["suspected_indices"]] = True
                    row["precision"], row["recall"] = precision_recall(mask, data.train_poisoned)
                row["guard"] = report.extra.get("guard", {}).get("message")
                row["pruned"] = report.num_pruned or report.extra.get("bnp", {}).get("pruned", 0)
                rows = [row]
            with out.open("a") as f:
                for r in rows:
                    r = {"run": name, **{k: v for k, v in r.items() if not isinstance(v, torch.Tensor)}}
                    f.write(json.dumps(r) + "\n")
                    shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}
                    print(json.dumps(shown), flush=True)


if __name__ == "__main__":
    main()
