"""Wall-clock cost of the whole default repairs (issue 23) on a saved cpu-preset run: `ep` (score, consensus
rule, held-out check, then the unlearning stage: read the training set's features, detect, unlearn + fine-tune,
guard) and `bnp` (score, guarded rule, held-out check); `unlearn`, `bnp-recover` and FT-SAM for comparison.
The target: each under 3 minutes on 2 cores. Then what `bdprune defend` adds to each (not part of the target):
the trigger witness (`bdprune.detection.witness`: one trigger search, two passes over 100 held-out samples).

    python benchmarks/repair_cost.py RUN_DIR [--threads 2] [--methods ep,bnp,unlearn,ft-sam]

Prints one line per method: wall-clock and CPU seconds of the defense (data loading excluded; on a shared
machine the CPU time over the thread count is the better estimate of a quiet machine's wall clock) and what
the guard said.
"""

from __future__ import annotations

import argparse
import time

import torch

from bdprune import repair
from bdprune.defenses import create_defense


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory made by `bdprune train --preset cpu`")
    p.add_argument("--methods", default="ep,bnp")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    suspect = repair.load_suspect(args.run)
    data, _ = repair.defender_data(suspect, {"train", "clean"}, clean_samples=500, seed=0)
    print(f"{args.run}: {len(data.train)} training samples, {len(data.clean)} clean samples, {args.threads} threads")
    for method in args.methods.split(","):
        start, cpu = time.perf_counter(), time.process_time()
        _, report = create_defense(method).run(suspect.model, data)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        guard = report.extra.get("unlearn", report.extra).get("guard", {}).get("message", "")
        print(
            f"{method:12s} {wall:7.1f} s  (report {report.seconds:.1f} s)  {'OK' if wall <= 180 else 'OVER 3 min'}  {guard}"
        )
    start = time.perf_counter()
    repair.witness_record(suspect.model, suspect.model, data.clean)
    print(f"{'witness':12s} {time.perf_counter() - start:7.1f} s  (added to every `bdprune defend` with clean samples)")


if __name__ == "__main__":
    main()
