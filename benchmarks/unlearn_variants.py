"""Development sweep of the unlearning fine-tune's settings (issue 23, EP's setting), on saved runs.

The suspected group comes from `detect_in_features` on features cached by the scratch dump (or computed);
each variant of `unlearn_fine_tune` is run on a copy and measured on the test set (ACC / ASR) and on the
held-out training samples the guard would use. Development seeds only.

    python benchmarks/unlearn_variants.py RUN_DIR --variants "lr=0.01,steps=150;lr=0.003,steps=150,tail_only=1"
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from bdprune import repair
from bdprune.defenses.holdout import split_holdout
from bdprune.defenses.unlearning import unlearn_fine_tune
from bdprune.metrics import clean_accuracy, evaluate
from bdprune.samples.detector import detect_in_features
from bdprune.samples.features import SampleFeatures, sample_features


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--variants", required=True, help="KEY=VALUE,... per variant, variants separated by ;")
    p.add_argument("--features", default="/work/runs/repair/feats")
    p.add_argument("--out", default="/work/runs/repair/variants.jsonl")
    args = p.parse_args()
    torch.set_num_threads(1)
    suspect = repair.load_suspect(args.run)
    data, test = repair.defender_data(suspect, {"train"}, seed=0)
    cache = Path(args.features) / f"{Path(args.run).name}.pt"
    if cache.exists():
        saved = torch.load(cache, weights_only=True)
        features = SampleFeatures(saved["features"], saved["logits"], saved["labels"])
    else:
        features = sample_features(suspect.model, data.train)
    found = detect_in_features(features)
    rest = torch.ones(len(data.train), dtype=torch.bool)
    rest[found.indices] = False
    keep, held_out = split_holdout(data.train.subset(rest.nonzero().flatten()), 0.05, seed=0)
    forget = data.train.subset(found.indices) if found.found else None
    before = 100 * clean_accuracy(suspect.model, held_out)
    print(f"{Path(args.run).name}: {found.summary()}; held-out ACC before {before:.2f}", flush=True)
    for spec in args.variants.split(";"):
        options = {k: float(v) if "." in v else int(v) for k, v in (kv.split("=") for kv in spec.split(","))}
        options = {k: bool(v) if k in ("tail_only", "freeze_bn", "augment") else v for k, v in options.items()}
        model = copy.deepcopy(suspect.model)
        start = time.perf_counter()
        unlearn_fine_tune(model, keep, forget, seed=0, **options)
        seconds = time.perf_counter() - start
        row = {
            "run": Path(args.run).name,
            "variant": spec,
            "seconds": seconds,
            "held_out_before": before,
            "held_out_after": 100 * clean_accuracy(model, held_out),
            **evaluate(model, test, suspect.attack),
        }
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
