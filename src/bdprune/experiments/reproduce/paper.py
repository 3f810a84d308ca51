"""The paper's published numbers, transcribed from its text (main body Tables 1 to 3, appendix Tables 4 to 9),
keyed by our (experiment, row, column, metric). ACC and ASR in percent, time in seconds.

Every table is on CIFAR-10 with ResNet-18 (Table 5: WideResNet-28-1) except Table 2 and Table 7's SSBA row
(Tiny-ImageNet). Blank entries of the paper (Table 8's EP / BNP where training collapsed) are absent; its
"NaN" entries are NaN.
"""

from __future__ import annotations

import math
from typing import Any

NAN = math.nan
T1_ATTACKS = ("BadNets (A2O)", "BadNets (A2A)", "CLA", "WaNet", "Blended", "Refool", "IAB")
T2_ATTACKS = ("BadNets (A2O)", "CLA", "WaNet", "Refool", "Blended", "IAB", "SSBA")


def _pairs(columns: tuple[str, ...], rows: dict[str, tuple[float, ...]]) -> dict[tuple[str, str], dict[str, float]]:
    """Rows of (ACC, ASR, ACC, ASR, ...) in column order -> {(row, column): {"acc", "asr"}}."""
    out = {}
    for row, values in rows.items():
        if len(values) != 2 * len(columns):
            raise ValueError(f"paper row {row!r}: {len(values)} numbers for {len(columns)} columns")
        for i, col in enumerate(columns):
            out[(row, col)] = {"acc": values[2 * i], "asr": values[2 * i + 1]}
    return out


TABLE1 = _pairs(
    T1_ATTACKS,
    {
        "Origin": (93.86, 100.00, 94.60, 93.89, 94.99, 98.83, 94.11, 99.67, 94.17, 99.62, 94.24, 98.40, 93.87, 97.91),
        "FT": (92.22, 2.16, 92.03, 60.76, 92.88, 95.73, 92.93, 9.37, 93.9, 90.27, 91.68, 17.78, 91.78, 9.52),
        "FP": (92.18, 2.97, 91.75, 66.82, 92.60, 99.36, 92.07, 1.03, 70.92, 90.92, 92.36, 75.98, 87.04, 16.13),
        "l-inf": (92.12, 100.00, 93.67, 6.67, 92.75, 98.76, 93.48, 99.74, 86.99, 99.77, 91.19, 98.47, 88.37, 88.48),
        "NAD": (93.36, 2.43, 92.18, 2.06, 91.36, 15.31, 93.08, 3.05, 92.72, 1.61, 91.64, 6.74, 92.11, 19.45),
        "ANP": (93.47, 3.53, 90.29, 86.22, 91.13, 11.76, 94.12, 0.51, 93.66, 5.03, 91.71, 26.96, 93.52, 10.61),
        "EP": (93.88, 0.86, 94.49, 0.61, 94.42, 0.91, 93.79, 2.80, 93.67, 2.24, 93.35, 8.90, 93.17, 0.94),
        "BNP": (93.60, 1.60, 94.25, 0.72, 94.14, 7.03, 94.05, 3.39, 94.17, 2.71, 93.69, 6.48, 93.15, 0.64),
    },
)

TABLE2 = _pairs(
    T2_ATTACKS,
    {
        "Origin": (61.36, 97.38, 65.61, 56.58, 61.47, 99.98, 53.26, 80.61, 62.85, 99.83, 61.40, 98.28, 66.51, 99.78),
        "FT": (46.93, 99.84, 61.19, 63.20, 54.28, 99.96, 47.09, 91.77, 56.83, 29.12, 52.39, 99.10, 52.39, 33.19),
        "FP": (35.41, 99.48, 62.30, 39.05, 53.65, 100.00, 42.10, 86.62, 59.59, 99.76, 52.67, 98.47, 53.36, 31.96),
        "l-inf": (53.13, 90.39, 59.15, 23.12, 42.01, 99.84, 46.84, 81.19, 56.33, 99.85, 54.81, 86.97, 49.35, 99.98),
        "NAD": (44.20, 90.13, 62.80, 17.35, 53.40, 99.98, 51.06, 70.63, 57.35, 55.60, 53.32, 98.85, 52.52, 25.08),
        "ANP": (53.85, 4.02, 59.69, 3.64, 54.82, 86.98, 50.67, 0.21, 62.49, 0.61, 61.39, 4.67, 60.98, 1.01),
        "EP": (60.68, 0.86, 64.47, 0.10, 60.53, 0.02, 51.29, 17.07, 60.67, 0.69, 61.26, 0.60, 64.2, 0.11),
        "BNP": (61.60, 1.60, 64.86, 0.05, 61.58, 0.01, 52.41, 23.79, 60.77, 0.85, 61.30, 0.60, 64.64, 0.01),
    },
)

TABLE3 = {
    ("time (s)", name): {"seconds": s}
    for name, s in (("FT", 12.35), ("FP", 14.59), ("NAD", 22.08), ("ANP", 25.68), ("EP", 10.69), ("BNP", 0.39))
}

TABLE4 = _pairs(
    T1_ATTACKS,
    {
        "1% Origin": (95.03, 99.94, 94.75, 88.57, 88.96, 4.73, 94.76, 46.82, 94.17, 99.62, 93.08, 99.59, 93.22, 64.00),
        "1% EP": (94.82, 0.91, 94.17, 0.73, 87.96, 0.65, 93.67, 14.17, 94.46, 2.29, 91.77, 24.08, 92.73, 5.21),
        "1% BNP": (92.22, 2.16, 93.16, 7.99, 88.03, 0.84, 94.64, 1.24, 92.89, 2.44, 90.99, 21.22, 93.17, 4.19),
        "5% Origin": (94.29, 99.99, 94.26, 92.78, 95.53, 92.23, 94.00, 94.55, 94.53, 81.33, 94.35, 97.98, 92.70, 65.50),
        "5% EP": (93.83, 0.83, 93.67, 0.70, 94.43, 15.91, 92.73, 10.13, 94.44, 5.49, 92.75, 4.51, 92.29, 1.83),
        "5% BNP": (93.61, 0.67, 93.99, 5.64, 94.65, 12.06, 94.17, 1.78, 93.37, 9.21, 92.30, 2.08, 92.74, 2.14),
        "10% Origin": (
            93.89,
            100.00,
            94.60,
            93.89,
            94.99,
            98.83,
            94.11,
            99.67,
            94.17,
            99.63,
            94.24,
            98.40,
            93.87,
            97.91,
        ),
        "10% EP": (93.88, 0.86, 94.49, 0.61, 94.42, 0.91, 93.79, 2.80, 93.67, 2.24, 93.35, 8.90, 93.17, 0.94),
        "10% BNP": (93.60, 1.60, 94.25, 0.72, 94.14, 7.03, 94.05, 3.39, 94.17, 2.71, 93.69, 6.48, 93.15, 0.64),
    },
)

TABLE5 = _pairs(
    ("Backdoored", "EP", "BNP"),
    {
        "BadNets (A2O)": (91.62, 99.99, 90.30, 1.71, 91.37, 1.61),
        "BadNets (A2A)": (92.53, 92.03, 91.50, 0.90, 91.43, 1.56),
        "CLA": (92.81, 80.14, 91.55, 10.24, 91.91, 4.30),
        "Refool": (91.53, 97.28, 91.11, 0.74, 90.29, 2.87),
        "WaNet": (91.78, 91.92, 92.28, 0.67, 91.84, 0.56),
        "Blended": (91.65, 99.78, 91.59, 6.40, 91.59, 1.52),
        "IAB": (90.32, 88.08, 90.97, 1.87, 90.74, 1.86),
    },
)

TABLE6 = _pairs(
    ("Origin", "CJ", "SAP", "PW", "Snow"),
    {
        "EP": (93.88, 0.86, 93.62, 0.88, 93.19, 0.86, 93.65, 0.82, 93.23, 0.93),
        "BNP": (93.60, 1.60, 93.56, 1.52, 91.17, 1.58, 92.62, 0.96, 90.99, 0.95),
    },
)

TABLE7 = {
    (attack, method): {"acc": acc, "asr": asr, "pruned": n}
    for attack, row in {
        "BadNets (A2O)": ((93.86, 5.22, 2), (93.84, 1.84, 3), (93.6, 5.23, 4)),
        "BadNets (A2A)": ((94.73, 2.00, 7), (94.64, 7.70, 10), (80.00, 3.44, 235)),
        "Blended": ((94.21, 3.40, 2), (94.21, 3.40, 2), (93.84, 5.21, 27)),
        "CLA": ((94.86, 7.11, 19), (94.07, 9.67, 71), (91.45, 7.20, 256)),
        "Refool": ((93.18, 8.94, 79), (93.97, 7.12, 6), (63.91, 1.29, 186)),
        "IAB": ((93.67, 8.07, 10), (93.68, 7.63, 6), (93.27, 4.83, 36)),
        "WaNet": ((93.43, 4.06, 43), (94.87, 9.64, 13), (94.99, 1.31, 3)),
        "SSBA": ((66.41, 4.13, 5), (66.36, 6.04, 5), (66.49, 2.81, 7)),
    }.items()
    for method, (acc, asr, n) in zip(("EP", "BNP", "ANP"), row)
}

TABLE8 = {
    **_pairs(
        ("lambda = 1", "lambda = 0.1", "lambda = 0.01", "lambda = 0.001"),
        {"Origin": (NAN, NAN, NAN, NAN, 95.11, 100.00, 93.41, 75.30)},
    ),
    **_pairs(
        ("lambda = 0.01", "lambda = 0.001"), {"EP": (93.63, 9.23, 93.35, 0.63), "BNP": (94.15, 0.32, 93.82, 0.24)}
    ),
}

TABLE9 = _pairs(
    ("ML-MMD", "WB"),
    {"Origin": (87.51, 98.48, 92.12, 100.0), "EP": (86.34, 3.26, 90.88, 24.65), "BNP": (86.9, 36.15, 90.88, 37.4)},
)

# experiment -> (dataset of the paper's numbers, numbers, cells on another dataset)
PAPER: dict[str, tuple[str, dict[tuple[str, str], dict[str, float]], dict[tuple[str, str], str]]] = {
    "table1": ("cifar10", TABLE1, {}),
    "table2": ("tiny-imagenet", TABLE2, {}),
    "table3": ("cifar10", TABLE3, {}),
    "table4": ("cifar10", TABLE4, {}),
    "table5": ("cifar10", TABLE5, {}),
    "table6": ("cifar10", TABLE6, {}),
    "table7": ("cifar10", TABLE7, {("SSBA", m): "tiny-imagenet" for m in ("EP", "BNP", "ANP")}),
    "table8": ("cifar10", TABLE8, {}),
    "table9": ("cifar10", TABLE9, {}),
}


PAPER_RULE = " (paper's rule)"  # the suffix of our rows that run EP / BNP under the paper's rule


def _paper_row(row: str) -> str:
    """The paper's row of one of ours: "EP (paper's rule)" is the paper's EP."""
    return row.removesuffix(PAPER_RULE)


def paper_value(experiment: str, row: str, col: str, metric: str) -> float | None:
    """The paper's number for one entry, None where it has none."""
    entry = PAPER.get(experiment)
    if entry is None:
        return None
    return entry[1].get((_paper_row(row), col), {}).get(metric)


def paper_dataset(experiment: str, row: str, col: str) -> str | None:
    """The dataset of the paper's number for one entry (None: no number)."""
    entry = PAPER.get(experiment)
    if entry is None:
        return None
    return entry[2].get((_paper_row(row), col), entry[0])


def paper_columns(experiment: str) -> list[str]:
    """The paper's columns of a table, in its order."""
    entry: Any = PAPER.get(experiment)
    return list(dict.fromkeys(col for _, col in entry[1])) if entry else []
