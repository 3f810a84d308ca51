"""What the default rules cost against the paper's, on one trained backdoored run, measured in one run.

EP's default rule (consensus) and BNP's (guarded), each with the held-out check, against the same defense
under the paper's rule (z-score, u = 3, no check; EP without its detector and unlearning stage), on the same model and data, interleaved, best of
`--repeats`:

    python benchmarks/rule_cost.py runs/demo/backdoored        # the demo's BadNets model (bdprune demo)
    python benchmarks/rule_cost.py RUN --threads 2

Prints seconds and neurons pruned per variant and the ratio of each default to the paper's rule (targets of
issue 24: BNP <= 5x, EP <= 1.5x).
"""

from __future__ import annotations

import argparse
import time

import torch

from bdprune import repair
from bdprune.defenses import create_defense

VARIANTS = (
    ("BNP, paper's rule", "bnp", {"rule": "zscore", "u": 3.0, "max_harm": None}),
    ("BNP, default", "bnp", {}),
    ("EP, paper's rule", "ep", {"rule": "zscore", "u": 3.0, "max_harm": None, "then": "none"}),
    ("EP, default", "ep", {}),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory made by bdprune train (backdoored)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", default="", help="comma-separated methods to time (ep, bnp); default both")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    suspect = repair.load_suspect(args.run)
    data, _ = repair.defender_data(suspect, {"train", "clean"}, clean_samples=500, seed=0)
    only = {m for m in args.only.split(",") if m}
    best: dict[str, float] = {}
    pruned: dict[str, int] = {}
    for _ in range(args.repeats):
        for label, method, options in VARIANTS:
            if only and method not in only:
                continue
            start = time.perf_counter()
            _, report = create_defense(method, **options).run(suspect.model, data)
            best[label] = min(best.get(label, float("inf")), time.perf_counter() - start)
            pruned[label] = report.num_pruned
    print(f"{'variant':<20} {'seconds':>8} {'pruned':>7}")
    for label in best:
        print(f"{label:<20} {best[label]:>8.2f} {pruned[label]:>7}")
    for method in ("BNP", "EP"):
        paper, default = best.get(f"{method}, paper's rule"), best.get(f"{method}, default")
        if paper and default:
            print(f"{method}: default / paper's rule = {default / paper:.1f}x")
    print(f"threads {torch.get_num_threads()}, {len(data.train)} training samples, {len(data.clean)} clean samples")


if __name__ == "__main__":
    main()
