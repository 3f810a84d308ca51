"""Small, seeded building blocks of the poisoned-sample detectors: principal components, k-means, Otsu's split
of a 1-D score. Plain torch, float64, explicit generators; no global state."""

from __future__ import annotations

import torch


def principal_components(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`k` principal directions of the centred rows of `x` (N, D).

    Returns:
        (k, D) directions (unit rows, in decreasing variance) and (k,) their variances.
    """
    centred = x.double() - x.double().mean(0)
    k = max(1, min(k, *centred.shape))
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # D is small (the penultimate width)
    return vh[:k], (s[:k] ** 2) / max(len(x) - 1, 1)


def k_means(x: torch.Tensor, k: int, *, iterations: int = 50, restarts: int = 4, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means on the rows of `x` (N, D); the best of `restarts` k-means++ starts.

    Returns:
        (N,) long, each row's cluster in 0..k-1 (the clusters' order is arbitrary; a cluster may be empty when
        `x` holds fewer than `k` distinct rows).
    """
    x = x.double()
    n = len(x)
    if n < 2 or k < 2:
        return torch.zeros(n, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    best, best_cost = torch.zeros(n, dtype=torch.long), float("inf")
    for _ in range(restarts):
        centres = x[torch.randint(n, (1,), generator=generator)]
        for _ in range(k - 1):  # k-means++: each next start drawn in proportion to its squared distance
            d = torch.stack([((x - c) ** 2).sum(1) for c in centres]).min(0).values
            nxt = x[torch.multinomial(d / d.sum(), 1, generator=generator)] if d.sum() > 0 else centres[:1]
            centres = torch.cat([centres, nxt])
        for _ in range(iterations):
            assign = torch.cdist(x, centres).argmin(1)
            moved = torch.stack([x[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
            if torch.allclose(moved, centres):
                break
            centres = moved
        cost = float(((x - centres[assign]) ** 2).sum())
        if cost < best_cost:
            best, best_cost = assign, cost
    return best


def two_means(x: torch.Tensor, *, iterations: int = 50, restarts: int = 4, seed: int = 0) -> torch.Tensor:
    """Lloyd's 2-means on the rows of `x` (N, D) (`k_means` with k = 2).

    Returns:
        (N,) bool, membership of the second cluster (the labels' order is arbitrary).
    """
    return k_means(x, 2, iterations=iterations, restarts=restarts, seed=seed) == 1


def discriminant(x: torch.Tensor, member: torch.Tensor, *, ridge: float = 1e-6) -> torch.Tensor:
    """Fisher's linear discriminant between the rows of `x` (N, D) in `member` and the rest: the direction
    (D,) that separates the two groups' means the most relative to their pooled within-group covariance,
    Sigma^-1 (mu_member - mu_rest), with `ridge` times the covariance's mean variance added to its diagonal.
    Along it a group stretched along a direction of its own variance no longer overlaps the other group as it
    does along the line between the centres."""
    x = x.double()
    a, b = x[member], x[~member]
    centred = torch.cat([a - a.mean(0), b - b.mean(0)])
    cov = centred.T @ centred / max(len(x) - 2, 1)
    cov = cov + ridge * float(cov.diagonal().mean().clamp_min(1e-12)) * torch.eye(x.shape[1], dtype=x.dtype)
    return torch.linalg.solve(cov, a.mean(0) - b.mean(0))


def otsu(values: torch.Tensor, bins: int = 256) -> tuple[float, float]:
    """Otsu's threshold of a 1-D sample (the cut maximising the between-group variance) and eta, the
    between-group share of the total variance at the cut (1: two point masses, near 0: one mode)."""
    v = values.double().flatten()
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        return hi, 0.0
    hist = torch.histc(v, bins=bins, min=lo, max=hi)
    centres = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    centres = (centres[:-1] + centres[1:]) / 2
    n = hist.sum()
    mean = (hist * centres).sum() / n
    total = (hist * (centres - mean) ** 2).sum() / n
    w0 = hist.cumsum(0)
    s0 = (hist * centres).cumsum(0)
    w1 = n - w0
    between = w0 * w1 * (s0 / w0.clamp(min=1) - (s0[-1] - s0) / w1.clamp(min=1)) ** 2 / n**2
    between = torch.where((w0 > 0) & (w1 > 0), between, torch.zeros_like(between))
    t = int(between.argmax())
    edge = lo + (hi - lo) * (t + 1) / bins
    return edge, float(between[t] / total) if total > 0 else 0.0
