"""Peak memory of EP as the number of samples grows (1k, 10k, 60k Fashion-MNIST images).

Each size runs in a fresh process; we report that process's peak resident memory, and the peak minus the
same process's peak just before EP starts (model and data loaded). EP keeps a fixed-size streaming
histogram per neuron, so the increment should not grow with the number of samples.

    python benchmarks/ep_memory.py [--width 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, torch
from bdprune.data import load_dataset
from bdprune.defenses import EP, DefenseData
from bdprune.models import create_model
n, width = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = create_model("resnet18", num_classes=10, in_channels=1, base_width=width).eval()
data = load_dataset("fashion-mnist", train=True).subset(torch.arange(n))
with torch.inference_mode():
    model(data.float_images()[:256])  # warm up allocations of one batch
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
_, report = EP.from_options(batch_size=256).run(model, DefenseData(train=data))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "before_mb": before / 1024, "peak_mb": after / 1024, "seconds": report.seconds}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--sizes", default="1000,10000,60000")
    args = p.parse_args()
    print(f"EP peak memory, ResNet-18 width {args.width}, Fashion-MNIST, batch 256")
    for n in args.sizes.split(","):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, n, str(args.width)], capture_output=True, text=True, check=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"  {r['n']:6d} samples: peak {r['peak_mb']:7.1f} MB, EP adds {r['peak_mb'] - r['before_mb']:6.1f} MB "
            f"over the loaded model and data, {r['seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
