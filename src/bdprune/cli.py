"""The `bdprune` command: train, evaluate, defend and demo from the shell.

Each subcommand parses its options, chooses the device and seed (library code never does), calls the
library, and prints a short human-readable result; machine-readable results go to JSON files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from . import __version__
from .neurons.threshold import RULES

EPILOG = """\
examples:
  bdprune demo                                   the whole story on Fashion-MNIST in minutes (CPU)
  bdprune train --preset cpu --attack badnets --out runs/badnets
  bdprune evaluate runs/badnets
  bdprune defend runs/badnets --method bnp --out runs/badnets-bnp
"""


# -- helpers -------------------------------------------------------------------------------------------------
class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.2' -> 0.2, 'true' -> True, '[1,2]' -> [1, 2], anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_key_values(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{option} expects KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = parse_value(value)
    return out


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def print_table(rows: list[dict[str, Any]], columns: list[str], file=None) -> None:
    from .table import format_table

    print(format_table(rows, columns), file=file or sys.stdout)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return choose_device(args.device)


# -- train ---------------------------------------------------------------------------------------------------
def add_run_options(p: argparse.ArgumentParser) -> None:
    from .runs import PRESETS

    g = p.add_argument_group("run")
    g.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="starting point: 'cpu' (Fashion-MNIST, ResNet-18 width 16, 2 epochs: minutes on 2 cores) "
                   "or the paper's GPU settings; the options below override it")
    g.add_argument("--dataset", help="fashion-mnist, mnist, cifar10 or tiny-imagenet")
    g.add_argument("--data-dir", help="directory holding the dataset files")
    g.add_argument("--model", help="registered model (see --list-models)")
    g.add_argument("--width", type=int, help="base width of a ResNet (64 in the paper)")
    g.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="other model arguments")
    g.add_argument("--attack", help="registered attack, or 'none' for a clean model")
    g.add_argument("--attack-arg", action="append", metavar="KEY=VALUE", help="attack hyperparameters, e.g. size=3")
    g.add_argument("--rate", type=float, help="poisoning rate (default 0.1)")
    g.add_argument("--target", type=int, help="target class of an all-to-one attack (default 0)")
    g.add_argument("--mode", choices=["all-to-one", "all-to-all"], help="label mapping of the attack")
    g.add_argument("--train-subset", type=int, help="train on this many samples only")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--augment", choices=["crop+flip", "crop", "flip", "none"],
                   help="training augmentation (the paper: crop+flip; the cpu preset: flip)")
    g.add_argument("--seed", type=int, help="seed of the split, poisoning, trigger, initialisation and batches")
    g.add_argument("--adaptive", help="adaptive attack objective of appendix G.2: preact-l2 (Eq. 4) or ml-mmd")
    g.add_argument("--adaptive-arg", action="append", metavar="KEY=VALUE", help="its parameters, e.g. weight=0.01")
    g.add_argument("--bn-reparam", action="store_true",
                   help="appendix G.1: after training, re-parameterise BN so its statistics match benign data")


def run_config_from_args(args: argparse.Namespace):
    from dataclasses import replace

    from .runs import preset

    overrides: dict[str, Any] = {}
    for key in ("dataset", "data_dir", "model", "rate", "target", "mode", "train_subset", "seed"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.attack is not None:
        overrides["attack"] = None if args.attack.lower() == "none" else args.attack
    config = preset(args.preset, **overrides)
    if args.width is not None or args.model_arg:
        config.model_args = {**config.model_args, **({"base_width": args.width} if args.width else {}),
                             **parse_key_values(args.model_arg, "--model-arg")}
    if args.attack_arg:
        config.attack_params = {**config.attack_params, **parse_key_values(args.attack_arg, "--attack-arg")}
    train = config.train
    for key in ("epochs", "batch_size", "lr"):
        if getattr(args, key) is not None:
            train = replace(train, **{key: getattr(args, key)})
    config.train = train
    if args.augment is not None:
        config.augment = args.augment
    if getattr(args, "adaptive", None) is not None:
        config.adaptive = None if args.adaptive.lower() == "none" else args.adaptive
    if getattr(args, "adaptive_arg", None):
        config.adaptive_params = {**config.adaptive_params, **parse_key_values(args.adaptive_arg, "--adaptive-arg")}
    if getattr(args, "bn_reparam", False):
        config.bn_reparam = True
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from .runs import train_run

    device = setup(args)
    config = run_config_from_args(args)
    out = Path(args.out)
    print(f"training {config.model} {config.model_args} on {config.dataset}, attack {config.attack} "
          f"(rate {config.rate}, {config.mode}, target {config.target}), {config.train.epochs} epochs, "
          f"seed {config.seed}, device {device}", file=sys.stderr)
    cache = None if str(args.cache_dir).lower() == "none" else args.cache_dir
    metrics = train_run(config, out, device=device, progress=not args.quiet, cache_dir=cache)
    print_table([{"run": str(out), "ACC %": metrics["acc"], "ASR %": metrics.get("asr"),
                  "train s": metrics["train_seconds"]}], ["run", "ACC %", "ASR %", "train s"])
    return 0


# -- evaluate ------------------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import io
    from .data import load_dataset
    from .metrics import attack_success_rate, backdoor_loss, clean_accuracy, per_class_accuracy

    device = setup(args)
    ckpt = io.load_checkpoint(args.run, map_location=device)
    dataset = ckpt.card.get("dataset")
    if dataset is None:
        raise UserError(f"{args.run}: the sidecar names no dataset to evaluate on")
    data_dir = args.data_dir or ckpt.card.get("run", {}).get("config", {}).get("data_dir")
    test = load_dataset(dataset, data_dir, train=False)
    result: dict[str, Any] = {"run": str(args.run), "acc": 100.0 * clean_accuracy(ckpt.model, test)}
    if ckpt.attack is not None:
        result["asr"] = 100.0 * attack_success_rate(ckpt.model, test, ckpt.attack)
        result["backdoor_loss"] = backdoor_loss(ckpt.model, test, ckpt.attack)
    result["per_class_acc"] = [100.0 * a for a in per_class_accuracy(ckpt.model, test)]
    print_table([{"run": result["run"], "ACC %": result["acc"], "ASR %": result.get("asr"),
                  "backdoor loss": result.get("backdoor_loss")}], ["run", "ACC %", "ASR %", "backdoor loss"])
    if args.json:
        io.atomic_write_json(args.json, result)
    return 0


# -- defend --------------------------------------------------------------------------------------------------
def add_defense_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("defense")
    g.add_argument("--u", type=float, help="threshold in (robust) standard deviations (default 3, the paper's)")
    g.add_argument("--rule", choices=list(RULES), help="per-layer outlier rule")
    g.add_argument("--count", type=int, help="with --rule count: neurons to prune in total")
    g.add_argument("--estimator", choices=["histogram", "vasicek", "kde"], help="EP's entropy estimator")
    g.add_argument("--silence", choices=["bn", "bn-weight", "conv"], help="how a pruned neuron is silenced")
    g.add_argument("--clean-samples", type=int, default=500,
                   help="clean samples for BNP and the baselines (default 500, the paper's)")
    g.add_argument("--max-samples", type=int, help="EP: use only this many training samples (default: all)")
    g.add_argument("--batch-size", type=int, default=256, help="samples per forward pass")
    g.add_argument("--seed", type=int, default=0, help="seed for drawing the clean samples")
    g.add_argument("--defense-arg", action="append", metavar="KEY=VALUE",
                   help="any other hyperparameter of the method, e.g. iterations=500 for anp, epochs=10 for ft "
                   "(see `python -m pydoc bdprune.defenses.NAME`)")


def defense_parameters(method: str) -> set[str]:
    """The keyword arguments a registered defense accepts."""
    import inspect

    from .defenses import DEFENSES

    return {n for n in inspect.signature(DEFENSES.get(method).__init__).parameters if n != "self"}


def build_defense(method: str, flags: dict[str, Any], extra: dict[str, Any], progress: bool, batch_size: int):
    """A defense from option flags (an error if one does not apply to it) and free KEY=VALUE parameters."""
    from .defenses import create_defense

    accepted = defense_parameters(method)
    params: dict[str, Any] = {"batch_size": batch_size, "progress": progress}
    for key, value in flags.items():
        if value is None:
            continue
        if key not in accepted:
            raise UserError(f"--{key.replace('_', '-')} does not apply to {method}; its parameters: "
                            f"{', '.join(sorted(accepted - {'batch_size', 'progress'}))}")
        params[key] = value
    unknown = set(extra) - accepted
    if unknown:
        raise UserError(f"{method} has no parameter {', '.join(sorted(unknown))}; its parameters: "
                        f"{', '.join(sorted(accepted - {'batch_size', 'progress'}))}")
    params.update(extra)
    try:
        return create_defense(method, **params)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None


def defense_from_args(method: str, args: argparse.Namespace, progress: bool):
    flags = {key: getattr(args, key, None) for key in ("u", "rule", "count", "silence", "estimator", "max_samples")}
    extra = parse_key_values(getattr(args, "defense_arg", None), "--defense-arg")
    return build_defense(method, flags, extra, progress, args.batch_size)


# What each defense needs from the defender: the (possibly poisoned) training set, or clean samples.
# CLP is data-free (it reads the weights only).
NEEDS = {"ep": {"train"}, "bnp": {"clean"}, "ft": {"clean"}, "fp": {"clean"}, "linf": {"clean"}, "nad": {"clean"},
         "anp": {"clean"}, "clp": set()}


def load_suspicious_model(args: argparse.Namespace, device: torch.device):
    """Our run directory, or a foreign state dict (--weights) with --arch and --dataset."""
    from . import io
    from .data import get_spec

    if args.weights is None:
        if args.model is None:
            raise UserError("give a run directory, or a foreign model with --weights, --arch and --dataset")
        ckpt = io.load_checkpoint(args.model, map_location=device)
        return ckpt.model, ckpt.card, ckpt.attack
    if args.arch is None or args.dataset is None:
        raise UserError("a foreign weights file needs --arch (e.g. resnet18 or torchvision:resnet18) and --dataset")
    from .io import load_state_dict_file
    from .models import create_model

    spec = get_spec(args.dataset)
    arch_args = {"num_classes": spec.num_classes, "in_channels": spec.image_shape[0], "mean": list(spec.mean),
                 "std": list(spec.std), **parse_key_values(args.model_arg, "--model-arg")}
    model = create_model(args.arch, **arch_args)
    state = load_state_dict_file(args.weights)
    target = model.model if args.arch.split(":")[0] in ("torchvision", "timm") else model
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{args.weights} does not fit {args.arch}: {str(exc).splitlines()[0]}") from None
    card = {"architecture": args.arch, "arch_args": arch_args, "dataset": args.dataset,
            "normalization": {"mean": list(spec.mean), "std": list(spec.std)}, "source_weights": str(args.weights)}
    return model.to(device).eval(), card, None


def foreign_data(args: argparse.Namespace, method: str):
    """The defender's data for a model without a run record: image folders, or the named dataset's
    training split for clean samples. Returns (DefenseData, test set or None)."""
    from .data import get_spec, load_dataset, load_image_folder
    from .defenses import DefenseData

    spec = get_spec(args.dataset)
    grayscale, size = spec.image_shape[0] == 1, spec.image_shape[1:]
    data = DefenseData()
    if "train" in NEEDS[method]:
        if args.train_dir is None:
            raise UserError("EP needs the (possibly poisoned) training set: pass --train-dir DIR (one folder per class)")
        data.train = load_image_folder(Path(args.train_dir), grayscale=grayscale, size=size)
    if "clean" in NEEDS[method]:
        pool = (load_image_folder(Path(args.clean_dir), grayscale=grayscale, size=size) if args.clean_dir
                else load_dataset(args.dataset, args.data_dir, train=True))
        if args.clean_samples > len(pool):
            raise UserError(f"asked for {args.clean_samples} clean samples; only {len(pool)} are available")
        data.clean = pool.sample(args.clean_samples, torch.Generator().manual_seed(args.seed))
    try:
        test = load_dataset(args.dataset, args.data_dir, train=False)
    except FileNotFoundError:
        test = None
    return data, test


def set_image_shape(defense, card: dict[str, Any]) -> None:
    """Data-free defenses (CLP) trace the model with a zero image of the dataset's shape."""
    from .data import get_spec

    if getattr(defense, "image_shape", "absent") is None and card.get("dataset"):
        defense.image_shape = tuple(get_spec(card["dataset"]).image_shape)


def cmd_defend(args: argparse.Namespace) -> int:
    from .repair import defender_data_from_run, repair

    device = setup(args)
    model, card, attack = load_suspicious_model(args, device)
    defense = defense_from_args(args.method, args, progress=not args.quiet)
    set_image_shape(defense, card)
    if args.weights is None:
        data, test = defender_data_from_run(card, attack, method_needs=NEEDS[args.method],
                                            clean_samples=args.clean_samples, seed=args.seed, data_dir=args.data_dir)
    else:
        data, test = foreign_data(args, args.method)
    result = repair(model, defense, data, card=card, out_dir=args.out, test=test, attack=attack,
                    plots=not args.no_plots)
    for warning in result.report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    before, after = result.metrics.get("before", {}), result.metrics.get("after", {})
    print_table(
        [{"model": "suspicious", "ACC %": before.get("acc"), "ASR %": before.get("asr"), "pruned": 0, "time s": None},
         {"model": args.method.upper(), "ACC %": after.get("acc"), "ASR %": after.get("asr"),
          "pruned": result.report.num_pruned, "time s": result.report.seconds}],
        ["model", "ACC %", "ASR %", "pruned", "time s"],
    )
    print(f"wrote {args.out}: model.safetensors, model.json, report.json, metrics.json"
          + ("" if args.no_plots else ", scores.png, neurons.png"), file=sys.stderr)
    return 0


def add_defend_parser(sub) -> None:
    p = sub.add_parser(
        "defend", help="repair a saved model with EP, BNP or a baseline defense",
        description="Run EP (needs the possibly poisoned training set), BNP (needs a few clean samples) or a "
        "baseline (ft, fp, linf, nad, anp: clean samples; clp: data-free) on a "
        "saved model, and write the repaired model, a JSON report of every neuron's score, plots, and ACC/ASR "
        "before and after. For a run made by `bdprune train` the data comes from its record; for a foreign "
        "state dict give --weights, --arch and --dataset (and --train-dir for EP).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  bdprune defend runs/badnets --method bnp --out runs/badnets-bnp\n"
        "  bdprune defend runs/badnets --method ep --rule mad --u 5 --out runs/badnets-ep\n"
        "  bdprune defend --weights w.pt --arch torchvision:resnet18 --dataset cifar10 --data-dir ~/data "
        "--method bnp --out out/",
    )
    p.add_argument("model", nargs="?", help="run directory of a saved model (holding model.json)")
    p.add_argument("--method", required=True, choices=sorted(NEEDS),
                   help="ep, bnp, or a baseline: ft, fp, linf, nad, anp, clp (see `bdprune compare`)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-plots", action="store_true", help="skip scores.png and neurons.png")
    p.add_argument("--data-dir", help="where the dataset lives, if not where the run found it")
    g = p.add_argument_group("foreign model (instead of a run directory)")
    g.add_argument("--weights", help="a .safetensors or .pt/.pth state dict (never unpickled beyond tensors)")
    g.add_argument("--arch", help="resnet18, preact_resnet18, wrn28_1, torchvision:NAME or timm:NAME")
    g.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="architecture arguments")
    g.add_argument("--dataset", help="the dataset the model classifies (for shape, classes and normalisation)")
    g.add_argument("--train-dir", help="EP: the training set as one folder per class")
    g.add_argument("--clean-dir", help="BNP: clean images, one folder per class (default: the dataset's training split)")
    add_defense_options(p)
    add_common(p)
    p.set_defaults(func=cmd_defend)


# -- compare -------------------------------------------------------------------------------------------------
def parse_method_args(items: Sequence[str] | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """'anp.iterations=500' -> {"anp": {"iterations": 500}}."""
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items or ():
        method, dot, rest = item.partition(".")
        if not dot or method not in out:
            raise UserError(f"--defense-arg expects METHOD.KEY=VALUE with METHOD one of {methods}, got {item!r}")
        out[method].update(parse_key_values([rest], "--defense-arg"))
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    from . import io
    from .compare import compare_defenses
    from .repair import defender_data_from_run

    device = setup(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in NEEDS]
    if unknown or not methods:
        raise UserError(f"unknown method(s) {unknown}; choose from {', '.join(sorted(NEEDS))}")
    ckpt = io.load_checkpoint(args.run, map_location=device)
    extra = parse_method_args(args.defense_arg, methods)
    defenses = [build_defense(m, {}, extra[m], not args.quiet, args.batch_size) for m in methods]
    for defense in defenses:
        set_image_shape(defense, ckpt.card)
    needs = set().union(*(NEEDS[m] for m in methods))
    data, test = defender_data_from_run(ckpt.card, ckpt.attack, method_needs=needs, clean_samples=args.clean_samples,
                                        seed=args.seed, data_dir=args.data_dir)
    if args.test_samples is not None and args.test_samples < len(test):
        test = test.sample(args.test_samples, torch.Generator().manual_seed(args.seed))  # evaluation only

    def on_done(row: dict[str, Any]) -> None:
        print(f"{row['defense']}: ACC {row['ACC %']:.2f}  ASR {row.get('ASR %') or 0:.2f}  pruned {row['pruned']}  "
              f"{row['time s']:.1f} s", file=sys.stderr)

    result = compare_defenses(ckpt.model, defenses, data, test=test, attack=ckpt.attack, on_done=on_done)
    print(result.table())
    for name, report in result.reports.items():
        for warning in report.warnings[:5]:
            print(f"warning ({name}): {warning}", file=sys.stderr)
    if args.out:
        result.save(args.out, {"run": str(args.run), "clean_samples": args.clean_samples, "seed": args.seed,
                               "test_samples": len(test) if test is not None else None,
                               "device": str(device), "threads": torch.get_num_threads(),
                               "defenses": {d.name: d.params() for d in defenses}})
        print(f"wrote {args.out}: comparison.json, comparison.md, reports/", file=sys.stderr)
    return 0


def add_compare_parser(sub) -> None:
    p = sub.add_parser(
        "compare", help="run several defenses on one saved model: ACC, ASR, pruned, time",
        description="Load a run made by `bdprune train` once, build the defender's data once (its clean samples "
        "and, for EP, its training set), run each defense on the same model and data, and print ACC and ASR on "
        "the run's test set, neurons pruned and each defense's running time (like the paper's Tables 1 and 3).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  bdprune compare runs/badnets --methods ft,fp,linf,nad,anp,clp,ep,bnp "
        "--defense-arg anp.iterations=500 --out runs/badnets-compare",
    )
    p.add_argument("run", help="run directory of a saved model (holding model.json)")
    p.add_argument("--methods", default="ft,fp,linf,nad,anp,clp,ep,bnp", help="comma-separated defenses")
    p.add_argument("--out", help="write comparison.json, comparison.md and each report here")
    p.add_argument("--data-dir", help="where the dataset lives, if not where the run found it")
    p.add_argument("--clean-samples", type=int, default=500, help="clean samples (default 500, the paper's)")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing the clean samples")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass")
    p.add_argument("--test-samples", type=int,
                   help="evaluate ACC/ASR on this many random test samples (default: the whole test set)")
    p.add_argument("--defense-arg", action="append", metavar="METHOD.KEY=VALUE",
                   help="a hyperparameter of one method, e.g. anp.iterations=500 or bnp.u=4 (repeatable)")
    add_common(p)
    p.set_defaults(func=cmd_compare)


# -- demo ----------------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.demo import DemoConfig, run_demo

    device = setup(args)
    config = DemoConfig(out=args.out, seed=args.seed, epochs=args.epochs, width=args.width,
                        train_subset=args.train_subset, data_dir=args.data_dir)
    run_demo(config, device=device, progress=not args.quiet)
    return 0


def add_demo_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="the whole story on Fashion-MNIST: train a BadNets model, repair it with EP and BNP",
        description="Train a backdoored ResNet-18 (BadNets, 3x3 trigger, rate 0.1, target 0) on Fashion-MNIST with "
        "the CPU preset, then repair it with EP (on the poisoned training set) and BNP (on 500 clean samples), "
        "and print ACC / ASR / neurons pruned / time before and after. About 5 minutes on 2 CPU cores.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="training epochs (default: the CPU preset's)")
    p.add_argument("--width", type=int, help="ResNet-18 base width (default: the CPU preset's)")
    p.add_argument("--train-subset", type=int, help="train on this many samples only (a faster, rougher demo)")
    p.add_argument("--data-dir", help="Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)")
    add_common(p)
    p.set_defaults(func=cmd_demo)


# -- attacks -------------------------------------------------------------------------------------------------
def attack_parameters(cls) -> dict[str, Any]:
    """The hyperparameters of an attack class (or adaptive objective) and their defaults, from its signature."""
    import inspect

    skip = {"self", "image_shape", "num_classes", "generator", "tensors", "attack", "poisoned", "cross"}
    out = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name in skip or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        out[name] = "(required)" if param.default is inspect.Parameter.empty else param.default
    return out


def cmd_attacks(args: argparse.Namespace) -> int:
    from .attacks import ATTACKS, list_attacks
    from .attacks.adaptive import ADAPTIVE, list_adaptive

    rows = []
    for name in list_attacks():
        cls = ATTACKS.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        kind = "learned" if getattr(cls, "learned", False) else "clean-label" if cls.clean_label else "dirty-label"
        params = ", ".join(f"{k}={v!r}" for k, v in attack_parameters(cls).items())
        rows.append({"attack": name, "kind": kind, "parameters (defaults)": params, "what": doc})
    print_table(rows, ["attack", "kind", "what", "parameters (defaults)"])
    print("\nadaptive objectives (bdprune train --adaptive NAME --adaptive-arg KEY=VALUE; --bn-reparam for G.1):")
    rows = [{"objective": n, "parameters (defaults)": ", ".join(f"{k}={v!r}" for k, v in
             attack_parameters(ADAPTIVE.get(n)).items())} for n in list_adaptive()]
    print_table(rows, ["objective", "parameters (defaults)"])
    if args.gallery:
        from .data import load_dataset
        from .experiments.gallery import attacks_from_runs, make_gallery

        data = load_dataset(args.dataset, args.data_dir, train=False)
        fitted = attacks_from_runs(args.run or [], data.image_shape)
        gallery = make_gallery(data, args.gallery, fitted=fitted, count=args.count, seed=args.seed)
        for name, why in gallery.skipped.items():
            print(f"gallery: left out {name}: {why}", file=sys.stderr)
        print(f"wrote {gallery.path} ({', '.join(gallery.shown)})", file=sys.stderr)
    return 0


def add_attacks_parser(sub) -> None:
    p = sub.add_parser("attacks", help="list the attacks and their parameters; --gallery draws their triggers",
                       description="List every registered attack with its hyperparameters and defaults (set them "
                       "with `bdprune train --attack NAME --attack-arg KEY=VALUE`), and the adaptive objectives. "
                       "With --gallery, write one PNG of clean images and their poisoned versions under every "
                       "attack (like the paper's Figures 5 and 6).")
    p.add_argument("--gallery", metavar="PNG", help="write the gallery to this file")
    p.add_argument("--dataset", default="fashion-mnist", help="images for the gallery (its test split)")
    p.add_argument("--data-dir", help="where the dataset lives")
    p.add_argument("--count", type=int, default=2, help="images (rows) in the gallery")
    p.add_argument("--run", action="append", metavar="DIR",
                   help="a trained run whose (fitted) attack the gallery shows instead of a default-built one; "
                        "repeat for several (learned attacks: IAB, SSBA, CLA need this)")
    p.add_argument("--seed", type=int, default=0, help="picks the images and builds the triggers")
    p.set_defaults(func=cmd_attacks)


# -- entry point ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bdprune",
        description="Find and prune backdoor neurons in image classifiers (EP and BNP, NeurIPS 2022).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bdprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a (backdoored) model and save it with its run record",
                       description="Train a model on a dataset poisoned by an attack; the output directory "
                       "gets model.safetensors, model.json (the sidecar) and metrics.json.")
    add_run_options(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--cache-dir", default="runs/cache",
                   help="where fits of learned attacks (iab, ssba, cla) are cached (default runs/cache; 'none': off)")
    add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="ACC and ASR of a saved model under its recorded attack",
                       description="Measure clean accuracy, attack success rate and backdoor loss of a saved run "
                       "on its dataset's test split.")
    p.add_argument("run", help="run directory (holding model.json)")
    p.add_argument("--data-dir", help="where the dataset lives, if not where the run found it")
    p.add_argument("--json", help="also write the result to this JSON file")
    add_common(p)
    p.set_defaults(func=cmd_evaluate)

    add_defend_parser(sub)
    add_compare_parser(sub)
    add_demo_parser(sub)
    add_attacks_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from . import io
    from .data import DatasetFormatError, DatasetNotFoundError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (UserError, DatasetNotFoundError, DatasetFormatError, io.CheckpointError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"bdprune {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
