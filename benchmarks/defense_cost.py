"""Cost of EP and BNP as a ratio to one plain forward pass over the same samples and model.

Both defenses need exactly one forward pass, so that pass is the floor. Everything is timed in one run,
interleaved, best of `--repeats`, on the same samples:

    python benchmarks/defense_cost.py                     # ResNet-18 width 32, 10,000 Fashion-MNIST images
    python benchmarks/defense_cost.py --width 64 --samples 5000 --device cuda

Prints one line per method: seconds, images/s, and the ratio to the plain forward pass.
"""

from __future__ import annotations

import argparse
import time

import torch

from bdprune.data import load_dataset
from bdprune.data.batches import iterate_batches
from bdprune.defenses import BNP, EP, DefenseData
from bdprune.models import create_model


def plain_forward(model, data, batch_size, device) -> None:
    with torch.inference_mode():
        for images, _, _ in iterate_batches(data, batch_size, device=device):
            model(images)
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = (
        create_model("resnet18", num_classes=10, in_channels=1, base_width=args.width, mean=[0.286], std=[0.353])
        .to(device)
        .eval()
    )
    data = load_dataset("fashion-mnist", train=True).subset(torch.arange(args.samples))
    # A model fresh from init has running stats (0, 1); a few training-mode batches make them realistic.
    model.train()
    with torch.no_grad():
        for images, _, _ in iterate_batches(data.subset(torch.arange(2048)), 256, device=device):
            model(images)
    model.eval()
    runs = {
        "forward": lambda: plain_forward(model, data, args.batch_size, device),
        # the scoring pass under the paper's rule (the defaults' own cost: benchmarks/rule_cost.py)
        "bnp": lambda: BNP.from_options(rule="zscore", max_harm=None, batch_size=args.batch_size).run(
            model, DefenseData(clean=data)
        ),
        "ep": lambda: EP.from_options(rule="zscore", max_harm=None, batch_size=args.batch_size).run(
            model, DefenseData(train=data)
        ),
    }
    best = {k: float("inf") for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    print(
        f"ResNet-18 width {args.width}, {args.samples} Fashion-MNIST images, batch {args.batch_size}, "
        f"device {device}, threads {torch.get_num_threads()}, best of {args.repeats}"
    )
    for name, seconds in best.items():
        print(
            f"  {name:8s} {seconds:8.2f} s  {args.samples / seconds:9.0f} img/s  "
            f"{seconds / best['forward']:5.2f} x forward"
        )


if __name__ == "__main__":
    main()
