"""The streaming histogram of per-sample maxima."""

import torch

from bdprune.neurons.sketch import StreamingHistogram


def sketch_of(values: torch.Tensor, bins: int = 2048) -> StreamingHistogram:
    s = StreamingHistogram(values.shape[1], bins)
    s.update(values)
    return s


# -- the streaming histogram ------------------------------------------------------------------------------
def test_histogram_of_one_batch_of_n_equals_n_batches_of_one():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 4, generator=g) * torch.tensor([1.0, 50.0, 1e-3, 1.0]) + torch.tensor([0.0, 1e3, 5.0, -2.0])
    x[::9, 3] += 30.0  # a far second mode forces the grid to coarsen along the way
    one = sketch_of(x, 64)
    many = StreamingHistogram(4, 64)
    for row in x:
        many.update(row[None])
    assert torch.equal(one.counts, many.counts)
    assert torch.equal(one.exponent, many.exponent) and torch.equal(one.offset, many.offset)
    assert torch.allclose(one.moments.mean, many.moments.mean, rtol=1e-12)
    assert one.counts.sum(-1).tolist() == [[300] * 4]
    edges = one.edges()
    assert (edges[:, 0] <= x.min(0).values.double()).all() and (edges[:, -1] > x.max(0).values.double()).all()


def test_histogram_groups_and_non_finite_values():
    s = StreamingHistogram(2, 32, groups=2)
    values = torch.tensor([[0.0, 1.0], [1.0, float("nan")], [2.0, 3.0], [3.0, float("inf")]])
    s.update(values, torch.tensor([0, 0, 1, 1]))
    assert s.counts.sum(-1).tolist() == [[2, 1], [2, 1]]
    assert s.nonfinite.tolist() == [0, 2]
