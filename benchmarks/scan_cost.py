"""Seconds of one `bdprune scan` (method bnp, no training set) of a ResNet-18 of width 16 with 500 clean samples.

The issue's budget is 10 seconds on 2 cores. The model is a run directory when given (`bdprune train --preset
cpu`), else a freshly initialised width-16 ResNet-18 for Fashion-MNIST whose BN statistics are set on random
images (the cost does not depend on the weights); the clean samples are the run's reserve or random images.

    python benchmarks/scan_cost.py [RUN_DIR] [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from bdprune import repair
from bdprune.data import ImageSet
from bdprune.detection import scan
from bdprune.models import create_model


def synthetic(samples: int) -> tuple[torch.nn.Module, ImageSet]:
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("resnet18", base_width=16, num_classes=10, in_channels=1)
    images = torch.randint(0, 256, (samples, 1, 28, 28), generator=g, dtype=torch.uint8)
    clean = ImageSet(images, torch.arange(samples) % 10, tuple(str(i) for i in range(10)), name="random")
    model.train()
    with torch.no_grad():
        model(clean.float_images()[:256])  # BN running statistics of some data
    return model.eval(), clean


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="a run directory (default: a synthetic width-16 model)")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.run:
        suspect = repair.load_suspect(args.run)
        data, _ = repair.defender_data(suspect, {"clean"}, clean_samples=args.samples)
        model, clean = suspect.model, data.clean
    else:
        model, clean = synthetic(args.samples)
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = scan(model, clean)
        times.append(time.perf_counter() - start)
    print(
        f"scan of a width-16 ResNet-18 with {len(clean)} clean samples on {args.threads} thread(s): "
        f"{min(times):.2f} s (best of {args.repeat}; all: {', '.join(f'{t:.2f}' for t in times)}); "
        f"verdict {result.verdict}, score {result.score:.2f}"
    )


if __name__ == "__main__":
    main()
