"""The attack gallery: clean images and their poisoned versions under every attack (Figures 5 and 6).

Each registered attack is built with its default hyperparameters from one seed and applied (test-time
trigger) to the same clean images; one PNG shows a row per image: the clean image, then each attack's
poisoned version, then (magnified) the absolute difference, so that invisible triggers (WaNet, SSBA)
show where they act. Learned attacks (IAB, SSBA, CLA) need a fit first: take them from trained runs
(`attacks_from_runs`, `bdprune attacks --gallery PNG --run DIR`) or pass fitted ones in `attacks`;
otherwise they are left out and named in the returned notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..attacks import Attack, LearnedAttack, create_attack, list_attacks
from ..checkpoint import build_attack, read_card
from ..data import load_dataset
from ..data.imageset import ImageSet, to_float
from ..errors import InvalidInput
from ..plots import pyplot, save_figure


@dataclass
class Gallery:
    """What `make_gallery` drew: the attacks shown, and those left out with the reason."""

    path: Path
    shown: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def default_attacks(
    data: ImageSet, seed: int = 0, names: list[str] | None = None, params: dict[str, dict[str, Any]] | None = None
) -> tuple[dict[str, Attack], dict[str, str]]:
    """Every registered attack (or `names`) with default parameters; unfitted learned attacks are skipped."""
    attacks, skipped = {}, {}
    for name in names or list_attacks():
        attack = create_attack(
            name,
            image_shape=data.image_shape,
            num_classes=data.num_classes,
            generator=torch.Generator().manual_seed(seed),
            **(params or {}).get(name, {}),
        )
        if isinstance(attack, LearnedAttack) and not attack.fitted:
            skipped[name] = "a learned attack that is not fitted (fit it, e.g. by training a run with it)"
            continue
        attacks[name] = attack
    return attacks, skipped


def attacks_from_runs(run_dirs: list[str | Path], image_shape: tuple[int, int, int]) -> dict[str, Attack]:
    """The attacks recorded in run directories (their fitted generators and triggers, read as safetensors),
    keyed by attack name (name#2, ... when several runs share one)."""
    out: dict[str, Attack] = {}
    for run in run_dirs:
        directory = Path(run)
        attack = build_attack(read_card(directory), directory)
        if attack is None:
            raise InvalidInput(f"{directory} was trained without an attack: nothing to show")
        if tuple(attack.image_shape) != tuple(image_shape):
            raise InvalidInput(
                f"{directory}: its attack is for {tuple(attack.image_shape)} images, the gallery's "
                f"dataset has {tuple(image_shape)}; pass the run's dataset (--dataset)"
            )
        key, k = attack.name, 2
        while key in out:
            key, k = f"{attack.name}#{k}", k + 1
        out[key] = attack
    return out


def check_count(count: int) -> None:
    if count < 1:
        raise InvalidInput(f"the gallery needs at least one image (row), got --count {count}")


def make_gallery(
    data: ImageSet,
    out: str | Path,
    *,
    attacks: dict[str, Attack] | None = None,
    fitted: dict[str, Attack] | None = None,
    count: int = 2,
    seed: int = 0,
    diff_gain: float = 5.0,
) -> Gallery:
    """Write a PNG grid: rows = `count` images not of the target class, columns = clean + each attack.

    Args:
        data: clean images to poison (e.g. the test split; nothing is trained on them here).
        out: the PNG path.
        attacks: name -> attack; default: every registered attack with default parameters.
        fitted: with the default `attacks`, these (e.g. from `attacks_from_runs`) replace the default-built
            attacks of the same name, and are shown after them.
        count: how many images (rows) to show.
        seed: picks the images and builds the default attacks.
        diff_gain: magnification of the difference row.
    """
    check_count(count)
    skipped: dict[str, str] = {}
    if attacks is None:
        fitted = fitted or {}
        attacks, skipped = default_attacks(data, seed, [n for n in list_attacks() if n not in fitted])
        attacks.update(fitted)
    elif fitted:
        raise InvalidInput("pass either `attacks` (exactly what to show) or `fitted` (added to the defaults)")
    if not attacks:
        raise InvalidInput("no attack to show: every attack was skipped (" + "; ".join(skipped.values()) + ")")
    targets = {a.target for a in attacks.values()}
    keep = torch.ones(len(data), dtype=torch.bool)
    for t in targets:
        keep &= data.labels != t
    pool = keep.nonzero().flatten()
    if len(pool) < count:
        raise InvalidInput(f"need {count} images outside the target class, the set has {len(pool)}")
    pick = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:count]].sort().values
    clean = to_float(data.images[pick])  # (count, C, H, W)
    labels = data.labels[pick]
    poisoned = {name: to_float(a.apply_test(clean, labels)[0]) for name, a in attacks.items()}

    plt = pyplot()
    cols = 1 + len(poisoned)
    fig, axes = plt.subplots(2 * count, cols, figsize=(1.5 * cols, 3.0 * count), squeeze=False)

    def show(ax, img: torch.Tensor, title: str | None = None) -> None:
        img = img.clamp(0, 1)
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_xticks([])
        ax.set_yticks([])
        if title:
            ax.set_title(title, fontsize=8)

    for row in range(count):
        top, bottom = axes[2 * row], axes[2 * row + 1]
        show(top[0], clean[row], "clean" if row == 0 else None)
        bottom[0].axis("off")
        for col, (name, images) in enumerate(poisoned.items(), start=1):
            show(top[col], images[row], name if row == 0 else None)
            show(
                bottom[col],
                (images[row] - clean[row]).abs() * diff_gain,
                f"|diff| x{diff_gain:g}" if row == 0 and col == 1 else None,
            )
    path = save_figure(fig, out)
    return Gallery(path=Path(path), shown=list(poisoned), skipped=skipped)


def make_gallery_of(
    dataset: str,
    out: str | Path,
    *,
    runs: list[str | Path] = (),
    data_dir: str | None = None,
    count: int = 2,
    seed: int = 0,
) -> Gallery:
    """`make_gallery` on the test split of a named dataset, with the fitted attacks of `runs`."""
    check_count(count)
    data = load_dataset(dataset, data_dir, train=False)
    return make_gallery(data, out, fitted=attacks_from_runs(list(runs), data.image_shape), count=count, seed=seed)
