"""The `bdprune diagnose` subcommand: its options and what it prints (the work: `bdprune.experiments.regime`)."""

from __future__ import annotations

import argparse
import sys

import torch

from ..experiments.regime import analyze_runs

HELP = "how many neurons hold the backdoor (k*), and EP / BNP against it"
DETAILS = (
    "For runs made by `bdprune train` (their poisoned samples are known): prune in order of separation of "
    "poisoned from benign samples, and in EP's and BNP's order, and report ASR/ACC curves and k*, the neurons "
    "needed for ASR < 5%. A diagnostic: it reads the test set and the poisoned flags."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--curve-samples", type=int, default=2000, help="test samples for the curves (default 2000)")
    p.add_argument("--test-samples", type=int, help="test samples for the defenses' ACC / ASR (default: all)")


def command(args: argparse.Namespace, device: torch.device) -> int:
    table = analyze_runs(
        args.runs,
        args.out,
        curve_samples=args.curve_samples,
        test_samples=args.test_samples,
        device=device,
        progress=not args.quiet,
    )
    print(table)
    print(
        f"wrote {args.out}: regime.md, and per run analysis.json, concentration.json, concentration.png",
        file=sys.stderr,
    )
    return 0
