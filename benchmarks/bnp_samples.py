"""BNP against the number of clean samples (the paper's section 5.3 ablation), on saved runs.

The run's clean reserve (held-out samples of the training file) is shuffled once: the first `--pool`
samples are where BNP's clean samples come from (the first n of them), the rest measure ACC and ASR. The
test file is never read.

    python benchmarks/bnp_samples.py runs/badnets_s1 [--sizes 10,50,100,500,1000] [--rules zscore:3,iterative:3.5]
"""

from __future__ import annotations

import argparse

import torch

from bdprune.checkpoint import load_checkpoint
from bdprune.defenses import BNP, DefenseData
from bdprune.metrics import attack_success_rate, clean_accuracy
from bdprune.runs import rebuild_run_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories made by `bdprune train`")
    p.add_argument("--sizes", default="10,50,100,500,1000")
    p.add_argument("--rules", default="zscore:3,iterative:3.5", help="RULE:U pairs")
    p.add_argument("--pool", type=int, default=1000, help="reserve samples BNP may draw from")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    rules = [(r.split(":")[0], float(r.split(":")[1])) for r in args.rules.split(",")]
    if max(sizes) > args.pool:
        p.error(f"the largest size ({max(sizes)}) exceeds --pool ({args.pool})")
    for path in args.runs:
        ckpt = load_checkpoint(path)
        data = rebuild_run_data(ckpt.card, ckpt.attack)
        order = torch.randperm(len(data.reserve), generator=torch.Generator().manual_seed(args.seed))
        pool, held_out = data.reserve.subset(order[: args.pool]), data.reserve.subset(order[args.pool :])
        print(
            f"{path}: none  ACC {100 * clean_accuracy(ckpt.model, held_out):6.2f}  "
            f"ASR {100 * attack_success_rate(ckpt.model, held_out, ckpt.attack):6.2f}  ({len(held_out)} held out)"
        )
        for rule, u in rules:
            for n in sizes:
                repaired, report = BNP.from_options(u=u, rule=rule).run(
                    ckpt.model, DefenseData(clean=pool.subset(torch.arange(n)))
                )
                print(
                    f"  {rule:9s} u={u:<4g} n={n:5d}  pruned {report.num_pruned:3d}  "
                    f"ACC {100 * clean_accuracy(repaired, held_out):6.2f}  "
                    f"ASR {100 * attack_success_rate(repaired, held_out, ckpt.attack):6.2f}  {report.seconds:.2f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
