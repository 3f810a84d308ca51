"""What makes training faster on this CPU: threads, processes, batch size, channels_last, bf16 autocast,
torch.compile. Every variant trains the CPU preset's network (ResNet-18 width 16 on Fashion-MNIST, SGD as in
`bdprune.train`) for the same steps, interleaved with the others, best of `--repeats`; one run prints
images/s and the ratio to the default (fp32, NCHW, batch 128, all threads):

    flock /tmp/bdprune-cpu.lock python benchmarks/train_speed.py           # about 5 minutes on 2 cores
    python benchmarks/train_speed.py --threads 1 --variants base,channels_last --steps 10

Every variant runs with `--threads` threads (default: torch's) except `threads1` (one thread) and `two_procs`
(two single-threaded processes at once, their summed throughput). On a machine that other jobs share, two
threads can lose badly to one (a thread waits at every barrier for a core someone else holds): compare the
other variants at `--threads 1` there.

It also says whether a variant gives the same numbers as the default (parameters after `--check-steps`
steps from the same initialisation and batches): a speedup that changes the numbers can only be opt-in.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from bdprune.config import preset
from bdprune.data import get_spec, load_dataset
from bdprune.data.batches import batch_flip_lr
from bdprune.runs import build_model

VARIANTS = ("base", "threads1", "two_procs", "batch256", "batch512", "channels_last", "bf16", "compile")


def make_model():
    config = preset("cpu")
    return build_model(config, get_spec(config.dataset))


def batches(data, batch_size: int, steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=g)
    out = []
    for i in range(steps):
        pos = order[(i * batch_size) % len(data) :][:batch_size]
        images = data.images[pos].float().div_(255.0)
        out.append((batch_flip_lr(images, g), data.labels[pos]))
    return out


def train_steps(model, work, *, channels_last=False, bf16=False) -> None:
    """SGD steps as `bdprune.train.train_model` takes them (momentum 0.9, wd 5e-4, lr 0.1)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    for images, labels in work:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def prepare(variant: str, base_model):
    """(model, options, batch size, threads) of a variant; compile happens here (its cost reported apart)."""
    model = copy.deepcopy(base_model)
    batch, threads, options = 128, None, {}
    if variant == "threads1":
        threads = 1
    elif variant.startswith("batch"):
        batch = int(variant[5:])
    elif variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        options["channels_last"] = True
    elif variant == "bf16":
        options["bf16"] = True
    elif variant == "compile":
        model = torch.compile(model)
    return model, options, batch, threads


def _one_thread_worker(steps: int, batch: int, queue) -> None:
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist", train=True)
    model = make_model()
    work = batches(data, batch, steps, seed=1)
    train_steps(model, work[:2])
    start = time.perf_counter()
    train_steps(model, work)
    queue.put(time.perf_counter() - start)


def two_processes(steps: int, batch: int) -> float:
    """Images/s of two single-threaded processes training at once (what two cells in parallel get)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_one_thread_worker, args=(steps, batch, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    seconds = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return 2 * steps * batch / max(seconds)


def same_numbers(variant: str, base_model, data, steps: int) -> str:
    if variant == "two_procs":
        return "as threads1"
    reference = copy.deepcopy(base_model)
    train_steps(reference, batches(data, 128, steps))
    model, options, batch, threads = prepare(variant, base_model)
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    train_steps(model, batches(data, batch, steps), **options)
    torch.set_num_threads(default_threads)
    ref = torch.cat([p.detach().flatten() for p in reference.parameters()])
    got = torch.cat([p.detach().float().flatten() for p in (getattr(model, "_orig_mod", model)).parameters()])
    diff = (ref - got).abs().max().item()
    return "identical" if diff == 0 else f"differs (max |dparam| {diff:.2e})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="training steps per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--check-steps", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, help="threads of every variant but threads1 and two_procs")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    default_threads = torch.get_num_threads()
    data = load_dataset("fashion-mnist", train=True)
    torch.manual_seed(0)
    base_model = make_model()
    prepared, compile_seconds = {}, None
    for v in variants:
        if v == "two_procs":
            continue
        start = time.perf_counter()
        prepared[v] = prepare(v, base_model)
        model, options, batch, threads = prepared[v]
        train_steps(model, batches(data, batch, 2, seed=7), **options)  # warm-up (and compilation)
        if v == "compile":
            compile_seconds = time.perf_counter() - start
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in variants:
            if v == "two_procs":
                rates[v].append(two_processes(args.steps, 128))
                continue
            model, options, batch, threads = prepared[v]
            torch.set_num_threads(threads or default_threads)
            work = batches(data, batch, args.steps, seed=r)
            start = time.perf_counter()
            train_steps(model, work, **options)
            rates[v].append(args.steps * batch / (time.perf_counter() - start))
            torch.set_num_threads(default_threads)
    base = max(rates["base"]) if "base" in rates else None
    print(
        f"torch {torch.__version__}, {default_threads} threads, {args.steps} steps x {args.repeats} repeats, "
        "best and median images/s"
    )
    print(f"{'variant':<14} {'best img/s':>10} {'median':>8} {'vs base':>8}  same numbers as base")
    for v in variants:
        best, median = max(rates[v]), statistics.median(rates[v])
        ratio = f"{best / base:.2f}x" if base else "-"
        print(f"{v:<14} {best:>10.0f} {median:>8.0f} {ratio:>8}  {same_numbers(v, base_model, data, args.check_steps)}")
    if compile_seconds is not None:
        print(f"torch.compile: {compile_seconds:.1f} s to compile and run 2 warm-up steps")


if __name__ == "__main__":
    main()
