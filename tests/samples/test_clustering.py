import math

import torch

from bdprune.samples.clustering import discriminant, otsu, principal_components, two_means


def test_principal_component_of_a_stretched_cloud_is_its_long_axis():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64) * torch.tensor([5.0, 1.0, 0.5], dtype=torch.float64)
    directions, variances = principal_components(x, 2)
    assert abs(abs(float(directions[0, 0])) - 1) < 0.01
    assert variances[0] > variances[1] and abs(float(variances[0]) - 25) < 5


def test_two_means_recovers_two_separated_blobs_whatever_their_sizes():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(300, 4, generator=g)
    b = torch.randn(30, 4, generator=g) + 8
    second = two_means(torch.cat([a, b]), seed=3)
    truth = torch.cat([torch.zeros(300, dtype=torch.bool), torch.ones(30, dtype=torch.bool)])
    assert torch.equal(second, truth) or torch.equal(second, ~truth)


def test_the_discriminant_separates_two_groups_that_overlap_along_the_line_between_their_centres():
    g = torch.Generator().manual_seed(2)
    spread = torch.tensor([5.0, 0.5], dtype=torch.float64)  # both groups stretched along the first axis
    a = torch.randn(400, 2, generator=g, dtype=torch.float64) * spread
    b = torch.randn(400, 2, generator=g, dtype=torch.float64) * spread + torch.tensor([4.0, 2.0], dtype=torch.float64)
    x = torch.cat([a, b])
    member = torch.arange(800) >= 400

    def beyond(direction):  # the share of b beyond a's mean + 2 SDs along `direction`
        pa, pb = a @ direction, b @ direction
        return float((pb > pa.mean() + 2 * pa.std()).double().mean())

    w = discriminant(x, member)
    assert abs(float(w[1] / w.norm())) > 0.9  # it leans on the narrow axis, where the groups part
    assert beyond(w) > 0.8 and beyond(b.mean(0) - a.mean(0)) < 0.4


def test_otsu_eta_is_near_one_for_two_point_masses_and_near_two_over_pi_for_one_gaussian():
    two = torch.cat([torch.zeros(100), torch.ones(50)])
    cut, eta = otsu(two)
    assert 0 < cut <= 1 and eta > 0.99
    gauss = torch.randn(20000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, eta = otsu(gauss)
    assert abs(eta - 2 / math.pi) < 0.03  # a Gaussian cut at its mean: between share 2 / pi
