"""The `bdprune` command: each subcommand parses, chooses the device, calls the library and prints.

A `BdpruneError` (input the user can fix) is printed as one line with exit status 2; anything else is a bug
and shows its traceback. Machine-readable results go to JSON files.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import textwrap
from collections.abc import Sequence

import torch

from .. import __version__, repair
from ..attacks import ATTACKS, list_attacks
from ..attacks.adaptive import ADAPTIVE, list_adaptive
from ..compare import compare_run
from ..config import PRESETS, RunConfig, configure
from ..defenses import create_defense, list_defenses, list_rules
from ..detection.witness import witness_line
from ..errors import BdpruneError, InvalidInput
from ..experiments.demo import DemoConfig, run_demo
from ..experiments.gallery import make_gallery_of
from ..files import atomic_write_json, check_output_dir
from ..metrics import evaluate
from ..models import choose_device
from ..neurons.entropy import ESTIMATORS, EXACT
from ..neurons.mask import SILENCE_MODES
from ..params import REQUIRED, add_options, key_values
from ..runs import train_run
from ..samples.result import describe_flagged
from ..table import format_table
from ..train import TrainConfig
from . import diagnose, reproduce

EPILOG = """\
examples:
  bdprune demo                                   the whole story on Fashion-MNIST in minutes (CPU)
  bdprune train --preset cpu --attack badnets --out runs/badnets
  bdprune evaluate runs/badnets
  bdprune defend runs/badnets --method bnp --out runs/badnets-bnp
"""


def setup(args: argparse.Namespace, out: str | None = None, inputs=()) -> torch.device:
    """The device and threads asked for; an output directory checked before any work is done."""
    if out is not None:
        check_output_dir(out, inputs=[i for i in inputs if i])
    if args.threads is not None:
        if args.threads < 1:
            raise InvalidInput(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return choose_device(args.device)


# -- train, evaluate -----------------------------------------------------------------------------------------
def run_config(args: argparse.Namespace) -> RunConfig:
    given = {k: v for k, v in vars(args).items() if v is not None}
    fields = {
        f.name: None if f.name in ("attack", "adaptive") and given[f.name].lower() == "none" else given[f.name]
        for f in dataclasses.fields(RunConfig)
        if f.name in given
    }
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}  # `augment` is the run's (a name), not the loop's
    return configure(
        args.preset,
        train={
            f.name: given[f.name]
            for f in dataclasses.fields(TrainConfig)
            if f.name in given and f.name not in run_fields
        },
        model_args={**({"base_width": args.width} if args.width is not None else {}), **key_values(args.model_arg)},
        attack_params=key_values(args.attack_arg),
        adaptive_params=key_values(args.adaptive_arg),
        **fields,
    )


def cmd_train(args: argparse.Namespace) -> int:
    device, config = setup(args, args.out), run_config(args)
    print(
        f"training {config.model} {config.model_args} on {config.dataset}, attack {config.attack} "
        f"(rate {config.rate}, {config.mode}, target {config.target}), {config.train.epochs} epochs, "
        f"seed {config.seed}, device {device}",
        file=sys.stderr,
    )
    cache = None if str(args.cache_dir).lower() == "none" else args.cache_dir
    metrics = train_run(config, args.out, device=device, progress=not args.quiet, cache_dir=cache)
    print(
        format_table(
            [
                {
                    "run": str(args.out),
                    "ACC %": metrics["acc"],
                    "ASR %": metrics.get("asr"),
                    "train s": metrics["train_seconds"],
                }
            ]
        )
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    suspect = repair.load_suspect(args.run, device=setup(args))
    result = {
        "run": str(args.run),
        **evaluate(
            suspect.model,
            repair.test_set(suspect, args.data_dir),
            suspect.attack,
            with_backdoor_loss=True,
            per_class=True,
        ),
    }
    print(
        format_table(
            [
                {
                    "run": result["run"],
                    "ACC %": result["acc"],
                    "ASR %": result.get("asr"),
                    "backdoor loss": result.get("backdoor_loss"),
                }
            ]
        )
    )
    if args.json:
        atomic_write_json(args.json, result)
    return 0


# -- defend, compare -----------------------------------------------------------------------------------------
def load_suspect(args: argparse.Namespace, device: torch.device) -> tuple[repair.Suspect, dict]:
    """The suspicious model the options name, and where the defender's data comes from."""
    trigger = {
        "attack": args.attack,
        "params": key_values(args.attack_arg),
        "target": args.target,
        "seed": args.trigger_seed,
        "image": args.trigger_image,
        "mask": args.trigger_mask,
    }
    suspect = repair.load(
        args.model,
        weights=args.weights,
        arch=args.arch,
        dataset=args.dataset,
        model_args=key_values(args.model_arg),
        normalize=args.normalize,
        trigger=trigger,
        device=device,
    )
    sources = {
        "train": args.train_data,
        "train_indices": args.train_indices,
        "clean": args.clean_data,
        "clean_samples": args.clean_samples,
        "seed": args.seed,
        "data_dir": args.data_dir,
        "test_samples": args.test_samples,
    }
    return suspect, {k: v for k, v in sources.items() if v is not None}


def cmd_defend(args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k) for k in ("u", "rule", "count", "silence", "estimator", "max_samples")}
    defense = create_defense(
        args.method,
        batch_size=args.batch_size,
        progress=not args.quiet,
        **{k: v for k, v in flags.items() if v is not None},
        **key_values(args.defense_arg),
    )
    suspect, sources = load_suspect(args, setup(args, args.out, inputs=(args.model, args.weights)))
    # the scan before and after the repair reads clean samples: a run brings them, a foreign model with --clean-data
    scan_needs = {"clean"} if suspect.card.run is not None or args.clean_data else set()
    data, test = repair.defender_data(suspect, defense.needs | scan_needs, **sources)
    result = repair.repair(suspect, defense, data, test=test, out_dir=args.out, plots=not args.no_plots)
    for line in suspect.describe() + [f"warning: {w}" for w in result.warnings + result.report.warnings]:
        print(line, file=sys.stderr)
    before, after = result.metrics.get("before", {}), result.metrics.get("after", {})
    witness = result.metrics.get("trigger_witness", {})
    read = witness.get("confirmed")  # the witness's shares mean something only where a trigger was confirmed
    print(
        format_table(
            [
                {
                    "model": "suspicious",
                    "ACC %": before.get("acc"),
                    "ASR %": before.get("asr"),
                    "pruned": 0,
                    "scan": result.metrics.get("scan_before", {}).get("verdict"),
                    "trigger %": witness.get("before") if read else None,
                },
                {
                    "model": args.method.upper(),
                    "ACC %": after.get("acc"),
                    "ASR %": after.get("asr"),
                    "pruned": result.report.num_pruned,
                    "time s": result.report.seconds,
                    "scan": result.metrics.get("scan_after", {}).get("verdict"),
                    "trigger %": witness.get("after") if read else None,
                },
            ]
        )
    )
    if witness:
        print(f"trigger witness: {witness_line(witness)}")
    named = result.metrics.get("suspected")
    if named is not None:
        shown = [f"{k} {named[k]:.1f}%" for k in ("precision", "recall") if k in named and not math.isnan(named[k])]
        truth = f" (against the run's poisoning record, a diagnostic: {', '.join(shown)})" if shown else ""
        why = f" ({describe_flagged(named['labels'])})" if named.get("labels") else ""
        print(f"suspected poisoned training samples: {named['count']}{why}{truth}; their indices are in report.json")
    print(f"wrote {args.out}: {', '.join(result.written)}", file=sys.stderr)
    return 0


SCAN_HELP = "is this model backdoored? A verdict without the trigger, from BN statistics on clean samples"
SCAN_DETAILS = (
    "BNP's comparison of the clean samples' pre-activation Gaussians with the BN running statistics, per neuron "
    "(by default the log ratio of the running to the clean variance, which a poisoned mixture inflates), "
    "centred per layer (median) and scaled (MAD), gives the model a score; above the threshold (calibrated on a "
    "population of clean and backdoored models, docs/results/detection-cpu.md) the verdict is 'backdoored'. "
    "With the training set (--train-data for a foreign model, --use-train for a run directory's own) EP's "
    "entropies add the suspected samples. --method nc: Neural Cleanse's anomaly index (threshold 2), the "
    "baseline. Exit status: 0 no evidence, 1 backdoored, 2 bad input (one line on stderr); a bug also "
    "exits 1, with a traceback and no verdict line, so a pipeline gating on 0 fails closed."
)


def cmd_scan(args: argparse.Namespace) -> int:
    from ..detection import DEFAULT_STATISTIC
    from ..detection import scan as scan_model

    suspect, sources = load_suspect(args, setup(args))
    own_train = suspect.card.run is not None and args.use_train
    needs = {"clean"} | ({"train"} if own_train or "train" in sources else set())
    sources.pop("test_samples", None)
    data, _ = repair.defender_data(suspect, needs, **sources)
    train = data.train
    if train is not None and args.train_samples is not None:
        if args.train_samples < 1:
            raise InvalidInput(f"--train-samples must be at least 1, got {args.train_samples}")
        train = train.subset(torch.arange(min(len(train), args.train_samples)))
    result = scan_model(
        suspect.model,
        data.clean,
        train=train,
        method=args.method,
        statistic=args.statistic or DEFAULT_STATISTIC,
        threshold=args.threshold,
        top=args.top,
        batch_size=args.batch_size,
    )
    result.trigger_witness = repair.witness_record(suspect.model, None, data.clean)
    if args.json:
        print(result.to_json())
        return result.exit_status
    print(f"verdict: {result.line()}")
    print(f"trigger witness (not part of the verdict): {witness_line(result.trigger_witness)}")
    if result.method == "bnp":
        shown = ", ".join(f"{s['layer']}:{s['channel']} ({s['z']:.1f})" for s in result.suspects)
        print(f"suspect neurons (layer:channel (scaled {result.statistic.split('_')[0]})): {shown}")
    else:
        shown = ", ".join(f"{s['target']} (index {s['anomaly_index']:.2f})" for s in result.suspects[:3])
        print(f"smallest reversed triggers (label (anomaly index)): {shown}")
    if result.evidence is not None:
        e = result.evidence
        print(
            f"training set ({e['train_samples']} samples): EP's lowest entropy at robust z {e['entropy_max_z']:.1f}; "
            f"consensus group of {e['group_size']} samples, {100 * e['group_purity']:.0f}% labelled "
            f"{e['group_label']}, eta {e['eta']:.2f}" + (f" ({e['not_a_group']})" if e["not_a_group"] else "")
        )
        sample = result.suspected_samples or []
        print(f"suspected samples: {len(sample)}" + (f" (first: {', '.join(map(str, sample[:10]))})" if sample else ""))
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{result.samples} clean samples, {result.seconds:.1f} s", file=sys.stderr)
    return result.exit_status


def cmd_compare(args: argparse.Namespace) -> int:
    device = setup(args, args.out, inputs=(args.model, args.weights))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise InvalidInput(f"--methods names no defense ({args.methods!r}); give some of {', '.join(list_defenses())}")
    options = key_values(args.defense_arg)  # METHOD.KEY=VALUE
    if any(k.partition(".")[0] not in methods for k in options):
        raise InvalidInput(f"--defense-arg expects METHOD.KEY=VALUE with METHOD one of {methods}, got {list(options)}")
    defenses = [
        create_defense(
            m,
            batch_size=args.batch_size,
            progress=not args.quiet,
            **{k.partition(".")[2]: v for k, v in options.items() if k.partition(".")[0] == m},
        )
        for m in methods
    ]
    suspect, sources = load_suspect(args, device)
    result = compare_run(
        suspect,
        defenses,
        **sources,
        on_done=lambda row: print(
            f"{row['defense']}: ACC {row['ACC %']:.2f}  ASR "
            f"{row.get('ASR %') or 0:.2f}  pruned {row['pruned']}  "
            f"{row['time s']:.1f} s",
            file=sys.stderr,
        ),
    )
    print(result.table())
    for line in (
        suspect.describe()
        + [f"warning: {w}" for w in result.warnings]
        + [f"warning ({name}): {w}" for name, r in result.reports.items() for w in r.warnings[:5]]
    ):
        print(line, file=sys.stderr)
    if args.out:
        result.save(
            args.out,
            {"model": str(args.model or args.weights), "device": str(device), "threads": torch.get_num_threads()},
        )
        print(f"wrote {args.out}: comparison.json, comparison.md, reports/", file=sys.stderr)
    return 0


# -- demo, attacks -------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(
        DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)}),
        device=setup(args, args.out),
        progress=not args.quiet,
    )
    return 0


def cmd_attacks(args: argparse.Namespace) -> int:
    def listed(registry, name: str) -> str:  # "name=default, ..." of the declared hyperparameters
        return ", ".join(
            f"{n}={'(required)' if p.default is REQUIRED else repr(p.default)}"
            for n, p in registry.get(name).parameters().items()
        )

    learned = list_attacks(learned=True)
    print(
        format_table(
            [
                {
                    "attack": n,
                    "kind": "learned"
                    if n in learned
                    else "clean-label"
                    if ATTACKS.get(n).clean_label
                    else "dirty-label",
                    "what": (ATTACKS.get(n).__doc__ or "").strip().splitlines()[0],
                    "parameters (defaults)": listed(ATTACKS, n),
                }
                for n in list_attacks()
            ]
        )
    )
    print("\nadaptive objectives (bdprune train --adaptive NAME --adaptive-arg KEY=VALUE; --bn-reparam for G.1):")
    print(format_table([{"objective": n, "parameters (defaults)": listed(ADAPTIVE, n)} for n in list_adaptive()]))
    if args.gallery:
        gallery = make_gallery_of(
            args.dataset, args.gallery, runs=args.run or [], data_dir=args.data_dir, count=args.count, seed=args.seed
        )
        print(
            *(f"gallery: left out {name}: {why}" for name, why in gallery.skipped.items()),
            f"wrote {gallery.path} ({', '.join(gallery.shown)})",
            sep="\n",
            file=sys.stderr,
        )
    return 0


# -- entry point ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="bdprune",
        epilog=EPILOG,
        formatter_class=raw,
        description="Find and prune backdoor neurons in image classifiers (EP and BNP, NeurIPS 2022).",
    )
    parser.add_argument("--version", action="version", version=f"bdprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: cuda if available)")
    common.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    defender = argparse.ArgumentParser(add_help=False, parents=[common])
    defender.add_argument("model", nargs="?", help="run directory of a saved model (holding model.json)")
    defender.add_argument("--data-dir", help="where the dataset lives, if not where the run found it")
    defender.add_argument("--clean-samples", type=int, default=500, help="clean samples (default 500, the paper's)")
    defender.add_argument("--seed", type=int, default=0, help="seed for drawing the clean (and test) samples")
    defender.add_argument("--batch-size", type=int, default=256, help="samples per forward pass")
    defender.add_argument("--test-samples", type=int, help="evaluate on this many random test samples (default: all)")
    g = defender.add_argument_group("foreign model (instead of a run directory; see the README)")
    g.add_argument("--weights", help="a .safetensors or .pt/.pth state dict (never unpickled beyond tensors)")
    g.add_argument("--arch", help="torchvision:NAME, timm:NAME, resnet18, preact_resnet18 or wrn28_1")
    g.add_argument("--dataset", help="the dataset the model classifies (its image shape and classes)")
    g.add_argument(
        "--normalize",
        choices=list(repair.NORMALIZATIONS),
        help="the input normalisation it was trained "
        "with: 'dataset' (its mean/std; the default), 'none' (images in [0, 1]) or 'imagenet'",
    )
    g.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        help="architecture arguments: in_channels=1 "
        "(a 1-channel stem), image_channels=1 (grey images repeated to a 3-channel stem), mean=, std=",
    )
    g.add_argument(
        "--train-data",
        "--train-dir",
        help="EP: the training set: the dataset's files (IDX, CIFAR batches), "
        "an .npz/.safetensors of images and labels, or a folder per class",
    )
    g.add_argument("--train-indices", help="EP: the samples of --train-data to use: START:STOP or a file of integers")
    g.add_argument(
        "--clean-data", "--clean-dir", help="clean samples, as --train-data (default: the dataset's train split)"
    )
    g = defender.add_argument_group("trigger (a foreign model's ASR)")
    g.add_argument("--attack", help="a registered attack (see `bdprune attacks`), e.g. badnets")
    g.add_argument("--attack-arg", action="append", metavar="KEY=VALUE", help="its parameters, e.g. pattern=white")
    g.add_argument("--target", type=int, help="the backdoor's target class")
    g.add_argument("--trigger-seed", type=int, default=0, help="seeds a random trigger (recorded with the repair)")
    g.add_argument("--trigger-image", metavar="PNG", help="a trigger image of the dataset's size, pasted through...")
    g.add_argument("--trigger-mask", metavar="PNG", help="...this mask (white: trigger, black: image)")

    def command(name: str, func, help: str, details: str = "", parents=(common,), **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=textwrap.fill(f"{help[0].upper()}{help[1:]}. {details}"),
            parents=list(parents),
            formatter_class=raw,
            **kw,
        )
        p.set_defaults(func=func)
        return p

    p = command(
        "train",
        cmd_train,
        "train a (backdoored) model and save it with its run record",
        "The output directory gets model.safetensors, model.json (the sidecar) and metrics.json.",
    )
    g = p.add_argument_group("run (each option overrides the preset)")
    g.add_argument(
        "--preset",
        default="cpu",
        choices=sorted(PRESETS),
        help="'cpu' (Fashion-MNIST, ResNet-18 width 16, 2 epochs: minutes on 2 cores) or the paper's GPU settings",
    )
    add_options(g, RunConfig)
    add_options(g, TrainConfig)
    g.add_argument("--width", type=int, help="base width of a ResNet (64 in the paper)")
    for name in ("model", "attack", "adaptive"):
        g.add_argument(f"--{name}-arg", action="append", metavar="KEY=VALUE", help=f"{name} arguments, e.g. size=3")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--cache-dir", default="runs/cache", help="fits of learned attacks (default runs/cache; 'none': off)"
    )

    p = command("evaluate", cmd_evaluate, "ACC, ASR and backdoor loss of a saved model on its dataset's test split")
    p.add_argument("run", help="run directory (holding model.json)")
    p.add_argument("--data-dir", help="where the dataset lives, if not where the run found it")
    p.add_argument("--json", help="also write the result to this JSON file")

    p = command(
        "defend",
        cmd_defend,
        "repair a saved model with EP, BNP or a baseline defense",
        "EP needs the training set, CLP no data, the others clean samples. A run made by `bdprune train` "
        "brings its data; a foreign state dict needs --weights, --arch and --dataset (and --train-data for EP). "
        "Writes the repaired model, a report of every neuron's score, plots, and ACC/ASR before and after.",
        parents=(defender,),
    )
    p.add_argument("--method", required=True, choices=list_defenses(), help="ep, bnp, or a baseline (see compare)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-plots", action="store_true", help="skip scores.png and neurons.png")
    g = p.add_argument_group("defense")
    g.add_argument("--u", type=float, help="threshold in (robust) standard deviations (default: the rule's; zscore 3)")
    g.add_argument(
        "--rule",
        choices=list_rules(),
        help="the pruning rule (default: the method's; EP consensus, BNP guarded; zscore: the paper's); "
        "its parameters beside it (--u, --count, --defense-arg); see bdprune.defenses.rules",
    )
    g.add_argument("--count", type=int, help="with --rule count: neurons to prune in total")
    g.add_argument("--estimator", choices=[*ESTIMATORS, EXACT], help="EP's entropy estimator ('exact': the authors')")
    g.add_argument("--silence", choices=list(SILENCE_MODES), help="how a pruned neuron is silenced")
    g.add_argument("--max-samples", type=int, help="EP: use only this many training samples (default: all)")
    g.add_argument(
        "--defense-arg",
        action="append",
        metavar="KEY=VALUE",
        help="any other hyperparameter, e.g. iterations=500 for anp (see `python -m pydoc bdprune.defenses.NAME`)",
    )

    p = command("scan", cmd_scan, SCAN_HELP, SCAN_DETAILS, parents=(defender,))
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--method", default="bnp", choices=["bnp", "nc"], help="bnp (default) or nc (Neural Cleanse)")
    p.add_argument(
        "--statistic", help="bnp: Q_NORM_AGG, Q kl, logkl or lvr, NORM layer or model, AGG max, top3 or top10"
    )
    p.add_argument("--threshold", type=float, help="call the model backdoored above this score (default: calibrated)")
    p.add_argument("--top", type=int, default=10, help="suspect neurons to list (default 10)")
    p.add_argument(
        "--use-train",
        action="store_true",
        help="a run directory: add EP's evidence from its own training set (a foreign model: --train-data)",
    )
    p.add_argument(
        "--train-samples",
        type=int,
        default=10000,
        help="EP's evidence reads the first N training samples (default 10000; two passes over them)",
    )

    p = command(
        "compare",
        cmd_compare,
        "run several defenses on one model: ACC, ASR, pruned, time",
        "Each defense runs on the same model and data (like the paper's Tables 1 and 3).",
        parents=(defender,),
    )
    p.add_argument("--methods", default="ft,fp,linf,nad,anp,clp,ep,bnp", help="comma-separated defenses")
    p.add_argument("--out", help="write comparison.json, comparison.md and each report here")
    p.add_argument("--defense-arg", action="append", metavar="METHOD.KEY=VALUE", help="e.g. anp.iterations=500")

    p = command(
        "diagnose",
        lambda args: diagnose.command(args, setup(args, args.out, inputs=args.runs)),
        diagnose.HELP,
        diagnose.DETAILS,
    )
    diagnose.add_arguments(p)

    p = command(
        "demo",
        cmd_demo,
        "the whole story on Fashion-MNIST: train a BadNets model, repair it with EP and BNP",
        "Trains with the CPU preset (BadNets 3x3, rate 0.1, target 0), repairs with EP (poisoned training "
        "set) and BNP (500 clean samples), prints ACC / ASR / neurons pruned / time.",
    )
    add_options(p, DemoConfig, defaults=True)

    reproduce.add_arguments(
        command("reproduce", lambda args: reproduce.run(args, setup(args)), reproduce.HELP, reproduce.DETAILS)
    )
    p = command(
        "attacks",
        cmd_attacks,
        "list the attacks and their parameters; --gallery draws their triggers",
        "The gallery shows clean images and their poisoned versions (like the paper's Figures 5 and 6).",
        parents=(),
    )
    p.add_argument("--gallery", metavar="PNG", help="write the gallery to this file")
    p.add_argument("--dataset", default="fashion-mnist", help="images for the gallery (its test split)")
    p.add_argument("--data-dir", help="where the dataset lives")
    p.add_argument("--count", type=int, default=2, help="images (rows) in the gallery")
    p.add_argument("--run", action="append", metavar="DIR", help="a run whose fitted attack to show (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="picks the images and builds the triggers")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except BdpruneError as exc:
        print(f"bdprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
