"""How a pruned neuron is silenced, measured: "bn" (BN weight and bias zeroed), "bn-weight" (the official
code: BN weight only, the neuron keeps emitting its bias) and "conv" (the paper's mask on the conv filter:
the neuron emits beta - gamma * mu / sigma).

For each saved run, BNP (500 clean samples of the run's reserve) and EP (the run's training set) choose
their neurons once; the same neurons are then silenced each way and the model is evaluated on the rest of
the run's clean reserve (held-out samples of the *training* file, never the test file): ACC, and ASR on
those samples with the trigger.

    python benchmarks/silencing.py runs/badnets_s1 runs/blended_s1 [--rule iterative --u 3.5]
"""

from __future__ import annotations

import argparse

import torch

from bdprune.checkpoint import load_checkpoint
from bdprune.defenses import BNP, EP, DefenseData
from bdprune.defenses.scores import neuron_layers
from bdprune.metrics import attack_success_rate, clean_accuracy
from bdprune.neurons.mask import SILENCE_MODES, ChannelMask, masked
from bdprune.runs import rebuild_run_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories made by `bdprune train`")
    p.add_argument("--rule", default="zscore")
    p.add_argument("--u", type=float, default=3.0)
    p.add_argument("--clean-samples", type=int, default=500)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"rule {args.rule}, u {args.u}; ACC / ASR in % on the run's held-out clean reserve")
    for path in args.runs:
        ckpt = load_checkpoint(path)
        data = rebuild_run_data(ckpt.card, ckpt.attack)
        clean = data.reserve.sample(args.clean_samples, torch.Generator().manual_seed(0))
        used = set(clean.indices.tolist())
        held_out = data.reserve.subset([p for p, i in enumerate(data.reserve.indices.tolist()) if i not in used])
        layers = {layer.name: layer for layer in neuron_layers(ckpt.model, held_out, require_bn=True)}
        print(f"{path} ({len(held_out)} held-out samples)")
        print(
            f"  {'none':18s} pruned   0  ACC {100 * clean_accuracy(ckpt.model, held_out):6.2f}  "
            f"ASR {100 * attack_success_rate(ckpt.model, held_out, ckpt.attack):6.2f}"
        )
        for defense, defender_data in (
            (BNP.from_options(u=args.u, rule=args.rule), DefenseData(clean=clean)),
            (EP.from_options(u=args.u, rule=args.rule), DefenseData(train=data.train)),
        ):
            _, report = defense.run(ckpt.model, defender_data)
            mask = ChannelMask(report.pruned)
            for mode in SILENCE_MODES:
                with masked(ckpt.model, layers, mask, mode):
                    acc = 100 * clean_accuracy(ckpt.model, held_out)
                    asr = 100 * attack_success_rate(ckpt.model, held_out, ckpt.attack)
                print(f"  {defense.name + ' ' + mode:18s} pruned {mask.count:3d}  ACC {acc:6.2f}  ASR {asr:6.2f}")


if __name__ == "__main__":
    main()
