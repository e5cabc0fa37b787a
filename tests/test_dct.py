"""The DCT paths against scipy, and the heat-conduction core against an independent heat-equation solver."""
import math

import numpy as np
import pytest
import scipy.fft
import torch

from classification.models.dct import dct2d, frequency_distance, heat_conduction


@pytest.mark.parametrize('impl', ['matmul', 'fft'])
@pytest.mark.parametrize('height,width', [(1, 1), (2, 3), (7, 7), (14, 9), (56, 56), (57, 31), (128, 130)])
def test_dct2d_matches_scipy(impl, height, width):
    x = torch.randn(2, height, width, 5)
    expected = scipy.fft.dctn(x.double().numpy(), axes=(1, 2), norm='ortho')
    got = dct2d(x, impl)
    assert np.abs(got.double().numpy() - expected).max() <= 1e-5
    back = dct2d(got, impl, inverse=True)
    assert (back - x).abs().max() <= 1e-5


def test_dct_rejects_bad_input():
    with pytest.raises(ValueError, match='B, H, W, C'):
        dct2d(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match='dct_impl'):
        dct2d(torch.randn(1, 8, 8, 2), 'fast')


def _neumann_heat_fd(u0, alpha_t, refine=7):
    """Explicit finite differences of u_t = u_xx + u_yy on a grid ``refine`` times finer, reflecting walls.

    ``u0(x, y)`` is evaluated at the fine cell centres (pixel units, the image spans [0, H] x [0, W]);
    the solution is returned at the coarse pixel centres, which are fine cell centres for odd ``refine``.
    """
    coarse_h, coarse_w = u0.shape_hw
    h = 1.0 / refine
    ys = (np.arange(coarse_h * refine) + 0.5) * h
    xs = (np.arange(coarse_w * refine) + 0.5) * h
    u = u0(ys[:, None], xs[None, :])
    dt = 0.2 * h * h
    steps = int(math.ceil(alpha_t / dt))
    dt = alpha_t / steps
    for _ in range(steps):
        p = np.pad(u, 1, mode='edge')  # ghost cells mirror the boundary cells: zero normal flux
        lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * u
        u = u + dt / (h * h) * lap
    centre = refine // 2
    return u[centre::refine, centre::refine]


class _Bump:
    """A smooth heat source: an off-centre Gaussian plus a constant floor."""
    shape_hw = (24, 20)

    def __call__(self, y, x):
        return 0.5 + np.exp(-((y - 9.0) ** 2 + (x - 12.0) ** 2) / (2 * 2.5 ** 2))


@pytest.mark.parametrize('impl', ['matmul', 'fft'])
@pytest.mark.parametrize('k', [0.5, 4.0])
def test_heat_core_solves_the_neumann_heat_equation(impl, k):
    bump = _Bump()
    height, width = bump.shape_hw
    ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing='ij')
    u0 = torch.tensor(bump(ys, xs), dtype=torch.float64)[None, :, :, None]
    decay = torch.exp(-k * frequency_distance(height, width, u0.device, u0.dtype))
    got = heat_conduction(u0, decay, impl)[0, :, :, 0].numpy()
    reference = _neumann_heat_fd(bump, alpha_t=k)
    peak = bump(ys, xs).max() - 0.5
    assert np.abs(got - reference).max() <= 2e-3 * peak
    # the operator really diffuses: the peak falls and the total heat stays
    assert got.max() < bump(ys, xs).max() - 0.05 * peak
    assert got.sum() == pytest.approx(u0.sum().item(), rel=1e-9)


def test_heat_core_wrong_frequencies_do_not_match():
    """The comparison above can fail: w_n = n*pi/(2H) instead of n*pi/H misses the reference."""
    bump = _Bump()
    height, width = bump.shape_hw
    ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing='ij')
    u0 = torch.tensor(bump(ys, xs), dtype=torch.float64)[None, :, :, None]
    wrong = torch.exp(-4.0 * frequency_distance(height, width, u0.device, u0.dtype) / 4)
    got = heat_conduction(u0, wrong, 'matmul')[0, :, :, 0].numpy()
    assert np.abs(got - _neumann_heat_fd(bump, alpha_t=4.0)).max() > 2e-2
